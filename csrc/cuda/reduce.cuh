// Warp-level reductions for the CUDA kernels: per-thread partial gradients of a shared quantity (occlusion,
// position matrix) are summed over the 32 lanes before one atomic add, instead of one atomic per pixel.
#pragma once

#include <cuda_runtime.h>

namespace dtifast {
namespace cuda {

// Every lane of the warp must call this (lanes without work pass 0), with the same dst.
template <typename T>
__device__ __forceinline__ void warp_atomic_add(T* dst, T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  if ((threadIdx.x & 31) == 0 && v != T(0)) atomicAdd(dst, v);
}

}  // namespace cuda
}  // namespace dtifast

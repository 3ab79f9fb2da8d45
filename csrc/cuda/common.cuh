// Device building blocks shared by the CUDA kernels (csrc/cuda/*.cu): grid sizes, the fixed-order block sum
// and the second pass that adds the tiles' partial rows (deterministic loss and parameter gradients, no float
// atomics), the per-tap records of the deterministic scatter (launch.h Taps) and the choice of the layer
// bound that sizes the per-thread arrays.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../composite.h"
#include "../sampling.h"
#include "launch.h"

namespace dtifast {
namespace cuda {

constexpr int kWarps = kThreads / 32;
static_assert(kThreads % 32 == 0, "blocks are whole warps");

// Blocks for `blocks` units of work (at least 1: launchers return before launching no work), at most kMaxGrid;
// kernels walk their units with a grid-stride loop.
inline unsigned grid_for(int64_t blocks) {
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), kMaxGrid));
}

// Units walked by a grid-stride loop: blocks (tiles), or threads (elements).
__device__ __forceinline__ int64_t first_block() { return blockIdx.x; }
__device__ __forceinline__ int64_t block_stride() { return gridDim.x; }
__device__ __forceinline__ int64_t first_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t thread_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// out[q] = the sum over the block's threads of their v[q], q < n, in a fixed order: a shuffle tree within each
// warp, then the warps in index order. Every thread of the block must call it (threads without work pass
// zeros); smem holds n * kWarps values. Written by threads q < n (strided); ends with a barrier.
template <typename T>
__device__ void block_sum(const T* v, int n, T* smem, T* out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int q = 0; q < n; ++q) {
    T s = v[q];
    for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_down_sync(0xffffffffu, s, offset);
    if (lane == 0) smem[q * kWarps + warp] = s;
  }
  __syncthreads();
  for (int q = threadIdx.x; q < n; q += blockDim.x) {
    T s = T(0);
    for (int w = 0; w < kWarps; ++w) s += smem[q * kWarps + w];
    out[q] = s;
  }
  __syncthreads();
}

// The second pass: partial (images, tiles, stride) rows; value q < count of image b is the sum over its tiles
// in index order, written to out[(q / inner) * images * inner + b * inner + q % inner] (inner = count: rows
// (images, count); inner = 1: (count, images); inner = 6: (count / 6, images, 6)).
template <typename T>
__global__ void sum_partials_kernel(const T* partial, int64_t images, int64_t tiles, int64_t stride, int64_t count,
                                    int64_t inner, T* out) {
  for (int64_t e = first_thread(); e < images * count; e += thread_stride()) {
    const int64_t b = e / count, q = e % count;
    const T* src = partial + b * tiles * stride + q;
    T s = T(0);
    for (int64_t t = 0; t < tiles; ++t) s += src[t * stride];
    out[(q / inner) * images * inner + b * inner + q % inner] = s;
  }
}

template <typename T>
void launch_sum_partials(const T* partial, int64_t images, int64_t tiles, int64_t stride, int64_t count,
                         int64_t inner, T* out, cudaStream_t stream) {
  if (images * count == 0) return;
  sum_partials_kernel<T><<<grid_for(tiles_for(images * count)), kThreads, 0, stream>>>(partial, images, tiles, stride,
                                                                                        count, inner, out);
}

// Rows of sample s's taps: row0 + the tap's offset, or taps.dummy for a tap outside the input.
template <typename T>
DTIFAST_HD void record_rows(const Taps<T>& taps, int64_t s, const Bilinear<T>& b, int64_t row0) {
  for (int t = 0; t < 4; ++t) taps.index[4 * s + t] = b.valid[t] ? row0 + b.offset[t] : taps.dummy;
}

// Values of plane q of sample s's taps for the sampled value's gradient g (what scatter_taps would add).
template <typename T>
DTIFAST_HD void record_values(const Taps<T>& taps, int64_t s, const Bilinear<T>& b, int64_t q, T g) {
  for (int t = 0; t < 4; ++t) taps.value[(4 * s + t) * taps.planes + q] = b.valid[t] ? g * b.weight[t] : T(0);
}

}  // namespace cuda
}  // namespace dtifast

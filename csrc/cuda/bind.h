// Helpers shared by the CUDA bindings (csrc/cuda/bind_*.cpp): stream, device guard and pointer access.
// The bindings check inputs with csrc/checks.h (the same checks as the CPU kernels), make them contiguous
// and call the raw-pointer launchers of launch.h.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../checks.h"
#include "launch.h"

namespace dtifast {
namespace cuda {

inline cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }

// Pointer of an input that may be absent (undefined), or null.
template <typename T>
const T* in_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// Pointer of a gradient buffer; an empty tensor (a gradient not requested) gives null.
template <typename T>
T* out_ptr(at::Tensor& t) {
  return t.numel() ? t.mutable_data_ptr<T>() : nullptr;
}

}  // namespace cuda
}  // namespace dtifast

// Helpers shared by the CUDA bindings (csrc/cuda/bind_*.cpp): stream, pointer access and the deterministic
// scatter. The bindings check inputs with csrc/checks.h (the same checks as the CPU kernels), make them
// contiguous, return empty or zero results without launching anything when there is no work, and call the
// raw-pointer launchers of launch.h. Nothing here reads device data on the host (no sync per call).
#pragma once

#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../checks.h"
#include "launch.h"

namespace dtifast {
namespace cuda {

inline cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }

// torch.use_deterministic_algorithms(True): the scattered input gradients go through TapScatter.
inline bool deterministic() { return at::globalContext().deterministicAlgorithms(); }

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

// The deterministic scatter of an input gradient (launch.h Taps). The kernels record the taps of a chunk of
// at most `samples` samples; add(n) sums the first n samples' taps into a (rows + 1, planes) buffer with
// ATen's index_put_(accumulate=True), which on CUDA sorts the rows (a stable radix sort) and adds each row's
// values in recorded order: the same bits on every run. The last row takes the taps outside the input.
// gradient(groups) is the result as (groups, planes, rows / groups), the layout of the input.
// Cost: 4 * (8 + planes * sizeof(T)) bytes per sample of the chunk, and a sort of 4 keys per sample.
class TapScatter {
 public:
  TapScatter(int64_t rows, int64_t planes, int64_t samples, const at::TensorOptions& options)
      : rows_(rows),
        sum_(at::zeros({rows + 1, planes}, options)),
        index_(at::empty({4 * samples}, options.dtype(at::kLong))),
        value_(at::empty({4 * samples, planes}, options)) {}

  template <typename T>
  Taps<T> taps() {
    return {index_.mutable_data_ptr<int64_t>(), value_.mutable_data_ptr<T>(), sum_.size(1), rows_};
  }

  void add(int64_t samples) {
    if (samples == 0) return;
    c10::List<std::optional<at::Tensor>> rows;
    rows.push_back(index_.narrow(0, 0, 4 * samples));
    sum_.index_put_(rows, value_.narrow(0, 0, 4 * samples), /*accumulate=*/true);
  }

  at::Tensor gradient(int64_t groups) const {
    return sum_.narrow(0, 0, rows_).view({groups, rows_ / groups, sum_.size(1)}).permute({0, 2, 1}).contiguous();
  }

 private:
  int64_t rows_;
  at::Tensor sum_, index_, value_;
};

}  // namespace cuda
}  // namespace dtifast

// ATen-side helpers shared by the CPU op files and the CUDA bindings: input checks (TORCH_CHECK mirrors of
// dtifast/ops/_checks.py), optional-tensor access and the grain sizes. The Python wrappers validate first;
// these make a direct torch.ops call safe too.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <optional>
#include <vector>

namespace dtifast {

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
}

inline void check_device(const at::Tensor& t, const char* name, at::DeviceType device) {
  TORCH_CHECK(t.device().type() == device, name, " must be a ", at::DeviceTypeName(device), " tensor, got ",
              t.device());
  check_float(t, name);
}

// Checks t's shape against `expected` (-1 matches anything).
inline void check_sizes(const at::Tensor& t, const char* name, std::vector<int64_t> expected) {
  bool ok = t.dim() == static_cast<int64_t>(expected.size());
  for (size_t i = 0; ok && i < expected.size(); ++i) ok = expected[i] < 0 || t.size(i) == expected[i];
  TORCH_CHECK(ok, name, " must have shape ", at::IntArrayRef(expected), " (-1: any), got ", t.sizes());
}

inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), name, " must be on ", ref.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have dtype ", ref.scalar_type(), ", got ",
              t.scalar_type());
}

// An optional tensor made contiguous, or an undefined tensor.
inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

// Data pointer of an optional tensor made contiguous (kept alive in `holder`), or nullptr.
template <typename T>
const T* optional_ptr(const std::optional<at::Tensor>& t, at::Tensor& holder) {
  if (!t.has_value()) return nullptr;
  holder = t->contiguous();
  return holder.const_data_ptr<T>();
}

}  // namespace dtifast

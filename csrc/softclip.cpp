// Softclip forward/backward on CPU: identity on [0, 1], slope `slope` outside.
// Registered as dtifast::softclip / dtifast::softclip_backward; autograd is attached in Python
// (dtifast/ops/_native.py) with torch.library.register_autograd.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include "sampling.h"

namespace dtifast {
namespace {

constexpr int64_t kGrain = 16384;

void check_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
}

at::Tensor softclip_cpu(const at::Tensor& x_in, double slope) {
  check_input(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "softclip_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(slope);
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        dst[i] = softclip_value(src[i], s);
      }
    });
  });
  return out;
}

at::Tensor softclip_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in, double slope) {
  check_input(x_in, "x");
  check_input(grad_in, "grad");
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "grad must have the shape of x ", x_in.sizes(), ", got ",
              grad_in.sizes());
  TORCH_CHECK(grad_in.scalar_type() == x_in.scalar_type(), "grad and x must share a dtype");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "softclip_backward_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(slope);
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        dst[i] = g[i] * softclip_grad(src[i], s);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dtifast, m) {
  m.def("softclip(Tensor x, float slope) -> Tensor");
  m.def("softclip_backward(Tensor grad, Tensor x, float slope) -> Tensor");
}

TORCH_LIBRARY_IMPL(dtifast, CPU, m) {
  m.impl("softclip", &softclip_cpu);
  m.impl("softclip_backward", &softclip_backward_cpu);
}

}  // namespace dtifast

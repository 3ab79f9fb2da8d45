// CUDA bindings of dtifast::warp / warp_backward (kernels in warp.cu).
#include <torch/library.h>

#include "bind.h"

namespace dtifast {
namespace cuda {
namespace {

int64_t theta_size(const at::Tensor& theta) { return theta.numel() / std::max<int64_t>(theta.size(0), 1); }

// The CUDA kernels read one input per output: with an index, the inputs are gathered first (and the input
// gradient summed back per shared input), which the CPU kernels and Triton avoid.
at::Tensor gathered(const at::Tensor& x, const std::optional<at::Tensor>& index) {
  return index.has_value() ? x.index_select(0, *index) : x;
}

at::Tensor warp_cuda(const at::Tensor& x_in, const at::Tensor& theta_in, const std::optional<at::Tensor>& wts_in,
                     const std::optional<at::Tensor>& index, int64_t mode, int64_t out_h, int64_t out_w,
                     bool border) {
  check_warp(x_in, theta_in, wts_in, index, mode, out_h, out_w, at::kCUDA);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = gathered(x_in, index).contiguous(), theta = theta_in.contiguous(), wts = contiguous_or_undefined(wts_in);
  const int64_t N = x.size(0), C = x.size(1), g2 = mode == kTps ? theta.size(1) : 0;
  at::Tensor out = at::empty({N, C, out_h, out_w}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "warp_cuda", [&] {
    launch_warp<scalar_t>(x.const_data_ptr<scalar_t>(), theta.const_data_ptr<scalar_t>(), in_ptr<scalar_t>(wts),
                          out.mutable_data_ptr<scalar_t>(), static_cast<int>(mode), N, C, x.size(2), x.size(3), out_h,
                          out_w, theta_size(theta), g2, border, current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> warp_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                      const at::Tensor& theta_in,
                                                      const std::optional<at::Tensor>& wts_in,
                                                      const std::optional<at::Tensor>& index, int64_t mode,
                                                      int64_t out_h, int64_t out_w, bool border, bool need_x,
                                                      bool need_theta) {
  check_warp(x_in, theta_in, wts_in, index, mode, out_h, out_w, at::kCUDA);
  check_like(grad_in, "grad", x_in);
  check_sizes(grad_in, "grad", {theta_in.size(0), x_in.size(1), out_h, out_w});
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = gathered(x_in, index).contiguous(), theta = theta_in.contiguous(), grad = grad_in.contiguous(),
                   wts = contiguous_or_undefined(wts_in);
  const int64_t N = x.size(0), C = x.size(1), g2 = mode == kTps ? theta.size(1) : 0;
  const auto empty = at::empty({0}, x.options());
  at::Tensor dx = need_x ? at::zeros_like(x) : empty;
  at::Tensor dtheta = need_theta ? at::empty_like(theta) : empty;
  at::Tensor dgrid = need_theta ? at::empty({N, out_h * out_w, 2}, x.options()) : empty;
  if (grad.numel() == 0) {
    return {need_x && index.has_value() ? at::zeros_like(x_in) : dx, need_theta ? dtheta.zero_() : dtheta};
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "warp_backward_cuda", [&] {
    launch_warp_backward<scalar_t>(grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                   theta.const_data_ptr<scalar_t>(), in_ptr<scalar_t>(wts), out_ptr<scalar_t>(dx),
                                   out_ptr<scalar_t>(dgrid), out_ptr<scalar_t>(dtheta), static_cast<int>(mode), N, C,
                                   x.size(2), x.size(3), out_h, out_w, theta_size(theta), g2, border,
                                   current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (need_x && index.has_value()) dx = at::zeros_like(x_in).index_add_(0, *index, dx);
  return {dx, dtheta};
}

}  // namespace

TORCH_LIBRARY_IMPL(dtifast, CUDA, m) {
  m.impl("warp", &warp_cuda);
  m.impl("warp_backward", &warp_backward_cuda);
}

}  // namespace cuda
}  // namespace dtifast

// CUDA bindings of dtifast::warp_theta / warp_theta_backward (kernels in warp.cu; the op contract is csrc/warp.cpp's).
// The kernels read x[index[n]] in place (no gather copy); the theta gradient is deterministic in every mode;
// the input gradient uses atomics, or under torch.use_deterministic_algorithms(True) the recorded taps of
// chunks of outputs summed by TapScatter (bind.h).
#include <torch/library.h>

#include "bind.h"

namespace dtifast {
namespace cuda {
namespace {

template <typename T>
WarpArgs<T> warp_args(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& basis,
                      const at::Tensor& index, int64_t mode, int64_t out_h, int64_t out_w, bool border) {
  const int64_t N = theta.size(0);
  return {x.const_data_ptr<T>(), theta.const_data_ptr<T>(), basis.const_data_ptr<T>(), in_ptr<int64_t>(index),
          static_cast<int>(mode), x.size(0), N, x.size(1), x.size(2), x.size(3), out_h, out_w,
          theta.numel() / std::max<int64_t>(N, 1), mode == kTps ? theta.size(1) : 0, border};
}

at::Tensor warp_cuda(const at::Tensor& x_in, const at::Tensor& theta_in, const at::Tensor& basis_in,
                     const std::optional<at::Tensor>& index_in, int64_t mode, int64_t out_h, int64_t out_w,
                     bool border) {
  check_warp(x_in, theta_in, basis_in, index_in, mode, out_h, out_w, at::kCUDA);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), theta = theta_in.contiguous(), basis = basis_in.contiguous(),
                   index = contiguous_or_undefined(index_in);
  at::Tensor out = at::empty({theta.size(0), x.size(1), out_h, out_w}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "warp_theta_cuda", [&] {
    launch_warp<scalar_t>(warp_args<scalar_t>(x, theta, basis, index, mode, out_h, out_w, border),
                          out.mutable_data_ptr<scalar_t>(), current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> warp_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                      const at::Tensor& theta_in, const at::Tensor& basis_in,
                                                      const std::optional<at::Tensor>& index_in, int64_t mode,
                                                      int64_t out_h, int64_t out_w, bool border, bool need_x,
                                                      bool need_theta) {
  check_warp(x_in, theta_in, basis_in, index_in, mode, out_h, out_w, at::kCUDA);
  check_like(grad_in, "grad", x_in);
  check_sizes(grad_in, "grad", {theta_in.size(0), x_in.size(1), out_h, out_w});
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), theta = theta_in.contiguous(), basis = basis_in.contiguous(),
                   index = contiguous_or_undefined(index_in), grad = grad_in.contiguous();
  const int64_t K = x.size(0), N = theta.size(0), C = x.size(1), hw = x.size(2) * x.size(3), HW = out_h * out_w;
  const auto empty = at::empty({0}, x.options());
  const bool record = need_x && x.numel() > 0 && grad.numel() > 0 && deterministic();
  at::Tensor dx = need_x && !record ? at::zeros_like(x) : empty;
  at::Tensor dtheta = need_theta ? at::zeros_like(theta) : empty;
  // No output pixel or no channel: every gradient is zero (C = 0 gives theta nothing to chain through).
  if (grad.numel() == 0 || (!need_x && !need_theta)) return {dx, dtheta};
  const int64_t chunk = record ? std::min(N, chunk_images(HW)) : N;
  at::Tensor partial = need_theta ? at::empty({N, tiles_for(HW), theta.numel() / N}, x.options()) : empty;
  std::optional<TapScatter> scatter;
  if (record) scatter.emplace(K * hw, C, chunk * HW, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "warp_theta_backward_cuda", [&] {
    const WarpArgs<scalar_t> a = warp_args<scalar_t>(x, theta, basis, index, mode, out_h, out_w, border);
    WarpGradArgs<scalar_t> g{grad.const_data_ptr<scalar_t>(), record ? nullptr : out_ptr<scalar_t>(dx),
                             out_ptr<scalar_t>(dtheta), out_ptr<scalar_t>(partial), {nullptr, nullptr, 0, 0}};
    if (record) g.taps = scatter->taps<scalar_t>();
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      const int64_t nn = std::min(chunk, N - n0);
      launch_warp_backward<scalar_t>(a, g, n0, nn, current_stream());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (record) scatter->add(nn * HW);
    }
    launch_warp_theta<scalar_t>(a, g, current_stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (record) dx = scatter->gradient(K).view(x.sizes());
  return {dx, dtheta};
}

}  // namespace

TORCH_LIBRARY_IMPL(dtifast, CUDA, m) {
  m.impl("warp_theta", &warp_cuda);
  m.impl("warp_theta_backward", &warp_backward_cuda);
}

}  // namespace cuda
}  // namespace dtifast

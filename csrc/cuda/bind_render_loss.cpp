// CUDA bindings of dtifast::render_loss / render_loss_backward (kernels in render_loss.cu).
#include <torch/library.h>

#include "bind.h"

namespace dtifast {
namespace cuda {
namespace {

RenderDims render_dims(const Dims& d) { return {static_cast<int>(d.L), d.B, d.C, d.H, d.W, d.h, d.w, d.E == 2}; }

Dims check_render_cuda(const at::Tensor& x, const at::Tensor& sprites, const at::Tensor& theta, const at::Tensor& occ,
                       const std::optional<at::Tensor>& bg, const std::optional<at::Tensor>& noise) {
  const Dims d = check_render(x, sprites, theta, occ, bg, noise, at::kCUDA);
  TORCH_CHECK(d.C <= kMaxChannels, "the CUDA render loss takes at most ", kMaxChannels, " colour channels, got ",
              d.C);
  return d;
}

at::Tensor render_loss_cuda(const at::Tensor& x_in, const at::Tensor& sprites_in, const at::Tensor& theta_in,
                            const at::Tensor& occ_in, const std::optional<at::Tensor>& bg_in,
                            const std::optional<at::Tensor>& noise_in) {
  const Dims d = check_render_cuda(x_in, sprites_in, theta_in, occ_in, bg_in, noise_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), sprites = sprites_in.contiguous(), theta = theta_in.contiguous(),
                   occ = occ_in.contiguous(), bg = contiguous_or_undefined(bg_in),
                   noise = contiguous_or_undefined(noise_in);
  // Per-image sums of squared errors in float64, whatever the input dtype.
  at::Tensor sse = at::zeros({d.B}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "render_loss_cuda", [&] {
    launch_render_loss<scalar_t>(x.const_data_ptr<scalar_t>(), sprites.const_data_ptr<scalar_t>(),
                                 theta.const_data_ptr<scalar_t>(), occ.const_data_ptr<scalar_t>(),
                                 in_ptr<scalar_t>(bg), in_ptr<scalar_t>(noise), sse.mutable_data_ptr<double>(),
                                 render_dims(d), current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return (sse.sum() / static_cast<double>(d.B * d.C * d.H * d.W)).to(x.scalar_type());
}

std::vector<at::Tensor> render_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& x_in,
                                                  const at::Tensor& sprites_in, const at::Tensor& theta_in,
                                                  const at::Tensor& occ_in, const std::optional<at::Tensor>& bg_in,
                                                  const std::optional<at::Tensor>& noise_in, bool need_x,
                                                  bool need_sprites, bool need_theta, bool need_occ, bool need_bg,
                                                  bool need_noise) {
  const Dims d = check_render_cuda(x_in, sprites_in, theta_in, occ_in, bg_in, noise_in);
  TORCH_CHECK(grad.numel() == 1, "grad of the scalar loss must have one element, got ", grad.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), sprites = sprites_in.contiguous(), theta = theta_in.contiguous(),
                   occ = occ_in.contiguous(), bg = contiguous_or_undefined(bg_in),
                   noise = contiguous_or_undefined(noise_in);
  RenderGrads g = render_grad_buffers(x, sprites, theta, occ, bg, noise, need_x, need_sprites, need_theta, need_occ,
                                      need_bg, need_noise);
  // The loss gradient is one number; reading it costs one device sync per backward.
  const double scale = grad.item<double>() / static_cast<double>(d.B * d.C * d.H * d.W);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "render_loss_backward_cuda", [&] {
    launch_render_loss_backward<scalar_t>(
        x.const_data_ptr<scalar_t>(), sprites.const_data_ptr<scalar_t>(), theta.const_data_ptr<scalar_t>(),
        occ.const_data_ptr<scalar_t>(), in_ptr<scalar_t>(bg), in_ptr<scalar_t>(noise), static_cast<scalar_t>(scale),
        out_ptr<scalar_t>(g.x), out_ptr<scalar_t>(g.sprites), out_ptr<scalar_t>(g.theta), out_ptr<scalar_t>(g.occ),
        out_ptr<scalar_t>(g.bg), out_ptr<scalar_t>(g.noise), render_dims(d), current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return g.list();
}

}  // namespace

TORCH_LIBRARY_IMPL(dtifast, CUDA, m) {
  m.impl("render_loss", &render_loss_cuda);
  m.impl("render_loss_backward", &render_loss_backward_cuda);
}

}  // namespace cuda
}  // namespace dtifast

// CUDA bindings of dtifast::render_loss / render_loss_backward (kernels in render_loss.cu; the op contract is
// csrc/render_loss.cpp's). The loss gradient stays on the device (the kernel reads it: no host sync). The
// loss, theta and occlusion gradients are deterministic in every mode; the sprite gradient uses atomics, or
// under torch.use_deterministic_algorithms(True) the recorded taps of chunks of images summed by TapScatter.
#include <torch/library.h>

#include "bind.h"

namespace dtifast {
namespace cuda {
namespace {

Dims check_render_cuda(const at::Tensor& x, const at::Tensor& sprites, const at::Tensor& theta, const at::Tensor& occ,
                       const std::optional<at::Tensor>& bg, const std::optional<at::Tensor>& noise,
                       const at::Tensor& basis) {
  const Dims d = check_render(x, sprites, theta, occ, bg, noise, basis, at::kCUDA);
  TORCH_CHECK(d.C <= kMaxChannels, "the CUDA render loss takes at most ", kMaxChannels, " colour channels, got ",
              d.C);
  return d;
}

// The mean's divisor: B * C * H * W, or 1 for an empty batch, whose loss is 0 as in the reference (no error to
// average), not 0 / 0.
double loss_count(const Dims& d) { return static_cast<double>(std::max<int64_t>(d.B * d.C * d.H * d.W, 1)); }

// The inputs made contiguous, and the kernels' view of them.
struct RenderInputs {
  Dims d;
  at::Tensor x, sprites, theta, occ, bg, noise, basis;

  template <typename T>
  RenderArgs<T> args() const {
    return {{static_cast<int>(d.L), d.B, d.C, d.H, d.W, d.h, d.w, d.E == 2},
            x.const_data_ptr<T>(), sprites.const_data_ptr<T>(), theta.const_data_ptr<T>(), occ.const_data_ptr<T>(),
            in_ptr<T>(bg), in_ptr<T>(noise), basis.const_data_ptr<T>()};
  }
};

RenderInputs render_inputs(const Dims& d, const at::Tensor& x, const at::Tensor& sprites, const at::Tensor& theta,
                           const at::Tensor& occ, const std::optional<at::Tensor>& bg,
                           const std::optional<at::Tensor>& noise, const at::Tensor& basis) {
  return {d, x.contiguous(), sprites.contiguous(), theta.contiguous(), occ.contiguous(),
          contiguous_or_undefined(bg), contiguous_or_undefined(noise), basis.contiguous()};
}

at::Tensor render_loss_cuda(const at::Tensor& x_in, const at::Tensor& sprites_in, const at::Tensor& theta_in,
                            const at::Tensor& occ_in, const std::optional<at::Tensor>& bg_in,
                            const std::optional<at::Tensor>& noise_in, const at::Tensor& basis_in) {
  const Dims d = check_render_cuda(x_in, sprites_in, theta_in, occ_in, bg_in, noise_in, basis_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const RenderInputs in = render_inputs(d, x_in, sprites_in, theta_in, occ_in, bg_in, noise_in, basis_in);
  // Per-tile sums of squared errors in float64 whatever the input dtype, added by ATen's (deterministic) sum.
  at::Tensor partial = at::zeros({d.B, tiles_for(d.H * d.W)}, in.x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "render_loss_cuda", [&] {
    launch_render_loss<scalar_t>(in.args<scalar_t>(), partial.mutable_data_ptr<double>(), current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return (partial.sum() / loss_count(d)).to(in.x.scalar_type());
}

std::vector<at::Tensor> render_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& x_in,
                                                  const at::Tensor& sprites_in, const at::Tensor& theta_in,
                                                  const at::Tensor& occ_in, const std::optional<at::Tensor>& bg_in,
                                                  const std::optional<at::Tensor>& noise_in,
                                                  const at::Tensor& basis_in, bool need_x, bool need_sprites,
                                                  bool need_theta, bool need_occ, bool need_bg, bool need_noise) {
  const Dims d = check_render_cuda(x_in, sprites_in, theta_in, occ_in, bg_in, noise_in, basis_in);
  TORCH_CHECK(grad.numel() == 1, "grad of the scalar loss must have one element, got ", grad.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const RenderInputs in = render_inputs(d, x_in, sprites_in, theta_in, occ_in, bg_in, noise_in, basis_in);
  const int64_t HW = d.H * d.W, hw = d.h * d.w;
  const bool record = need_sprites && d.B * HW > 0 && sprites_in.numel() > 0 && deterministic();
  RenderGrads g = render_grad_buffers(in.x, in.sprites, in.theta, in.occ, in.bg, in.noise, need_x,
                                      need_sprites && !record, need_theta, need_occ, need_bg, need_noise);
  if (d.B * HW == 0) return g.list();  // no pixel: every gradient is empty or zero
  // The loss gradient as one device element of x's dtype (a copy only if it comes as another dtype or device).
  const at::Tensor grad1 = grad.reshape({1}).to(in.x.options());
  const int64_t n_par = render_params(static_cast<int>(d.L), need_theta, need_occ);
  at::Tensor partial = at::empty({n_par > 0 ? d.B * tiles_for(HW) * n_par : 0}, in.x.options());
  const int64_t chunk = record ? std::min(d.B, chunk_images(d.L * HW)) : d.B;
  std::optional<TapScatter> scatter;
  if (record) scatter.emplace(d.L * d.B * hw, d.C + d.E, chunk * d.L * HW, in.x.options());
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "render_loss_backward_cuda", [&] {
    const RenderArgs<scalar_t> a = in.args<scalar_t>();
    RenderGradArgs<scalar_t> ga{grad1.const_data_ptr<scalar_t>(), loss_count(d),
                                out_ptr<scalar_t>(g.x), out_ptr<scalar_t>(g.sprites), out_ptr<scalar_t>(g.theta),
                                out_ptr<scalar_t>(g.occ), out_ptr<scalar_t>(g.bg), out_ptr<scalar_t>(g.noise),
                                out_ptr<scalar_t>(partial), {nullptr, nullptr, 0, 0}};
    if (record) ga.taps = scatter->taps<scalar_t>();
    for (int64_t b0 = 0; b0 < d.B; b0 += chunk) {
      const int64_t nb = std::min(chunk, d.B - b0);
      launch_render_loss_backward<scalar_t>(a, ga, b0, nb, current_stream());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (record) scatter->add(nb * d.L * HW);
    }
    launch_render_loss_params<scalar_t>(a, ga, current_stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (record) g.sprites = scatter->gradient(d.L * d.B).view(in.sprites.sizes());
  return g.list();
}

}  // namespace

TORCH_LIBRARY_IMPL(dtifast, CUDA, m) {
  m.impl("render_loss", &render_loss_cuda);
  m.impl("render_loss_backward", &render_loss_backward_cuda);
}

}  // namespace cuda
}  // namespace dtifast

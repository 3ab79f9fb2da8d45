// Fused render loss on CPU: place the selected sprites (position warp + mask noise), composite over the
// background with the occlusion matrix, and the MSE against x, in one pass over the pixels; the backward
// recomputes the pass instead of storing any (L, B, C, H, W) intermediate.
//
//   dtifast::render_loss(x, sprites, theta, occlusion, background, noise, basis) -> loss (scalar)
//   dtifast::render_loss_backward(grad, x, sprites, theta, occlusion, background, noise, basis, need_x,
//       need_sprites, need_theta, need_occlusion, need_background, need_noise)
//       -> (dx, dsprites, dtheta, docc, dbg, dnoise)
//
// x (B, C, H, W); sprites (L, B, C + E, h, w) (E = 1: mask; E = 2: mask, canvas with noise); theta (L, B, 6)
// placement matrices; occlusion (L, L, B); background (B, C, H, W) or None; noise (L, B, 1, H, W) or None;
// basis (W + H,) the affine base coordinates of the image (sampling.h grid_point).
// Each image is handled by one thread (its partial loss and every gradient it touches belong to it alone),
// and the per-image partial losses are added in image order: the result does not depend on the thread count.
// An empty batch has no error to average: its loss is 0 (not 0/0), as on every backend.
// The per-pixel pass below is the scalar reference; on CPUs with AVX2 or AVX-512 the vector pass of
// render_simd.h (render_kernel.h's table, cpu_capability.h) runs instead, within float rounding of it.
#include <torch/library.h>

#include "checks.h"
#include "composite.h"
#include "cpu_capability.h"
#include "place.h"
#include "render_kernel.h"

namespace dtifast {
namespace {

// The per-pixel pass (the reference): image b's sum of squared errors; with grads, also its backward.
template <typename scalar_t>
double scalar_render_image(const RenderArgs<scalar_t>& d, int64_t b, const RenderGradPointers<scalar_t>* grads) {
  const int64_t L = d.L, C = d.C, HW = d.H * d.W, hw = d.h * d.w, S = (C + d.E) * hw;
  std::vector<scalar_t> col(L * C), dcol(L * C), gout(C), docc_local(L * L, scalar_t(0));
  std::vector<Placed<scalar_t>> placed(L);
  scalar_t m[kMaxLayers], dm[kMaxLayers];
  double sse = 0;
  for (int64_t i = 0; i < d.H; ++i) {
    for (int64_t j = 0; j < d.W; ++j) {
      const int64_t p = i * d.W + j;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t lb = l * d.B + b;
        placed[l] = place_pixel<scalar_t>(d.sprites + lb * S, hw, C, d.h, d.w, d.theta + lb * 6, d.basis, i, j, d.W,
                                          d.noise ? d.noise + lb * HW + p : nullptr, col.data() + l * C);
        m[l] = placed[l].mask;
      }
      const scalar_t* bgp = d.bg ? d.bg + b * C * HW + p : nullptr;
      composite_pixel<scalar_t>(d.occ + b, d.B, m, col.data(), C, 1, bgp, HW, static_cast<int>(L), C, gout.data(),
                                1);
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t diff = gout[c] - d.x[(b * C + c) * HW + p];
        sse += static_cast<double>(diff) * static_cast<double>(diff);
        gout[c] = grads ? scalar_t(2) * diff * grads->scale : scalar_t(0);
      }
      if (grads == nullptr) continue;
      if (grads->dx) {
        for (int64_t c = 0; c < C; ++c) grads->dx[(b * C + c) * HW + p] = -gout[c];
      }
      std::fill(dcol.begin(), dcol.end(), scalar_t(0));
      composite_backward<scalar_t>(d.occ + b, d.B, m, col.data(), C, 1, bgp, HW, static_cast<int>(L), C,
                                   gout.data(), 1, dm, dcol.data(), grads->docc ? docc_local.data() : nullptr,
                                   grads->dbg ? grads->dbg + b * C * HW + p : nullptr);
      for (int64_t l = 0; l < L; ++l) {
        const int64_t lb = l * d.B + b;
        const scalar_t dn = place_pixel_backward<scalar_t>(
            placed[l], d.sprites + lb * S, hw, C, d.theta + lb * 6, d.basis, i, j, d.W,
            d.noise ? d.noise + lb * HW + p : nullptr, dcol.data() + l * C, dm[l],
            grads->dsprites ? grads->dsprites + lb * S : nullptr, grads->dtheta ? grads->dtheta + lb * 6 : nullptr);
        if (grads->dnoise) grads->dnoise[lb * HW + p] = dn;
      }
    }
  }
  if (grads != nullptr && grads->docc) {
    for (int64_t jk = 0; jk < L * L; ++jk) grads->docc[jk * d.B + b] = docc_local[jk];
  }
  return sse;
}

// The vector passes address sprite taps by y * w + x computed in T (warp_simd.h vec_taps), exact below 2^24
// in float; larger sprites take the scalar pass.
template <typename T>
RenderKernels<T> kernels_for(const RenderArgs<T>& a) {
  const RenderKernels<T> scalar{&scalar_render_image<T>};
#if DTIFAST_X86_SIMD
  const double limit = sizeof(T) == 4 ? 16777216.0 : 4503599627370496.0;
  if (static_cast<double>(a.h + 2) * static_cast<double>(a.w + 2) < limit) {
    return table_for_capability(scalar, &render_kernels_avx2<T>, &render_kernels_avx512<T>);
  }
#endif
  return scalar;
}

template <typename scalar_t>
RenderArgs<scalar_t> render_args(const Dims& d, const at::Tensor& x, const at::Tensor& sprites,
                                 const at::Tensor& theta, const at::Tensor& occ, const at::Tensor& bg,
                                 const at::Tensor& noise, const at::Tensor& basis) {
  return {d.L,
          d.B,
          d.C,
          d.E,
          d.H,
          d.W,
          d.h,
          d.w,
          x.const_data_ptr<scalar_t>(),
          sprites.const_data_ptr<scalar_t>(),
          theta.const_data_ptr<scalar_t>(),
          occ.const_data_ptr<scalar_t>(),
          bg.defined() ? bg.const_data_ptr<scalar_t>() : nullptr,
          noise.defined() ? noise.const_data_ptr<scalar_t>() : nullptr,
          basis.const_data_ptr<scalar_t>()};
}

at::Tensor render_loss_cpu(const at::Tensor& x_in, const at::Tensor& sprites_in, const at::Tensor& theta_in,
                           const at::Tensor& occ_in, const std::optional<at::Tensor>& bg_in,
                           const std::optional<at::Tensor>& noise_in, const at::Tensor& basis_in) {
  const Dims d = check_render(x_in, sprites_in, theta_in, occ_in, bg_in, noise_in, basis_in, at::kCPU);
  const at::Tensor x = x_in.contiguous(), sprites = sprites_in.contiguous(), theta = theta_in.contiguous(),
                   occ = occ_in.contiguous(), bg = contiguous_or_undefined(bg_in),
                   noise = contiguous_or_undefined(noise_in), basis = basis_in.contiguous();
  at::Tensor loss = at::empty({}, x.options());
  std::vector<double> partial(d.B, 0.0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "render_loss_cpu", [&] {
    const auto args = render_args<scalar_t>(d, x, sprites, theta, occ, bg, noise, basis);
    const RenderKernels<scalar_t> kernels = kernels_for(args);
    at::parallel_for(0, d.B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) partial[b] = kernels.image(args, b, nullptr);
    });
    double total = 0;
    for (double v : partial) total += v;
    loss.fill_(static_cast<scalar_t>(total / static_cast<double>(std::max<int64_t>(d.B * d.C * d.H * d.W, 1))));
  });
  return loss;
}

std::vector<at::Tensor> render_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& x_in,
                                                 const at::Tensor& sprites_in, const at::Tensor& theta_in,
                                                 const at::Tensor& occ_in, const std::optional<at::Tensor>& bg_in,
                                                 const std::optional<at::Tensor>& noise_in,
                                                 const at::Tensor& basis_in, bool need_x,
                                                 bool need_sprites, bool need_theta, bool need_occ, bool need_bg,
                                                 bool need_noise) {
  const Dims d = check_render(x_in, sprites_in, theta_in, occ_in, bg_in, noise_in, basis_in, at::kCPU);
  TORCH_CHECK(grad.numel() == 1, "grad of the scalar loss must have one element, got ", grad.sizes());
  const at::Tensor x = x_in.contiguous(), sprites = sprites_in.contiguous(), theta = theta_in.contiguous(),
                   occ = occ_in.contiguous(), bg = contiguous_or_undefined(bg_in),
                   noise = contiguous_or_undefined(noise_in), basis = basis_in.contiguous();
  RenderGrads g = render_grad_buffers(x, sprites, theta, occ, bg, noise, need_x, need_sprites, need_theta, need_occ,
                                      need_bg, need_noise);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "render_loss_backward_cpu", [&] {
    const auto args = render_args<scalar_t>(d, x, sprites, theta, occ, bg, noise, basis);
    const RenderKernels<scalar_t> kernels = kernels_for(args);
    auto ptr = [](at::Tensor& t) { return t.numel() ? t.mutable_data_ptr<scalar_t>() : nullptr; };
    const RenderGradPointers<scalar_t> grads{
        static_cast<scalar_t>(grad.item<double>() / static_cast<double>(std::max<int64_t>(d.B * d.C * d.H * d.W, 1))),
        ptr(g.x), ptr(g.sprites), ptr(g.theta), ptr(g.occ), ptr(g.bg), ptr(g.noise)};
    at::parallel_for(0, d.B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) kernels.image(args, b, &grads);
    });
  });
  return g.list();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dtifast, m) {
  m.def(
      "render_loss(Tensor x, Tensor sprites, Tensor theta, Tensor occlusion, Tensor? background, Tensor? noise, "
      "Tensor basis) -> Tensor");
  m.def(
      "render_loss_backward(Tensor grad, Tensor x, Tensor sprites, Tensor theta, Tensor occlusion, "
      "Tensor? background, Tensor? noise, Tensor basis, bool need_x, bool need_sprites, bool need_theta, bool need_occlusion, "
      "bool need_background, bool need_noise) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(dtifast, CPU, m) {
  m.impl("render_loss", &render_loss_cpu);
  m.impl("render_loss_backward", &render_loss_backward_cpu);
}

}  // namespace dtifast

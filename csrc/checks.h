// Input checks of every native op, shared by the CPU kernels (csrc/*.cpp) and the CUDA bindings
// (csrc/cuda/bind_*.cpp): TORCH_CHECK mirrors of dtifast/ops/_checks.py, so that a direct torch.ops call
// with bad input gets a clear error instead of reading out of bounds. `device` is the kernel's device type.
#pragma once

#include "common.h"
#include "composite.h"
#include "sampling.h"

namespace dtifast {

// x (K, C, h, w); theta (N, ...) with N = K without an index, or index (N,) int64 with values in [0, K).
inline void check_warp(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& basis,
                       const std::optional<at::Tensor>& index, int64_t mode, int64_t out_h, int64_t out_w,
                       at::DeviceType device) {
  check_device(x, "x", device);
  check_like(theta, "theta", x);
  TORCH_CHECK(x.dim() == 4, "x must be (N, C, h, w), got ", x.sizes());
  TORCH_CHECK(out_h > 0 && out_w > 0, "out size must be positive, got (", out_h, ", ", out_w, ")");
  TORCH_CHECK(mode == kAffine || mode == kProjective || mode == kTps, "unknown warp mode ", mode);
  TORCH_CHECK(theta.dim() >= 2, "theta must be (N, ...), got ", theta.sizes());
  const int64_t n = theta.size(0);
  if (index.has_value()) {
    TORCH_CHECK(index->device() == x.device() && index->scalar_type() == at::kLong, "index must be int64 on ",
                x.device(), ", got ", index->scalar_type(), " on ", index->device());
    check_sizes(*index, "index", {n});
    if (index->device().is_cpu() && n > 0) {
      const at::Tensor idx = index->contiguous();
      const int64_t* p = idx.const_data_ptr<int64_t>();
      for (int64_t i = 0; i < n; ++i) {
        TORCH_CHECK(p[i] >= 0 && p[i] < x.size(0), "index values must be in [0, ", x.size(0), "), got ", p[i]);
      }
    }
  } else {
    TORCH_CHECK(n == x.size(0), "theta must have one row per image of x (", x.size(0), "), got ", n);
  }
  if (mode == kAffine) check_sizes(theta, "theta", {n, 6});
  if (mode == kProjective) check_sizes(theta, "theta", {n, 9});
  check_like(basis, "basis", x);
  if (mode == kTps) {
    check_sizes(theta, "theta", {n, -1, 2});
    check_sizes(basis, "basis", {out_h * out_w, theta.size(1)});
  } else {
    check_sizes(basis, "basis", {out_w + out_h});
  }
}

inline void check_composite(const at::Tensor& layers, const at::Tensor& masks, const at::Tensor& occ,
                            const std::optional<at::Tensor>& bg, at::DeviceType device) {
  check_device(layers, "layers", device);
  TORCH_CHECK(layers.dim() == 5, "layers must be (L, B, C, H, W), got ", layers.sizes());
  const int64_t L = layers.size(0), B = layers.size(1);
  TORCH_CHECK(L >= 1 && L <= kMaxLayers, "the native kernels take 1 to ", kMaxLayers, " layers, got ", L);
  check_like(masks, "masks", layers);
  check_sizes(masks, "masks", {L, B, 1, layers.size(3), layers.size(4)});
  check_like(occ, "occlusion", layers);
  check_sizes(occ, "occlusion", {L, L, B});
  if (bg.has_value()) {
    check_like(*bg, "background", layers);
    check_sizes(*bg, "background", {B, layers.size(2), layers.size(3), layers.size(4)});
  }
}

// Render-loss sizes: L layers, B images of C colour channels and H x W pixels, sprites of h x w with E extra
// channels (mask; mask and canvas with noise).
struct Dims {
  int64_t L, B, C, E, H, W, h, w;
};

inline Dims check_render(const at::Tensor& x, const at::Tensor& sprites, const at::Tensor& theta,
                         const at::Tensor& occ, const std::optional<at::Tensor>& bg,
                         const std::optional<at::Tensor>& noise, const at::Tensor& basis, at::DeviceType device) {
  check_device(x, "x", device);
  TORCH_CHECK(x.dim() == 4, "x must be (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(sprites.dim() == 5, "sprites must be (L, B, C + E, h, w), got ", sprites.sizes());
  Dims d{sprites.size(0), x.size(0), x.size(1), noise.has_value() ? 2 : 1, x.size(2), x.size(3), sprites.size(3),
         sprites.size(4)};
  TORCH_CHECK(d.L >= 1 && d.L <= kMaxLayers, "the native kernels take 1 to ", kMaxLayers, " layers, got ", d.L);
  check_like(sprites, "sprites", x);
  check_sizes(sprites, "sprites", {d.L, d.B, d.C + d.E, -1, -1});
  check_like(theta, "theta", x);
  check_sizes(theta, "theta", {d.L, d.B, 6});
  check_like(occ, "occlusion", x);
  check_sizes(occ, "occlusion", {d.L, d.L, d.B});
  if (bg.has_value()) {
    check_like(*bg, "background", x);
    check_sizes(*bg, "background", {d.B, d.C, d.H, d.W});
  }
  if (noise.has_value()) {
    check_like(*noise, "noise", x);
    check_sizes(*noise, "noise", {d.L, d.B, 1, d.H, d.W});
  }
  check_like(basis, "basis", x);
  check_sizes(basis, "basis", {d.W + d.H});
  return d;
}

// The render loss's input gradients as the CPU kernel and the CUDA binding both fill them: zeros where the
// kernel accumulates (sprites, theta, occlusion, background), uninitialised where every element is written
// once (x, noise), and an empty tensor for a gradient that was not asked for (a custom op returns tensors).
struct RenderGrads {
  at::Tensor x, sprites, theta, occ, bg, noise;
  std::vector<at::Tensor> list() const { return {x, sprites, theta, occ, bg, noise}; }
};

inline RenderGrads render_grad_buffers(const at::Tensor& x, const at::Tensor& sprites, const at::Tensor& theta,
                                       const at::Tensor& occ, const at::Tensor& bg, const at::Tensor& noise,
                                       bool need_x, bool need_sprites, bool need_theta, bool need_occ, bool need_bg,
                                       bool need_noise) {
  const at::Tensor empty = at::empty({0}, x.options());
  return {need_x ? at::empty_like(x) : empty,
          need_sprites ? at::zeros_like(sprites) : empty,
          need_theta ? at::zeros_like(theta) : empty,
          need_occ ? at::zeros_like(occ) : empty,
          need_bg && bg.defined() ? at::zeros_like(bg) : empty,
          need_noise && noise.defined() ? at::empty_like(noise) : empty};
}

inline void check_greedy(const at::Tensor& x_in, const at::Tensor& sprites_in, const at::Tensor& theta_in,
                         const at::Tensor& occ_in, const std::optional<at::Tensor>& bg_in, int64_t n_iter,
                         const std::optional<at::Tensor>& penalty_in, const std::optional<at::Tensor>& noise_in,
                         const at::Tensor& basis_in, at::DeviceType device) {
  check_device(x_in, "x", device);
  TORCH_CHECK(x_in.dim() == 4, "x must be (B, C, H, W), got ", x_in.sizes());
  TORCH_CHECK(sprites_in.dim() == 6, "sprites must be (L, K, B, C + E, h, w), got ", sprites_in.sizes());
  const int64_t L = sprites_in.size(0), K = sprites_in.size(1), B = x_in.size(0), C = x_in.size(1);
  const int64_t H = x_in.size(2), W = x_in.size(3), E = noise_in.has_value() ? 2 : 1;
  TORCH_CHECK(L >= 1 && L <= kMaxLayers, "the native kernels take 1 to ", kMaxLayers, " layers, got ", L);
  TORCH_CHECK(K >= 1, "there must be at least one candidate sprite");
  TORCH_CHECK(n_iter >= 1, "n_iter must be positive, got ", n_iter);
  check_like(sprites_in, "sprites", x_in);
  check_sizes(sprites_in, "sprites", {L, K, B, C + E, -1, -1});
  check_like(theta_in, "theta", x_in);
  check_sizes(theta_in, "theta", {L, B, 6});
  check_like(occ_in, "occlusion", x_in);
  check_sizes(occ_in, "occlusion", {L, L, B});
  if (bg_in.has_value()) {
    check_like(*bg_in, "background", x_in);
    check_sizes(*bg_in, "background", {B, C, H, W});
  }
  if (penalty_in.has_value()) {
    check_like(*penalty_in, "empty_penalty", x_in);
    check_sizes(*penalty_in, "empty_penalty", {K});
  }
  if (noise_in.has_value()) {
    check_like(*noise_in, "noise", x_in);
    check_sizes(*noise_in, "noise", {K, 1, H, W});
  }
  check_like(basis_in, "basis", x_in);
  check_sizes(basis_in, "basis", {W + H});
}

inline void check_greedy_layers(const at::Tensor& x, const at::Tensor& layers, const at::Tensor& masks,
                                const at::Tensor& occ, const std::optional<at::Tensor>& bg, int64_t n_iter,
                                const std::optional<at::Tensor>& penalty, at::DeviceType device) {
  check_device(x, "x", device);
  TORCH_CHECK(x.dim() == 4, "x must be (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(layers.dim() == 6, "layers must be (L, K, B, C, H, W), got ", layers.sizes());
  const int64_t L = layers.size(0), K = layers.size(1), B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(L >= 1 && L <= kMaxLayers, "the native kernels take 1 to ", kMaxLayers, " layers, got ", L);
  TORCH_CHECK(K >= 1, "there must be at least one candidate");
  TORCH_CHECK(n_iter >= 1, "n_iter must be positive, got ", n_iter);
  check_like(layers, "layers", x);
  check_sizes(layers, "layers", {L, K, B, C, H, W});
  check_like(masks, "masks", x);
  check_sizes(masks, "masks", {L, K, B, 1, H, W});
  check_like(occ, "occlusion", x);
  check_sizes(occ, "occlusion", {L, L, B});
  if (bg.has_value()) {
    check_like(*bg, "background", x);
    check_sizes(*bg, "background", {B, C, H, W});
  }
  if (penalty.has_value()) {
    check_like(*penalty, "empty_penalty", x);
    check_sizes(*penalty, "empty_penalty", {K});
  }
}

}  // namespace dtifast

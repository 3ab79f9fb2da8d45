// Placing one sprite at one output pixel, forward and backward (dtifast/ops/reference.py place_sprites):
// position warp (zeros padding, pixel-centre grid), then with mask noise mask = softclip(mask + canvas * noise).
// Shared by the render-loss and greedy kernels on CPU and CUDA.
//
// A sprite is C colour planes, a mask plane and (with noise) a canvas plane of h*w values, plane q at
// sprite[q * ps]; theta is its 2x3 position matrix; basis the (W + H,) affine base coordinates of the
// output (sampling.h grid_point).
#pragma once

#include "sampling.h"

namespace dtifast {

constexpr double kMaskSlope = 0.01;  // upstream's softclip slope for the noisy mask

template <typename T>
struct Placed {
  Bilinear<T> taps;
  T mask;      // after noise and softclip
  T pre;       // mask + canvas * noise before softclip (the mask itself without noise)
  T canvas;    // sampled canvas (0 without noise)
};

// The taps of output pixel (i, j) of a W-wide output in an (h, w) sprite placed by position matrix theta.
template <typename T>
DTIFAST_HD Bilinear<T> place_taps(const T* theta, const T* basis, int64_t h, int64_t w, int64_t i, int64_t j,
                                  int64_t W) {
  T gx, gy;
  grid_point<T>(kAffine, theta, basis, 0, i, j, W, gx, gy);
  return bilinear_taps<T>(gx, gy, h, w, false);
}

// place_pixel for taps already computed (shared by every candidate sprite of one layer and image).
template <typename T>
DTIFAST_HD Placed<T> place_from_taps(const Bilinear<T>& taps, const T* sprite, int64_t ps, int64_t C,
                                     const T* noise, T* col) {
  Placed<T> p;
  p.taps = taps;
  if (!taps.any_valid) {  // outside the sprite: zero colour, mask softclip(0 + 0 * noise) = 0
    if (col != nullptr) {
      for (int64_t c = 0; c < C; ++c) col[c] = T(0);
    }
    p.mask = p.pre = p.canvas = T(0);
    return p;
  }
  if (col != nullptr) {
    for (int64_t c = 0; c < C; ++c) col[c] = bilinear_read(p.taps, sprite + c * ps);
  }
  p.pre = bilinear_read(p.taps, sprite + C * ps);
  p.canvas = T(0);
  if (noise != nullptr) {
    p.canvas = bilinear_read(p.taps, sprite + (C + 1) * ps);
    p.pre += p.canvas * *noise;
    p.mask = softclip_value(p.pre, T(kMaskSlope));
  } else {
    p.mask = p.pre;
  }
  return p;
}

template <typename T>
DTIFAST_HD Placed<T> place_pixel(const T* sprite, int64_t ps, int64_t C, int64_t h, int64_t w, const T* theta,
                                 const T* basis, int64_t i, int64_t j, int64_t W, const T* noise, T* col) {
  return place_from_taps<T>(place_taps<T>(theta, basis, h, w, i, j, W), sprite, ps, C, noise, col);
}

// Where place_pixel_backward sends the sprite gradient: the gradient g of sampled plane q (colours 0..C-1,
// mask C, canvas C + 1) is added into the taps of plane q of dsprite (null: not wanted).
template <typename T>
struct ScatterToSprite {
  T* dsprite;
  int64_t ps;
  DTIFAST_HD void operator()(const Bilinear<T>& taps, int64_t q, T g) const {
    if (dsprite != nullptr) scatter_taps<T>(taps, g, dsprite + q * ps);
  }
};

// Backward for colour gradients dcol[C] and mask gradient dmask: hands each sampled plane's gradient to
// sink(taps, plane, g) (ScatterToSprite, or a recorder of per-tap contributions), adds the position-matrix
// gradient into dtheta (null: not wanted) and returns the noise gradient (0 without noise).
template <typename T, typename Sink>
DTIFAST_HD T place_pixel_backward_to(const Placed<T>& p, const T* sprite, int64_t ps, int64_t C, const T* theta,
                                     const T* basis, int64_t i, int64_t j, int64_t W, const T* noise, const T* dcol,
                                     T dmask, const Sink& sink, T* dtheta) {
  // Outside the sprite nothing was read: no gradient to the sprite, the placement or the noise (canvas 0).
  if (!p.taps.any_valid) return T(0);
  T gix = 0, giy = 0;
  for (int64_t c = 0; c < C; ++c) {
    bilinear_backward<T>(p.taps, sprite + c * ps, dcol[c], nullptr, gix, giy);
    sink(p.taps, c, dcol[c]);
  }
  T dnoise = T(0);
  T dpre = dmask;
  if (noise != nullptr) {
    dpre = dmask * softclip_grad(p.pre, T(kMaskSlope));
    dnoise = dpre * p.canvas;
    bilinear_backward<T>(p.taps, sprite + (C + 1) * ps, dpre * *noise, nullptr, gix, giy);
    sink(p.taps, C + 1, dpre * *noise);
  }
  bilinear_backward<T>(p.taps, sprite + C * ps, dpre, nullptr, gix, giy);
  sink(p.taps, C, dpre);
  if (dtheta != nullptr) {
    grid_point_backward<T>(kAffine, theta, basis, 0, i, j, W, gix * p.taps.dx_mult, giy * p.taps.dy_mult, dtheta);
  }
  return dnoise;
}

// place_pixel_backward_to scattering into the sprite's planes dsprite (layout of sprite; null: not wanted).
template <typename T>
DTIFAST_HD T place_pixel_backward(const Placed<T>& p, const T* sprite, int64_t ps, int64_t C, const T* theta,
                                  const T* basis, int64_t i, int64_t j, int64_t W, const T* noise, const T* dcol,
                                  T dmask, T* dsprite, T* dtheta) {
  return place_pixel_backward_to<T>(p, sprite, ps, C, theta, basis, i, j, W, noise, dcol, dmask,
                                    ScatterToSprite<T>{dsprite, ps}, dtheta);
}

}  // namespace dtifast

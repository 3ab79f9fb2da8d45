// The vector CPU render-loss pass: render_loss.cpp's per-pixel pass (place every layer's sprite, composite,
// squared error; in the backward the same pass with the chain rule) for Vec<T>::size() pixels of a row at
// a time.
//
// Included only by the per-instruction-set files (csrc/x86/avx2.cpp, avx512.cpp) after their target pragma
// and CPU_CAPABILITY, as warp_simd.h. Placing a sprite is the position warp, so its coordinates, taps,
// gathers, coordinate gradients and lane-by-lane scatter are warp_simd.h's, and its transform gradient is
// summed pixel by pixel (warp_kernel.h add_matrix_grad) as in the scalar pass; the compositing is
// composite.h's per-pixel math on vectors (a lane per pixel). The squared errors are added in double in the
// scalar pass's order (pixels, then channels); only the occlusion gradient is summed per lane first, then
// over the lanes. Lanes past the end of a row load zeros and have no taps: they add nothing anywhere.
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY (and CPU_CAPABILITY_<ISA>) before including render_simd.h"
#endif

#include "composite_simd.h"
#include "place.h"
#include "render_kernel.h"
#include "warp_simd.h"

namespace dtifast {
inline namespace CPU_CAPABILITY {

// sampling.h softclip_value, lane by lane, in its order of operations.
template <typename T>
Vec<T> vec_softclip(const Vec<T>& v, T s) {
  const Vec<T> zero(T(0)), one(T(1)), slope(s);
  const Vec<T> clamped = at::vec::minimum(at::vec::maximum(v, zero), one);
  const Vec<T> below = at::vec::minimum(v, zero), above = at::vec::maximum(v - one, zero);
  return clamped + slope * below + slope * above;
}

// sampling.h softclip_grad, lane by lane.
template <typename T>
Vec<T> vec_softclip_grad(const Vec<T>& v, T s) {
  const Vec<T> zero(T(0)), one(T(1));
  const Vec<T> inner = Vec<T>::blendv(one, Vec<T>(T(1) + s / T(2)), (v == zero) | (v == one));
  return Vec<T>::blendv(inner, Vec<T>(s), (v < zero) | (v > one));
}

// One layer's sprite sampled at a block of pixels (place.h Placed, a lane per pixel).
template <typename T>
struct VecPlaced {
  VecTaps<T> taps;
  Vec<T> pre, canvas, noise;  // canvas and noise: 0 without noise
  // User-provided, as VecTaps' (warp_simd.h).
  VecPlaced() {}
};

template <typename T>
double vec_render_image(const RenderArgs<T>& d, int64_t b, const RenderGradPointers<T>* grads) {
  using V = Vec<T>;
  constexpr int64_t kLanes = V::size();
  const int64_t L = d.L, C = d.C, P = C + d.E, HW = d.H * d.W, hw = d.h * d.w, S = P * hw;
  const T slope = static_cast<T>(kMaskSlope);
  // Sampling layer l is the position warp of its sprite: an affine warp of the P sprite planes to (H, W).
  const WarpArgs<T> warp{nullptr, nullptr, d.basis, nullptr, kAffine, false, P, d.h, d.w, d.H, d.W, 6, 0};
  PixelChunk<T> rows[kMaxLayers];
  VecPlaced<T> placed[kMaxLayers];
  V occ[kMaxLayers * kMaxLayers], docc_sum[kMaxLayers * kMaxLayers], m[kMaxLayers], dm[kMaxLayers];
  for (int64_t jk = 0; jk < L * L; ++jk) {
    occ[jk] = V(d.occ[jk * d.B + b]);
    docc_sum[jk] = V(T(0));
  }
  PackArray<V> col(L * C), dcol(L * C), bg(C), g(C), dbg(C);
  std::vector<T> diff(C * kLanes);
  alignas(64) T gw[kScatterChannels][4][kLanes];
  double sse = 0;
  for (int64_t i = 0; i < d.H; ++i) {
    for (int64_t j0 = 0; j0 < d.W; j0 += kChunk) {
      const int64_t len = std::min(kChunk, d.W - j0), p0 = i * d.W + j0;
      for (int64_t l = 0; l < L; ++l) chunk_coords<T>(warp, d.theta + (l * d.B + b) * 6, p0, len, rows[l]);
      for (int64_t j = 0; j < len; j += kLanes) {
        const int64_t n = std::min(kLanes, len - j), p = p0 + j;
        for (int64_t l = 0; l < L; ++l) {
          const int64_t lb = l * d.B + b;
          const T* sprite = d.sprites + lb * S;
          VecPlaced<T>& q = placed[l];
          q.taps = chunk_taps(warp, rows[l], j, n);
          // Pixels outside the sprite read zeros (VecTaps::none_valid: most of the canvas, for small sprites).
          const bool outside = q.taps.none_valid();
          const auto read = [&](int64_t plane) { return outside ? V(T(0)) : vec_read(q.taps, sprite + plane * hw); };
          for (int64_t c = 0; c < C; ++c) col[l * C + c] = read(c);
          q.pre = read(C);
          if (d.noise) {
            q.canvas = read(C + 1);
            q.noise = V::loadu(d.noise + lb * HW + p, n);
            q.pre = q.pre + q.canvas * q.noise;
            m[l] = vec_softclip(q.pre, slope);
          } else {
            q.canvas = q.noise = V(T(0));
            m[l] = q.pre;
          }
        }
        for (int64_t c = 0; c < C && d.bg; ++c) bg[c] = V::loadu(d.bg + (b * C + c) * HW + p, n);
        with_layer_bound<2>(static_cast<int>(L), [&](auto bound) {
          composite_pixel<V, decltype(bound)::value>(occ, 1, m, col.data(), C, 1, d.bg ? bg.data() : nullptr, 1,
                                                     static_cast<int>(L), C, g.data(), 1);
        });
        for (int64_t c = 0; c < C; ++c) {
          const V e = g[c] - V::loadu(d.x + (b * C + c) * HW + p, n);
          e.store(diff.data() + c * kLanes);
          g[c] = grads ? V(T(2)) * e * V(grads->scale) : V(T(0));
        }
        for (int64_t lane = 0; lane < n; ++lane) {
          for (int64_t c = 0; c < C; ++c) {
            const double e = static_cast<double>(diff[c * kLanes + lane]);
            sse += e * e;
          }
        }
        if (grads == nullptr) continue;
        for (int64_t c = 0; c < C && grads->dx; ++c) g[c].neg().store(grads->dx + (b * C + c) * HW + p, n);
        for (int64_t e = 0; e < L * C; ++e) dcol[e] = V(T(0));
        for (int64_t c = 0; c < C; ++c) dbg[c] = V(T(0));
        const bool want_dbg = grads->dbg && d.bg;
        with_layer_bound<2>(static_cast<int>(L), [&](auto bound) {
          composite_backward<V, decltype(bound)::value>(occ, 1, m, col.data(), C, 1, d.bg ? bg.data() : nullptr, 1,
                                                        static_cast<int>(L), C, g.data(), 1, dm, dcol.data(),
                                                        grads->docc ? docc_sum : nullptr,
                                                        want_dbg ? dbg.data() : nullptr);
        });
        for (int64_t c = 0; c < C && want_dbg; ++c) dbg[c].store(grads->dbg + (b * C + c) * HW + p, n);
        for (int64_t l = 0; l < L; ++l) {
          const int64_t lb = l * d.B + b;
          const T* sprite = d.sprites + lb * S;
          const VecPlaced<T>& q = placed[l];
          // place.h place_pixel_backward_to: the planes' gradients (colours, mask, canvas), the noise's.
          const V dpre = d.noise ? dm[l] * vec_softclip_grad(q.pre, slope) : dm[l];
          if (grads->dnoise) (dpre * q.canvas).store(grads->dnoise + lb * HW + p, n);
          const V dcanvas = dpre * q.noise;
          if (q.taps.none_valid()) {
            // No coordinate gradient and nothing to scatter.
            if (grads->dtheta) store_zero_coordinate_grads(rows[l], j, n);
            continue;
          }
          if (grads->dtheta) {
            V gix(T(0)), giy(T(0));
            for (int64_t c = 0; c < C; ++c) vec_coordinate_grad(q.taps, sprite + c * hw, dcol[l * C + c], gix, giy);
            if (d.noise) vec_coordinate_grad(q.taps, sprite + (C + 1) * hw, dcanvas, gix, giy);
            vec_coordinate_grad(q.taps, sprite + C * hw, dpre, gix, giy);
            // bilinear_backward skips samples without a valid tap: their coordinate gradient is exactly zero.
            ((gix & q.taps.any_valid) * V::loadu(rows[l].dx_mult + j, n)).store(rows[l].gix + j, n);
            ((giy & q.taps.any_valid) * V::loadu(rows[l].dy_mult + j, n)).store(rows[l].giy + j, n);
          }
          if (grads->dsprites == nullptr) continue;
          for (int64_t c0 = 0; c0 < P; c0 += kScatterChannels) {
            const int64_t planes = std::min(kScatterChannels, P - c0);
            for (int64_t k = 0; k < planes; ++k) {
              const int64_t plane = c0 + k;
              const V gp = plane < C ? dcol[l * C + plane] : plane == C ? dpre : dcanvas;
              for (int t = 0; t < 4; ++t) (gp * q.taps.weight[t]).store(gw[k][t]);
            }
            vec_scatter(q.taps, gw, planes, hw, grads->dsprites + lb * S + c0 * hw);
          }
        }
      }
      for (int64_t l = 0; l < L && grads && grads->dtheta; ++l) {
        const int64_t lb = l * d.B + b;
        add_matrix_grad<T>(warp, d.theta + lb * 6, p0, len, rows[l].gix, rows[l].giy, grads->dtheta + lb * 6);
      }
    }
  }
  if (grads != nullptr && grads->docc) {
    for (int64_t jk = 0; jk < L * L; ++jk) grads->docc[jk * d.B + b] = VecPack<T>::sum(docc_sum[jk]);
  }
  return sse;
}

template <typename T>
RenderKernels<T> vec_render_kernels() {
  return {&vec_render_image<T>};
}

}  // namespace CPU_CAPABILITY
}  // namespace dtifast

// The vector CPU render-loss pass: render_loss.cpp's per-pixel pass (place every layer's sprite, composite,
// squared error; in the backward the same pass with the chain rule) for Vec<T>::size() pixels of a row at
// a time.
//
// Included only by the per-instruction-set files (csrc/x86/avx2.cpp, avx512.cpp) after their target pragma
// and CPU_CAPABILITY, as warp_simd.h. Placing a sprite is the position warp, so its coordinates, taps,
// channel packs (each layer's sprite read from packs, its gradient summed in packs, lane by lane) are
// warp_simd.h's, and its transform gradient is summed pixel by pixel (warp_kernel.h add_matrix_grad) as in
// the scalar pass; the compositing is
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
#include "softclip_simd.h"
#include "warp_simd.h"

namespace dtifast {
inline namespace CPU_CAPABILITY {

// One layer's sprite sampled at a block of pixels (place.h Placed, a lane per pixel).
template <typename T>
struct VecPlaced {
  VecTaps<T> taps;
  Vec<T> pre, canvas, noise;  // canvas and noise: 0 without noise
  // User-provided, as VecTaps' (warp_simd.h).
  VecPlaced() {}
};

// Image b's pass with its sprites' P planes in packs of kPack (warp_simd.h): packed once per image, so that a
// tap of a vector of pixels is one pack load per pixel for all planes; the sprite gradients are summed in
// packs too and added into dsprites at the end.
template <typename T, int kPack>
double vec_render_image_packed(const RenderArgs<T>& d, int64_t b, const RenderGradPointers<T>* grads) {
  using V = Vec<T>;
  constexpr int64_t kLanes = V::size();
  const int64_t L = d.L, C = d.C, P = C + d.E, HW = d.H * d.W, hw = d.h * d.w, S = P * hw;
  const T slope = static_cast<T>(kMaskSlope);
  // Sampling layer l is the position warp of its sprite: an affine warp of the P sprite planes to (H, W).
  const WarpArgs<T> warp{nullptr, nullptr, d.basis, nullptr, kAffine, false, P, d.h, d.w, d.H, d.W, 6, 0};
  const bool want_dsprites = grads != nullptr && grads->dsprites != nullptr;
  std::vector<PackedPlanes<T, kPack>> sprites, dsprites;
  for (int64_t l = 0; l < L; ++l) {
    sprites.emplace_back(P, hw, true);
    pack_image(d.sprites + (l * d.B + b) * S, P, hw, sprites[l]);
    dsprites.emplace_back(P, hw, want_dsprites);
    if (want_dsprites) std::fill(dsprites[l].data(), dsprites[l].data() + dsprites[l].values, T(0));
  }
  alignas(64) T weight[4][kLanes], lerp[4][kLanes];
  alignas(64) T x_rows[kPack][kLanes], y_rows[kPack][kLanes];
  alignas(64) T g_packs[kLanes][kPack];  // a vector of pixels' plane gradients in packs, for the scatter
  // The planes' gradients of a vector of pixels, for the scatter. Rows past the planes are summed into pack
  // slots that no plane owns; zero-initialised, as warp_simd.h vec_backward_output's.
  alignas(64) T g_rows[kPack][kLanes] = {};
  PixelChunk<T> rows[kMaxLayers];
  VecPlaced<T> placed[kMaxLayers];
  V occ[kMaxLayers * kMaxLayers], docc_sum[kMaxLayers * kMaxLayers], m[kMaxLayers], dm[kMaxLayers];
  for (int64_t jk = 0; jk < L * L; ++jk) {
    occ[jk] = V(d.occ[jk * d.B + b]);
    docc_sum[jk] = V(T(0));
  }
  PackArray<V> col(L * C), dcol(L * C), bg(C), g(C), dbg(C);
  std::vector<T> diff(C * kLanes);
  double sse = 0;
  for (int64_t i = 0; i < d.H; ++i) {
    for (int64_t j0 = 0; j0 < d.W; j0 += kChunk) {
      const int64_t len = std::min(kChunk, d.W - j0), p0 = i * d.W + j0;
      for (int64_t l = 0; l < L; ++l) chunk_coords<T>(warp, d.theta + (l * d.B + b) * 6, p0, len, rows[l]);
      for (int64_t j = 0; j < len; j += kLanes) {
        const int64_t n = std::min(kLanes, len - j), p = p0 + j;
        for (int64_t l = 0; l < L; ++l) {
          const int64_t lb = l * d.B + b;
          VecPlaced<T>& q = placed[l];
          q.taps = chunk_taps(warp, rows[l], j, n);
          V canvas(T(0));
          // Pixels outside the sprite read zeros (VecTaps::none_valid: most of the canvas, for small sprites).
          if (q.taps.none_valid()) {
            for (int64_t c = 0; c < C; ++c) col[l * C + c] = V(T(0));
            q.pre = V(T(0));
          } else {
            redirect_invalid_taps(q.taps, sprites[l].trash);
            for (int t = 0; t < 4; ++t) q.taps.weight[t].store(weight[t]);
            for (int64_t c0 = 0; c0 < P; c0 += kPack) {
              packed_read<T, kPack>(q.taps, weight, sprites[l].plane(c0), x_rows);
              for (int64_t k = 0; k < std::min<int64_t>(kPack, P - c0); ++k) {
                const int64_t plane = c0 + k;
                const V value = V::loadu(x_rows[k]);
                if (plane < C) col[l * C + plane] = value;
                else if (plane == C) q.pre = value;
                else canvas = value;
              }
            }
          }
          if (d.noise) {
            q.canvas = canvas;
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
          const auto plane_grad = [&](int64_t plane) {
            return plane < C ? dcol[l * C + plane] : plane == C ? dpre : dcanvas;
          };
          if (grads->dtheta) {
            // bilinear_backward's coordinate gradient, plane by plane in place_pixel_backward_to's order: the
            // colours, the canvas, the mask.
            store_lerp_weights(q.taps, lerp);
            V gix(T(0)), giy(T(0)), x_pre, y_pre, x_canvas, y_canvas;
            for (int64_t c0 = 0; c0 < P; c0 += kPack) {
              packed_coordinate_factors<T, kPack>(q.taps, lerp, sprites[l].plane(c0), x_rows, y_rows);
              for (int64_t k = 0; k < std::min<int64_t>(kPack, P - c0); ++k) {
                const int64_t plane = c0 + k;
                const V fx = V::loadu(x_rows[k]), fy = V::loadu(y_rows[k]);
                if (plane < C) {
                  gix = gix + dcol[l * C + plane] * fx;
                  giy = giy + dcol[l * C + plane] * fy;
                } else if (plane == C) {
                  x_pre = fx;
                  y_pre = fy;
                } else {
                  x_canvas = fx;
                  y_canvas = fy;
                }
              }
            }
            if (d.noise) {
              gix = gix + dcanvas * x_canvas;
              giy = giy + dcanvas * y_canvas;
            }
            gix = gix + dpre * x_pre;
            giy = giy + dpre * y_pre;
            // bilinear_backward skips samples without a valid tap: their coordinate gradient is exactly zero.
            ((gix & q.taps.any_valid) * V::loadu(rows[l].dx_mult + j, n)).store(rows[l].gix + j, n);
            ((giy & q.taps.any_valid) * V::loadu(rows[l].dy_mult + j, n)).store(rows[l].giy + j, n);
          }
          if (!want_dsprites) continue;
          for (int t = 0; t < 4; ++t) q.taps.weight[t].store(weight[t]);
          for (int64_t c0 = 0; c0 < P; c0 += kPack) {
            for (int64_t k = 0; k < std::min<int64_t>(kPack, P - c0); ++k) plane_grad(c0 + k).store(g_rows[k]);
            rows_to_packs<T, kPack>(&g_rows[0][0], &g_packs[0][0]);
            pack_scatter<T, kPack>(q.taps, g_packs, weight, dsprites[l].plane(c0));
          }
        }
      }
      for (int64_t l = 0; l < L && grads && grads->dtheta; ++l) {
        const int64_t lb = l * d.B + b;
        add_matrix_grad<T>(warp, d.theta + lb * 6, p0, len, rows[l].gix, rows[l].giy, grads->dtheta + lb * 6);
      }
    }
  }
  for (int64_t l = 0; l < L && want_dsprites; ++l) {
    unpack_grad<T, kPack>(warp, dsprites[l], grads->dsprites + (l * d.B + b) * S, /*add_into=*/true);
  }
  if (grads != nullptr && grads->docc) {
    for (int64_t jk = 0; jk < L * L; ++jk) grads->docc[jk * d.B + b] = VecPack<T>::sum(docc_sum[jk]);
  }
  return sse;
}

template <typename T>
double vec_render_image(const RenderArgs<T>& d, int64_t b, const RenderGradPointers<T>* grads) {
  return with_pack_width(d.C + d.E, [&](auto pack) {
    return vec_render_image_packed<T, decltype(pack)::value>(d, b, grads);
  });
}

template <typename T>
RenderKernels<T> vec_render_kernels() {
  return {&vec_render_image<T>};
}

}  // namespace CPU_CAPABILITY
}  // namespace dtifast

// Greedy sprite selection on CPU with candidates in sprite space (dtifast/ops/reference.py
// greedy_select_sprites), without any (K, B, C, H, W) tensor.
//
//   dtifast::greedy_select_sprites(x, sprites, theta, occlusion, background, n_iter, penalty, noise, basis)
//     -> (L, K, B)
//   dtifast::greedy_select(x, layers, masks, occlusion, background, n_iter, penalty) -> (L, K, B)
//
// x (B, C, H, W); sprites (L, K, B, C + E, h, w), any strides on the first three dims (an expanded view of
// shared prototypes is read in place); theta (L, B, 6) position matrices; occlusion (L, L, B); background
// (B, C, H, W) or None (black); penalty (K,) or None; noise (K, 1, H, W) or None; basis (W + H,) the affine
// base coordinates of the image (sampling.h grid_point).
//
// For layer l with the other layers fixed, the composite with candidate (c, m) is, per pixel,
//   S0 - m * S1 + A * m * c,  S0 = sum_{k != l} T_k,  S1 = sum_{k != l} o_lk T_k,  A = prod_{j != l} (1 - o_jl m_j)
// (T_k: layer k's visible contribution without layer l; the background counts as a layer with o_l,bg = 1).
// Each candidate is placed once per image and kept, packed over the pixels its layer's placement reaches,
// for every sweep; scoring it is then a vectorised pass over those pixels. Images are independent and each
// is handled by one thread: the result does not depend on the thread count. Memory per thread:
// L * K * (C + 1) floats per reached pixel, at most L * K * (C + 1) * H * W.
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "checks.h"
#include "composite.h"
#include "place.h"

namespace dtifast {
namespace {

// The rows of an (H, W) output that a placed sprite reaches: pixels [lo[i], hi[i]) of row i (lo = hi when
// none). The sampling point is affine in the output pixel, so the pixels with any tap inside the sprite form
// one interval per row; `start[i]` numbers them in row-major order, so that per-candidate values of these
// pixels are stored packed (`count` of them).
struct Footprint {
  std::vector<int64_t> lo, hi, start;
  int64_t count = 0;
};

// The candidates of one layer in one image: candidate k's colour plane c at col + k * col_k + c * plane and
// its mask at mask + k * mask_k, each plane holding the footprint's pixels in order.
template <typename scalar_t>
struct LayerCandidates {
  Footprint fp;
  std::vector<scalar_t> col_store, mask_store;  // owned planes when the candidates were placed here
  const scalar_t *col = nullptr, *mask = nullptr;
  int64_t col_k = 0, mask_k = 0, plane = 0;
};

// Greedy search for one image over candidates already in image space (`place_layer` makes them from
// sprites; the image-space op points at its inputs).
template <typename scalar_t>
struct Greedy {
  int64_t L, K, B, C, H, W, h, w;
  int64_t sl, sk, sb;  // sprite strides of the (L, K, B) dims; each sprite's planes are contiguous
  const scalar_t *x, *sprites, *theta, *occ, *bg, *penalty, *noise, *basis;
  scalar_t* selection;

  const scalar_t* sprite(int64_t l, int64_t k, int64_t b) const { return sprites + l * sl + k * sk + b * sb; }

  // Places every candidate of layer l in image b once for all sweeps: colours (K, C, count) and masks
  // (K, count), packed over the footprint's pixels (outside it every candidate has colour 0 and mask 0).
  void place_layer(int64_t l, int64_t b, LayerCandidates<scalar_t>& lc) const {
    Footprint& fp = lc.fp;
    std::vector<scalar_t>&col = lc.col_store, &mask = lc.mask_store;
    const scalar_t* th = theta + (l * B + b) * 6;
    const int64_t hw = h * w, HW = H * W;
    std::vector<Bilinear<scalar_t>> taps;
    taps.reserve(HW);
    fp.lo.assign(H, 0);
    fp.hi.assign(H, 0);
    fp.start.assign(H, 0);
    fp.count = 0;
    std::vector<Bilinear<scalar_t>> row(W);
    for (int64_t i = 0; i < H; ++i) {
      int64_t lo = W, hi = 0;
      for (int64_t j = 0; j < W; ++j) {
        row[j] = place_taps<scalar_t>(th, basis, h, w, i, j, W);
        if (row[j].any_valid) {
          lo = std::min(lo, j);
          hi = j + 1;
        }
      }
      lo = std::min(lo, hi);
      fp.lo[i] = lo;
      fp.hi[i] = hi;
      fp.start[i] = fp.count;
      fp.count += hi - lo;
      taps.insert(taps.end(), row.begin() + lo, row.begin() + hi);
    }
    const int64_t n = fp.count;
    col.assign(K * C * n, scalar_t(0));
    mask.assign(K * n, scalar_t(0));
    std::vector<scalar_t> c_px(C);
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t* spr = sprite(l, k, b);
      for (int64_t i = 0; i < H; ++i) {
        for (int64_t j = fp.lo[i]; j < fp.hi[i]; ++j) {
          const int64_t q = fp.start[i] + j - fp.lo[i];
          const Placed<scalar_t> pl = place_from_taps<scalar_t>(taps[q], spr, hw, C,
                                                                noise ? noise + k * HW + i * W + j : nullptr, c_px.data());
          mask[k * n + q] = pl.mask;
          for (int64_t c = 0; c < C; ++c) col[(k * C + c) * n + q] = c_px[c];
        }
      }
    }
    lc.col = col.data();
    lc.mask = mask.data();
    lc.col_k = C * n;
    lc.mask_k = n;
    lc.plane = n;
  }

  void search_placed(int64_t b, int64_t n_iter) const {
    std::vector<LayerCandidates<scalar_t>> layers(L);
    for (int64_t l = 0; l < L; ++l) place_layer(l, b, layers[l]);
    search(b, n_iter, layers);
  }

  void search(int64_t b, int64_t n_iter, const std::vector<LayerCandidates<scalar_t>>& layers) const {
    const int64_t HW = H * W;
    const scalar_t* xb = x + b * C * HW;
    const scalar_t* bgb = bg ? bg + b * C * HW : nullptr;
    const scalar_t* ob = occ + b;  // o_jk at ob[(j * L + k) * B]
    // Current choice of every layer in the image (empty: colour 0, mask 0); the per-pixel terms of the
    // decomposition for the layer being chosen (see the file comment).
    std::vector<scalar_t> cur_col(L * C * HW, scalar_t(0)), cur_m(L * HW, scalar_t(0));
    std::vector<scalar_t> s0(C * HW), s1(C * HW), a(HW), t(HW);
    for (int64_t it = 0; it < n_iter; ++it) {
      for (int64_t l = 0; l < L; ++l) {
        // Every loop below runs over contiguous pixels with no branch inside, so the compiler vectorises it.
        std::fill(s0.begin(), s0.end(), scalar_t(0));
        std::fill(s1.begin(), s1.end(), scalar_t(0));
        for (int64_t k = 0; k < L; ++k) {
          if (k == l) continue;
          // t = m_k prod_{j != k, l} (1 - o_jk m_j): layer k's weight with layer l left out.
          std::fill(t.begin(), t.end(), scalar_t(1));
          for (int64_t j = 0; j < L; ++j) {
            if (j == k || j == l) continue;
            const scalar_t o = ob[(j * L + k) * B];
            const scalar_t* mj = cur_m.data() + j * HW;
            for (int64_t p = 0; p < HW; ++p) t[p] *= scalar_t(1) - o * mj[p];
          }
          const scalar_t* mk = cur_m.data() + k * HW;
          const scalar_t o_lk = ob[(l * L + k) * B];
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* ck = cur_col.data() + (k * C + c) * HW;
            scalar_t* s0c = s0.data() + c * HW;
            scalar_t* s1c = s1.data() + c * HW;
            for (int64_t p = 0; p < HW; ++p) {
              const scalar_t v = t[p] * mk[p] * ck[p];
              s0c[p] += v;
              s1c[p] += o_lk * v;
            }
          }
        }
        if (bgb) {  // the background: hidden by every layer, o_l,bg = 1
          std::fill(t.begin(), t.end(), scalar_t(1));
          for (int64_t j = 0; j < L; ++j) {
            if (j == l) continue;
            const scalar_t* mj = cur_m.data() + j * HW;
            for (int64_t p = 0; p < HW; ++p) t[p] *= scalar_t(1) - mj[p];
          }
          for (int64_t c = 0; c < C; ++c) {
            for (int64_t p = 0; p < HW; ++p) {
              const scalar_t v = t[p] * bgb[c * HW + p];
              s0[c * HW + p] += v;
              s1[c * HW + p] += v;
            }
          }
        }
        std::fill(a.begin(), a.end(), scalar_t(1));  // a = prod_{j != l} (1 - o_jl m_j): layer l's visibility
        for (int64_t j = 0; j < L; ++j) {
          if (j == l) continue;
          const scalar_t o = ob[(j * L + l) * B];
          const scalar_t* mj = cur_m.data() + j * HW;
          for (int64_t p = 0; p < HW; ++p) a[p] *= scalar_t(1) - o * mj[p];
        }
        // Outside the footprint every candidate leaves s0: that error is common to all of them.
        const LayerCandidates<scalar_t>& lc = layers[l];
        const Footprint& fp = lc.fp;
        double sse_outside = 0;
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t i = 0; i < H; ++i) {
            const scalar_t* s0r = s0.data() + c * HW + i * W;
            const scalar_t* xr = xb + c * HW + i * W;
            scalar_t acc = 0;
            for (int64_t j = 0; j < fp.lo[i]; ++j) acc += (s0r[j] - xr[j]) * (s0r[j] - xr[j]);
            for (int64_t j = fp.hi[i]; j < W; ++j) acc += (s0r[j] - xr[j]) * (s0r[j] - xr[j]);
            sse_outside += static_cast<double>(acc);
          }
        }
        int64_t best = 0;
        scalar_t best_dist = std::numeric_limits<scalar_t>::infinity();
        for (int64_t k = 0; k < K; ++k) {
          double sse = sse_outside;
          const scalar_t* mk = lc.mask + k * lc.mask_k;
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* ck = lc.col + k * lc.col_k + c * lc.plane;
            for (int64_t i = 0; i < H; ++i) {
              const int64_t lo = fp.lo[i], len = fp.hi[i] - lo, q0 = fp.start[i], p0 = c * HW + i * W + lo;
              const scalar_t *s0r = s0.data() + p0, *s1r = s1.data() + p0, *ar = a.data() + i * W + lo;
              const scalar_t* xr = xb + p0;
              scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
              for (int64_t j = 0; j < len; ++j) {
                const scalar_t m = mk[q0 + j];
                const scalar_t d = s0r[j] - m * s1r[j] + ar[j] * m * ck[q0 + j] - xr[j];
                acc += d * d;
              }
              sse += static_cast<double>(acc);
            }
          }
          scalar_t dist = static_cast<scalar_t>(sse / static_cast<double>(C * HW));
          if (penalty) dist += penalty[k];
          if (dist < best_dist) {  // strict: ties go to the lowest k, as argmin
            best_dist = dist;
            best = k;
          }
        }
        for (int64_t k = 0; k < K; ++k) selection[(l * K + k) * B + b] = k == best ? scalar_t(1) : scalar_t(0);
        scalar_t* ml = cur_m.data() + l * HW;
        std::fill(ml, ml + HW, scalar_t(0));
        std::fill(cur_col.begin() + l * C * HW, cur_col.begin() + (l + 1) * C * HW, scalar_t(0));
        for (int64_t i = 0; i < H; ++i) {
          for (int64_t j = fp.lo[i]; j < fp.hi[i]; ++j) {
            const int64_t q = fp.start[i] + j - fp.lo[i];
            ml[i * W + j] = lc.mask[best * lc.mask_k + q];
            for (int64_t c = 0; c < C; ++c) {
              cur_col[(l * C + c) * HW + i * W + j] = lc.col[best * lc.col_k + c * lc.plane + q];
            }
          }
        }
      }
    }
  }
};

at::Tensor greedy_select_sprites_cpu(const at::Tensor& x_in, const at::Tensor& sprites_in, const at::Tensor& theta_in,
                                     const at::Tensor& occ_in, const std::optional<at::Tensor>& bg_in, int64_t n_iter,
                                     const std::optional<at::Tensor>& penalty_in,
                                     const std::optional<at::Tensor>& noise_in, const at::Tensor& basis_in) {
  check_greedy(x_in, sprites_in, theta_in, occ_in, bg_in, n_iter, penalty_in, noise_in, basis_in, at::kCPU);
  const int64_t L = sprites_in.size(0), K = sprites_in.size(1), B = x_in.size(0), C = x_in.size(1);
  const int64_t H = x_in.size(2), W = x_in.size(3);
  const int64_t h = sprites_in.size(4), w = sprites_in.size(5);
  // Expanded (stride-0) candidate dims are read in place; only sprites whose own planes are not
  // contiguous are copied.
  const bool planes_contiguous = sprites_in.stride(5) == 1 && sprites_in.stride(4) == w &&
                                 sprites_in.stride(3) == h * w;
  const at::Tensor sprites = planes_contiguous ? sprites_in : sprites_in.contiguous();
  const at::Tensor x = x_in.contiguous(), theta = theta_in.contiguous(), occ = occ_in.contiguous(),
                   basis = basis_in.contiguous();
  at::Tensor bg_holder, penalty_holder, noise_holder;
  at::Tensor selection = at::zeros({L, K, B}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "greedy_select_sprites_cpu", [&] {
    const Greedy<scalar_t> g{L, K, B, C, H, W, h, w, sprites.stride(0), sprites.stride(1), sprites.stride(2),
                             x.const_data_ptr<scalar_t>(), sprites.const_data_ptr<scalar_t>(),
                             theta.const_data_ptr<scalar_t>(), occ.const_data_ptr<scalar_t>(),
                             optional_ptr<scalar_t>(bg_in, bg_holder),
                             optional_ptr<scalar_t>(penalty_in, penalty_holder),
                             optional_ptr<scalar_t>(noise_in, noise_holder), basis.const_data_ptr<scalar_t>(),
                             selection.mutable_data_ptr<scalar_t>()};
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) g.search_placed(b, n_iter);
    });
  });
  return selection;
}

// Image-space candidates (dtifast/ops/reference.py greedy_select): layers (L, K, B, C, H, W) and masks
// (L, K, B, 1, H, W); every pixel is in each layer's footprint.
at::Tensor greedy_select_images_cpu(const at::Tensor& x_in, const at::Tensor& layers_in, const at::Tensor& masks_in,
                                    const at::Tensor& occ_in, const std::optional<at::Tensor>& bg_in, int64_t n_iter,
                                    const std::optional<at::Tensor>& penalty_in) {
  check_greedy_layers(x_in, layers_in, masks_in, occ_in, bg_in, n_iter, penalty_in, at::kCPU);
  const int64_t L = layers_in.size(0), K = layers_in.size(1), B = x_in.size(0), C = x_in.size(1);
  const int64_t H = x_in.size(2), W = x_in.size(3), HW = H * W;
  const at::Tensor x = x_in.contiguous(), layers = layers_in.contiguous(), masks = masks_in.contiguous();
  const at::Tensor occ = occ_in.contiguous();
  at::Tensor bg_holder, penalty_holder;
  at::Tensor selection = at::zeros({L, K, B}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "greedy_select_images_cpu", [&] {
    const Greedy<scalar_t> g{L, K, B, C, H, W, 0, 0, 0, 0, 0, x.const_data_ptr<scalar_t>(), nullptr, nullptr,
                             occ.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(bg_in, bg_holder),
                             optional_ptr<scalar_t>(penalty_in, penalty_holder), nullptr, nullptr,
                             selection.mutable_data_ptr<scalar_t>()};
    const scalar_t* col = layers.const_data_ptr<scalar_t>();
    const scalar_t* mask = masks.const_data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        std::vector<LayerCandidates<scalar_t>> cands(L);
        for (int64_t l = 0; l < L; ++l) {
          LayerCandidates<scalar_t>& lc = cands[l];
          lc.fp.lo.assign(H, 0);
          lc.fp.hi.assign(H, W);
          lc.fp.start.resize(H);
          for (int64_t i = 0; i < H; ++i) lc.fp.start[i] = i * W;
          lc.fp.count = HW;
          lc.col = col + (l * K * B + b) * C * HW;
          lc.col_k = B * C * HW;
          lc.mask = mask + (l * K * B + b) * HW;
          lc.mask_k = B * HW;
          lc.plane = HW;
        }
        g.search(b, n_iter, cands);
      }
    });
  });
  return selection;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dtifast, m) {
  m.def(
      "greedy_select(Tensor x, Tensor layers, Tensor masks, Tensor occlusion, Tensor? background, int n_iter, "
      "Tensor? empty_penalty) -> Tensor");
  m.def(
      "greedy_select_sprites(Tensor x, Tensor sprites, Tensor theta, Tensor occlusion, Tensor? background, "
      "int n_iter, Tensor? empty_penalty, Tensor? noise, Tensor basis) -> Tensor");
}

TORCH_LIBRARY_IMPL(dtifast, CPU, m) {
  m.impl("greedy_select", &greedy_select_images_cpu);
  m.impl("greedy_select_sprites", &greedy_select_sprites_cpu);
}

}  // namespace dtifast

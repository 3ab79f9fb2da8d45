// Greedy sprite selection on CPU with candidates in sprite space (dtifast/ops/reference.py
// greedy_select_sprites), without any (K, B, C, H, W) tensor.
//
//   dtifast::greedy_select(x, sprites, theta, occlusion, background, n_iter, penalty, noise) -> (L, K, B)
//
// x (B, C, H, W); sprites (L, K, B, C + E, h, w), any strides on the first three dims (an expanded view of
// shared prototypes is read in place); theta (L, B, 6) position matrices; occlusion (L, L, B); background
// (B, C, H, W) or None (black); penalty (K,) or None; noise (K, 1, H, W) or None.
//
// For layer l with the other layers fixed, the composite with candidate (c, m) is, per pixel,
//   S0 - m * S1 + A * m * c,  S0 = sum_{k != l} T_k,  S1 = sum_{k != l} o_lk T_k,  A = prod_{j != l} (1 - o_jl m_j)
// (T_k: layer k's visible contribution without layer l; the background counts as a layer with o_l,bg = 1), so
// scoring a candidate is one sampling pass over the image. Images are independent and each is handled by one
// thread: the result does not depend on the thread count.
#include <torch/library.h>

#include <limits>

#include "checks.h"
#include "composite.h"
#include "place.h"

namespace dtifast {
namespace {

template <typename scalar_t>
struct Greedy {
  int64_t L, K, B, C, H, W, h, w;
  int64_t sl, sk, sb;  // sprite strides of the (L, K, B) dims; each sprite's planes are contiguous
  const scalar_t *x, *sprites, *theta, *occ, *bg, *penalty, *noise;
  scalar_t* selection;

  const scalar_t* sprite(int64_t l, int64_t k, int64_t b) const { return sprites + l * sl + k * sk + b * sb; }

  void image(int64_t b, int64_t n_iter) const {
    const int64_t HW = H * W, hw = h * w;
    // Current choice of every layer, placed in the image (empty: colour 0, mask 0).
    std::vector<scalar_t> cur_col(L * C * HW, scalar_t(0)), cur_m(L * HW, scalar_t(0));
    std::vector<scalar_t> s0(C * HW), s1(C * HW), a(HW), col(C);
    std::vector<Bilinear<scalar_t>> taps(HW);
    std::vector<int64_t> active;
    active.reserve(HW);
    const scalar_t* xb = x + b * C * HW;
    const scalar_t* bgb = bg ? bg + b * C * HW : nullptr;
    const scalar_t* ob = occ + b;
    scalar_t m[kMaxLayers];
    for (int64_t it = 0; it < n_iter; ++it) {
      for (int64_t l = 0; l < L; ++l) {
        for (int64_t p = 0; p < HW; ++p) {
          for (int64_t j = 0; j < L; ++j) m[j] = cur_m[j * HW + p];
          const int li = static_cast<int>(l), Li = static_cast<int>(L);
          for (int64_t c = 0; c < C; ++c) s0[c * HW + p] = s1[c * HW + p] = scalar_t(0);
          for (int k = 0; k < Li; ++k) {
            if (k == li) continue;
            const scalar_t t = visibility<scalar_t>(ob, B, m, Li, k, li) * m[k];
            const scalar_t o = ob[(l * L + k) * B];
            for (int64_t c = 0; c < C; ++c) {
              const scalar_t v = t * cur_col[(k * C + c) * HW + p];
              s0[c * HW + p] += v;
              s1[c * HW + p] += o * v;
            }
          }
          if (bgb) {
            const scalar_t t = background_visibility<scalar_t>(m, Li, li);
            for (int64_t c = 0; c < C; ++c) {
              s0[c * HW + p] += t * bgb[c * HW + p];
              s1[c * HW + p] += t * bgb[c * HW + p];
            }
          }
          a[p] = visibility<scalar_t>(ob, B, m, Li, li, -1);
        }
        // Every candidate of layer l in image b shares the placement: its taps are computed once. Pixels
        // outside the placed sprite see colour 0 and mask 0 for every candidate; their error is summed once.
        const scalar_t* th = theta + (l * B + b) * 6;
        active.clear();
        double sse_outside = 0;
        for (int64_t i = 0; i < H; ++i) {
          for (int64_t j = 0; j < W; ++j) {
            const int64_t p = i * W + j;
            taps[p] = place_taps<scalar_t>(th, h, w, i, j, H, W);
            if (taps[p].any_valid) {
              active.push_back(p);
              continue;
            }
            for (int64_t c = 0; c < C; ++c) {
              const double diff = static_cast<double>(s0[c * HW + p] - xb[c * HW + p]);
              sse_outside += diff * diff;
            }
          }
        }
        int64_t best = 0;
        scalar_t best_dist = std::numeric_limits<scalar_t>::infinity();
        for (int64_t k = 0; k < K; ++k) {
          double sse = sse_outside;
          const scalar_t* spr = sprite(l, k, b);
          for (const int64_t p : active) {
            const Placed<scalar_t> pl =
                place_from_taps<scalar_t>(taps[p], spr, hw, C, noise ? noise + k * HW + p : nullptr, col.data());
            for (int64_t c = 0; c < C; ++c) {
              const scalar_t out = s0[c * HW + p] - pl.mask * s1[c * HW + p] + a[p] * pl.mask * col[c];
              const double diff = static_cast<double>(out - xb[c * HW + p]);
              sse += diff * diff;
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
        const scalar_t* spr = sprite(l, best, b);
        for (int64_t p = 0; p < HW; ++p) {
          const Placed<scalar_t> pl = place_from_taps<scalar_t>(taps[p], spr, hw, C,
                                                                noise ? noise + best * HW + p : nullptr, col.data());
          cur_m[l * HW + p] = pl.mask;
          for (int64_t c = 0; c < C; ++c) cur_col[(l * C + c) * HW + p] = col[c];
        }
      }
    }
  }
};

at::Tensor greedy_select_cpu(const at::Tensor& x_in, const at::Tensor& sprites_in, const at::Tensor& theta_in,
                             const at::Tensor& occ_in, const std::optional<at::Tensor>& bg_in, int64_t n_iter,
                             const std::optional<at::Tensor>& penalty_in, const std::optional<at::Tensor>& noise_in) {
  check_greedy(x_in, sprites_in, theta_in, occ_in, bg_in, n_iter, penalty_in, noise_in, at::kCPU);
  const int64_t L = sprites_in.size(0), K = sprites_in.size(1), B = x_in.size(0), C = x_in.size(1);
  const int64_t H = x_in.size(2), W = x_in.size(3);
  const int64_t h = sprites_in.size(4), w = sprites_in.size(5);
  // Expanded (stride-0) candidate dims are read in place; only sprites whose own planes are not
  // contiguous are copied.
  const bool planes_contiguous = sprites_in.stride(5) == 1 && sprites_in.stride(4) == w &&
                                 sprites_in.stride(3) == h * w;
  const at::Tensor sprites = planes_contiguous ? sprites_in : sprites_in.contiguous();
  const at::Tensor x = x_in.contiguous(), theta = theta_in.contiguous(), occ = occ_in.contiguous();
  at::Tensor bg_holder, penalty_holder, noise_holder;
  at::Tensor selection = at::zeros({L, K, B}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "greedy_select_cpu", [&] {
    const Greedy<scalar_t> g{L, K, B, C, H, W, h, w, sprites.stride(0), sprites.stride(1), sprites.stride(2),
                             x.const_data_ptr<scalar_t>(), sprites.const_data_ptr<scalar_t>(),
                             theta.const_data_ptr<scalar_t>(), occ.const_data_ptr<scalar_t>(),
                             optional_ptr<scalar_t>(bg_in, bg_holder),
                             optional_ptr<scalar_t>(penalty_in, penalty_holder),
                             optional_ptr<scalar_t>(noise_in, noise_holder), selection.mutable_data_ptr<scalar_t>()};
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) g.image(b, n_iter);
    });
  });
  return selection;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dtifast, m) {
  m.def(
      "greedy_select(Tensor x, Tensor sprites, Tensor theta, Tensor occlusion, Tensor? background, int n_iter, "
      "Tensor? penalty, Tensor? noise) -> Tensor");
}

TORCH_LIBRARY_IMPL(dtifast, CPU, m) { m.impl("greedy_select", &greedy_select_cpu); }

}  // namespace dtifast

// Per-pixel occlusion compositing, forward and backward, shared by the compositing, render-loss and
// greedy kernels on CPU and CUDA (raw pointers, no ATen; see sampling.h for DTIFAST_HD).
//
//   out_c = sum_k vis_k m_k x_kc + vis_bg bg_c,   vis_k = prod_{j != k} (1 - o_jk m_j),   vis_bg = prod_j (1 - m_j)
//
// (dtifast/ops/reference.py composite_layers: the background has mask 1, is hidden by every layer and hides
// none.) For one pixel of one image: m[L] the layer masks; layer l's channel c at xs[l * ls + c * cs]; the
// occlusion o_jk at occ[(j * L + k) * os]; bg (channel c at bg[c * bs]) may be null for no background.
// Products are formed without division, so a fully opaque layer (1 - o m = 0) has exact gradients.
#pragma once

#include <type_traits>

#include "sampling.h"

namespace dtifast {

constexpr int kMaxLayers = 16;

// Runs f(std::integral_constant<int, N>()) for the smallest layer bound N in {1, 2, 4, 8, kMaxLayers} that
// holds L and is at least kMin: the per-pixel functions below size their arrays by N, so that a CUDA
// thread's stack grows with L, and so that the CPU vector kernels, whose arrays hold at::vec::Vectorized
// (zeroed by its default constructor), do not zero 20 KB of stack per vector of pixels whatever L, as
// composite_backward did with N = kMaxLayers. Every bound is one more instantiation of the caller (compile
// time); callers whose N = 1 variant would gain little start at kMin = 2. Host code (it picks the kernel).
template <int kMin = 1, typename F>
void with_layer_bound(int L, F&& f) {
  static_assert(kMaxLayers == 16 && (kMin == 1 || kMin == 2), "update the bounds");
  if constexpr (kMin == 1) {
    if (L <= 1) return f(std::integral_constant<int, 1>());
  }
  if (L <= 2) return f(std::integral_constant<int, 2>());
  if (L <= 4) return f(std::integral_constant<int, 4>());
  if (L <= 8) return f(std::integral_constant<int, 8>());
  return f(std::integral_constant<int, kMaxLayers>());
}

// prod_{j != k, j != skip} (1 - o_jk m_j); skip = -1 leaves only k out.
template <typename T>
DTIFAST_HD T visibility(const T* occ, int64_t os, const T* m, int L, int k, int skip) {
  T v = T(1);
  for (int j = 0; j < L; ++j) {
    if (j != k && j != skip) v *= T(1) - occ[(j * L + k) * os] * m[j];
  }
  return v;
}

// prod_{j != skip} (1 - m_j): the background's visibility.
template <typename T>
DTIFAST_HD T background_visibility(const T* m, int L, int skip) {
  T v = T(1);
  for (int j = 0; j < L; ++j) {
    if (j != skip) v *= T(1) - m[j];
  }
  return v;
}

// Every channel of one pixel: out[c * out_s]. The layer weights vis_k m_k are computed once per pixel.
// N >= L bounds the per-pixel arrays (the kernels pick the smallest that holds L, with_layer_bound).
template <typename T, int N = kMaxLayers>
DTIFAST_HD void composite_pixel(const T* occ, int64_t os, const T* m, const T* xs, int64_t ls, int64_t cs,
                                const T* bg, int64_t bs, int L, int64_t C, T* out, int64_t out_s) {
  T wt[N];
  for (int k = 0; k < L; ++k) wt[k] = visibility(occ, os, m, L, k, -1) * m[k];
  const T wb = bg != nullptr ? background_visibility(m, L, -1) : T(0);
  for (int64_t c = 0; c < C; ++c) {
    T acc = T(0);
    for (int k = 0; k < L; ++k) acc += wt[k] * xs[k * ls + c * cs];
    if (bg != nullptr) acc += wb * bg[c * bs];
    out[c * out_s] = acc;
  }
}

// excl[k] = prod_{j != k} f[j] for the L factors f, by prefix and suffix products (no division, so a
// factor of exactly 0 is handled); returns the product of all factors.
template <typename T>
DTIFAST_HD T products_excluding_one(const T* f, int L, T* excl) {
  T prefix = T(1);
  for (int k = 0; k < L; ++k) {
    excl[k] = prefix;
    prefix *= f[k];
  }
  T suffix = T(1);
  for (int k = L - 1; k >= 0; --k) {
    excl[k] *= suffix;
    suffix *= f[k];
  }
  return prefix;
}

// Backward of one pixel for upstream gradient g (channel c at g[c * gs]):
//   dm[L]     gradient of the masks (written);
//   dxs       gradient of the layer colours, same layout as xs (added; null: not wanted);
//   docc      gradient of o_jk at docc[j * L + k] (added; null: not wanted); the diagonal gets nothing;
//   dbg       gradient of the background, layout of bg (added; null: not wanted).
// For each layer l the factors f_j = 1 - o_jl m_j (f_l = 1) give vis_l and, for every j, vis_l without
// f_j in O(L): O(L^2) per pixel in all. N >= L bounds the per-pixel arrays, as in composite_pixel.
template <typename T, int N = kMaxLayers>
DTIFAST_HD void composite_backward(const T* occ, int64_t os, const T* m, const T* xs, int64_t ls, int64_t cs,
                                   const T* bg, int64_t bs, int L, int64_t C, const T* g, int64_t gs, T* dm,
                                   T* dxs, T* docc, T* dbg) {
  T f[N];
  T excl[N * N];  // excl[l * L + j]: prod_{i != l, j} (1 - o_il m_i)
  T ma[N];        // m_l * sum_c g_c x_lc: the gradient of vis_l
  T vis[N];
  for (int l = 0; l < L; ++l) {
    for (int j = 0; j < L; ++j) f[j] = j == l ? T(1) : T(1) - occ[(j * L + l) * os] * m[j];
    vis[l] = products_excluding_one(f, L, excl + l * L);
    T s = T(0);
    for (int64_t c = 0; c < C; ++c) s += g[c * gs] * xs[l * ls + c * cs];
    ma[l] = m[l] * s;
    if (dxs != nullptr) {
      const T wt = vis[l] * m[l];
      for (int64_t c = 0; c < C; ++c) dxs[l * ls + c * cs] += g[c * gs] * wt;
    }
    dm[l] = vis[l] * s;  // layer l's own term; the occlusion terms follow
  }
  if (bg != nullptr) {
    T a_bg = T(0);
    for (int64_t c = 0; c < C; ++c) a_bg += g[c * gs] * bg[c * bs];
    for (int j = 0; j < L; ++j) f[j] = T(1) - m[j];
    T excl_bg[N];
    const T vis_bg = products_excluding_one(f, L, excl_bg);
    for (int k = 0; k < L; ++k) dm[k] -= a_bg * excl_bg[k];
    if (dbg != nullptr) {
      for (int64_t c = 0; c < C; ++c) dbg[c * bs] += g[c * gs] * vis_bg;
    }
  }
  for (int k = 0; k < L; ++k) {
    for (int l = 0; l < L; ++l) {
      if (l == k) continue;
      // Layer k hides layer l: d vis_l / d m_k = -o_kl prod_{j != l, k} (1 - o_jl m_j).
      dm[k] -= occ[(k * L + l) * os] * ma[l] * excl[l * L + k];
      if (docc != nullptr) docc[k * L + l] -= ma[l] * m[k] * excl[l * L + k];
    }
  }
}

}  // namespace dtifast

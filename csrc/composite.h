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

#include "sampling.h"

namespace dtifast {

constexpr int kMaxLayers = 16;

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

template <typename T>
DTIFAST_HD T composite_channel(const T* occ, int64_t os, const T* m, const T* xs, int64_t ls, int64_t cs,
                               const T* bg, int64_t bs, int L, int64_t c) {
  T acc = T(0);
  for (int k = 0; k < L; ++k) acc += visibility(occ, os, m, L, k, -1) * m[k] * xs[k * ls + c * cs];
  if (bg != nullptr) acc += background_visibility(m, L, -1) * bg[c * bs];
  return acc;
}

// Backward of one pixel for upstream gradient g (channel c at g[c * gs]):
//   dm[L]     gradient of the masks (written);
//   dxs       gradient of the layer colours, same layout as xs (added; null: not wanted);
//   docc      gradient of o_jk at docc[j * L + k] (added; null: not wanted); the diagonal gets nothing;
//   dbg       gradient of the background, layout of bg (added; null: not wanted).
template <typename T>
DTIFAST_HD void composite_backward(const T* occ, int64_t os, const T* m, const T* xs, int64_t ls, int64_t cs,
                                   const T* bg, int64_t bs, int L, int64_t C, const T* g, int64_t gs, T* dm,
                                   T* dxs, T* docc, T* dbg) {
  T a[kMaxLayers];  // a_l = m_l * sum_c g_c x_lc: d out / d vis_l, projected on g
  T vis[kMaxLayers];
  for (int l = 0; l < L; ++l) {
    T s = T(0);
    for (int64_t c = 0; c < C; ++c) s += g[c * gs] * xs[l * ls + c * cs];
    vis[l] = visibility(occ, os, m, L, l, -1);
    a[l] = s;
    if (dxs != nullptr) {
      const T f = vis[l] * m[l];
      for (int64_t c = 0; c < C; ++c) dxs[l * ls + c * cs] += g[c * gs] * f;
    }
  }
  T a_bg = T(0);
  if (bg != nullptr) {
    for (int64_t c = 0; c < C; ++c) a_bg += g[c * gs] * bg[c * bs];
    if (dbg != nullptr) {
      const T vb = background_visibility(m, L, -1);
      for (int64_t c = 0; c < C; ++c) dbg[c * bs] += g[c * gs] * vb;
    }
  }
  for (int k = 0; k < L; ++k) {
    // Layer k's own term, then k hiding every other layer l and the background.
    T d = vis[k] * a[k];
    for (int l = 0; l < L; ++l) {
      if (l == k) continue;
      const T o = occ[(k * L + l) * os];
      if (o != T(0)) d -= o * m[l] * a[l] * visibility(occ, os, m, L, l, k);
    }
    if (bg != nullptr) d -= a_bg * background_visibility(m, L, k);
    dm[k] = d;
    if (docc != nullptr) {
      const T ak = m[k] * a[k];
      for (int j = 0; j < L; ++j) {
        if (j != k) docc[j * L + k] -= ak * m[j] * visibility(occ, os, m, L, k, j);
      }
    }
  }
}

}  // namespace dtifast

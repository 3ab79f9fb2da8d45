// The CPU compositing kernels (composite_layers, composite_candidates, candidate_distances), written once
// for a "pack" of pixels: ScalarPack (one pixel, the reference path, csrc/composite.cpp) or VecPack
// (Vec<T>::size() pixels of a row, csrc/composite_simd.h, compiled per instruction set in csrc/x86/). The
// per-pixel math is composite.h's, shared with the CUDA kernels, applied to packs: a lane per pixel.
//
// Each kernel handles pixels [p0, p1) of image b and writes (never adds) every gradient of those pixels,
// except the occlusion gradient: its per-pixel terms are summed in pixel order per lane, then over the lanes,
// and added into `docc` (L * L values), so a fixed split of the pixels gives the same sums on any number of
// threads. Lanes past p1 load zeros: mask 0 and gradient 0 give them no share of any sum.
//
// No ATen here: the per-instruction-set files include this after their target pragma, so its templates
// take that target (a pack of Vectorized only compiles so), while composite.cpp instantiates ScalarPack only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <new>

#include "composite.h"
#include "cpu_capability.h"

namespace dtifast {

// composite_layers: layers (L, B, C, HW), masks (L, B, HW), occ (L, L, B), bg (B, C, HW) or null.
template <typename T>
struct CompositeArgs {
  const T* layers;
  const T* masks;
  const T* occ;
  const T* bg;
  int64_t L, B, C, HW;
};

// composite_candidates and candidate_distances: layers (K, B, C, HW), masks (K, B, HW), bgs (M, B, C, HW)
// or null (then M = 1, a black background); candidate m * K + k. Layer (k, b) starts at k * lk + b * lb and
// mask (k, b) at k * mk + b * mb (views of a larger sprite tensor are read in place); everything else,
// gradients included, is contiguous.
template <typename T>
struct CandidateArgs {
  const T* layers;
  const T* masks;
  const T* bgs;
  int64_t K, M, B, C, HW;
  int64_t lk, lb, mk, mb;

  const T* layer(int64_t k, int64_t b) const { return layers + k * lk + b * lb; }
  const T* mask(int64_t k, int64_t b) const { return masks + k * mk + b * mb; }
};

template <typename T>
struct CompositeKernels {
  void (*layers_forward)(const CompositeArgs<T>& a, int64_t b, int64_t p0, int64_t p1, T* out);
  // Gradients in the inputs' layouts (null: not wanted); docc: L * L values, added.
  void (*layers_backward)(const CompositeArgs<T>& a, const T* grad, int64_t b, int64_t p0, int64_t p1,
                          T* dlayers, T* dmasks, T* docc, T* dbg);
  void (*candidates_forward)(const CandidateArgs<T>& a, int64_t b, int64_t p0, int64_t p1, T* out);
  void (*candidates_backward)(const CandidateArgs<T>& a, const T* grad, int64_t b, int64_t p0, int64_t p1,
                              T* dlayers, T* dmasks, T* dbgs);
  // Adds every candidate's sum of squared errors against x (B, C, HW) over the pixels into sse (M * K).
  void (*distances_forward)(const CandidateArgs<T>& a, const T* x, int64_t b, int64_t p0, int64_t p1, T* sse);
  // grad (B, M * K) of the distances sse / (C * HW) (scale = 1 / (C * HW)); writes the pixels' gradients.
  void (*distances_backward)(const CandidateArgs<T>& a, const T* x, const T* grad, T scale, int64_t b, int64_t p0,
                             int64_t p1, T* dlayers, T* dmasks, T* dbgs, T* dx);
};

// n packs on the heap, aligned for V (std::vector's allocator does not align a Vectorized of 32 or 64 bytes).
// Left uninitialised: the kernels assign every element before reading it.
template <typename V>
class PackArray {
 public:
  explicit PackArray(int64_t n)
      : data_(static_cast<V*>(::operator new(sizeof(V) * std::max<int64_t>(n, 1), std::align_val_t(alignof(V))))) {}
  ~PackArray() { ::operator delete(data_, std::align_val_t(alignof(V))); }
  PackArray(const PackArray&) = delete;
  PackArray& operator=(const PackArray&) = delete;
  V* data() { return data_; }
  V& operator[](int64_t i) { return data_[i]; }

 private:
  V* data_;
};

// One pixel at a time: the reference path.
template <typename Scalar>
struct ScalarPack {
  using T = Scalar;
  using V = Scalar;
  static constexpr int64_t kLanes = 1;
  static V load(const T* p, int64_t) { return *p; }
  static void store(T* p, const V& v, int64_t) { *p = v; }
  static T sum(const V& v) { return v; }
};

template <typename Pack>
void pack_composite_forward(const CompositeArgs<typename Pack::T>& a, int64_t b, int64_t p0, int64_t p1,
                            typename Pack::T* out) {
  using V = typename Pack::V;
  const int64_t L = a.L, C = a.C, HW = a.HW, B = a.B;
  // Per pixel pack: the masks, the L * C layer colours and the C background and output channels (the
  // channel count is not bounded, hence the heap; one allocation per call).
  V occ[kMaxLayers * kMaxLayers], m[kMaxLayers];
  PackArray<V> x(L * C), bg(C), o(C);
  for (int64_t jk = 0; jk < L * L; ++jk) occ[jk] = V(a.occ[jk * B + b]);
  with_layer_bound<2>(static_cast<int>(L), [&](auto bound) {
    for (int64_t p = p0; p < p1; p += Pack::kLanes) {
      const int64_t n = std::min<int64_t>(Pack::kLanes, p1 - p);
      for (int64_t l = 0; l < L; ++l) {
        m[l] = Pack::load(a.masks + (l * B + b) * HW + p, n);
        for (int64_t c = 0; c < C; ++c) x[l * C + c] = Pack::load(a.layers + ((l * B + b) * C + c) * HW + p, n);
      }
      for (int64_t c = 0; c < C && a.bg; ++c) bg[c] = Pack::load(a.bg + (b * C + c) * HW + p, n);
      composite_pixel<V, decltype(bound)::value>(occ, 1, m, x.data(), C, 1, a.bg ? bg.data() : nullptr, 1,
                                                 static_cast<int>(L), C, o.data(), 1);
      for (int64_t c = 0; c < C; ++c) Pack::store(out + (b * C + c) * HW + p, o[c], n);
    }
  });
}

template <typename Pack>
void pack_composite_backward(const CompositeArgs<typename Pack::T>& a, const typename Pack::T* grad, int64_t b,
                             int64_t p0, int64_t p1, typename Pack::T* dlayers, typename Pack::T* dmasks,
                             typename Pack::T* docc, typename Pack::T* dbg) {
  using T = typename Pack::T;
  using V = typename Pack::V;
  const int64_t L = a.L, C = a.C, HW = a.HW, B = a.B;
  V occ[kMaxLayers * kMaxLayers], docc_sum[kMaxLayers * kMaxLayers];
  V m[kMaxLayers], dm[kMaxLayers];
  PackArray<V> x(L * C), dx(L * C), bg(C), dbg_px(C), g(C);
  for (int64_t jk = 0; jk < L * L; ++jk) {
    occ[jk] = V(a.occ[jk * B + b]);
    docc_sum[jk] = V(T(0));
  }
  with_layer_bound<2>(static_cast<int>(L), [&](auto bound) {
    for (int64_t p = p0; p < p1; p += Pack::kLanes) {
      const int64_t n = std::min<int64_t>(Pack::kLanes, p1 - p);
      for (int64_t l = 0; l < L; ++l) {
        m[l] = Pack::load(a.masks + (l * B + b) * HW + p, n);
        for (int64_t c = 0; c < C; ++c) {
          x[l * C + c] = Pack::load(a.layers + ((l * B + b) * C + c) * HW + p, n);
          dx[l * C + c] = V(T(0));
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        g[c] = Pack::load(grad + (b * C + c) * HW + p, n);
        if (a.bg) bg[c] = Pack::load(a.bg + (b * C + c) * HW + p, n);
        dbg_px[c] = V(T(0));
      }
      composite_backward<V, decltype(bound)::value>(occ, 1, m, x.data(), C, 1, a.bg ? bg.data() : nullptr, 1,
                                                    static_cast<int>(L), C, g.data(), 1, dm,
                                                    dlayers ? dx.data() : nullptr, docc ? docc_sum : nullptr,
                                                    dbg && a.bg ? dbg_px.data() : nullptr);
      for (int64_t l = 0; l < L; ++l) {
        if (dmasks) Pack::store(dmasks + (l * B + b) * HW + p, dm[l], n);
        for (int64_t c = 0; c < C && dlayers; ++c) {
          Pack::store(dlayers + ((l * B + b) * C + c) * HW + p, dx[l * C + c], n);
        }
      }
      for (int64_t c = 0; c < C && dbg && a.bg; ++c) Pack::store(dbg + (b * C + c) * HW + p, dbg_px[c], n);
    }
  });
  for (int64_t jk = 0; jk < L * L && docc; ++jk) docc[jk] += Pack::sum(docc_sum[jk]);
}

// out_{m K + k} = (1 - m_k) bg_m + m_k x_k (dtifast/ops/reference.py composite_candidates, same order of
// operations); m_k x_k without backgrounds.
// The candidate kernels run over one plane (a layer's channel, a mask) at a time, pixels innermost: a few
// streams at once, where a pixel-outer loop read and wrote K (C + 1) + M C planes side by side, too many
// streams for the prefetchers once the planes are not in the caches (the single-object models' candidates
// come from the warps, which have just moved other data through them).
template <typename Pack>
void pack_candidates_forward(const CandidateArgs<typename Pack::T>& a, int64_t b, int64_t p0, int64_t p1,
                             typename Pack::T* out) {
  using T = typename Pack::T;
  using V = typename Pack::V;
  const int64_t K = a.K, M = a.M, B = a.B, C = a.C, HW = a.HW;
  for (int64_t k = 0; k < K; ++k) {
    const T* mask = a.mask(k, b);
    for (int64_t c = 0; c < C; ++c) {
      const T* x = a.layer(k, b) + c * HW;
      T* o = out + ((b * M * K + k) * C + c) * HW;  // background mi's candidate at o + mi K C HW
      for (int64_t p = p0; p < p1; p += Pack::kLanes) {
        const int64_t n = std::min<int64_t>(Pack::kLanes, p1 - p);
        // m_k x_k and 1 - m_k once for all the backgrounds.
        const V mk = Pack::load(mask + p, n), fg = mk * Pack::load(x + p, n), rest = V(T(1)) - mk;
        for (int64_t mi = 0; mi < M; ++mi) {
          const T* bg = a.bgs ? a.bgs + ((mi * B + b) * C + c) * HW : nullptr;
          Pack::store(o + mi * K * C * HW + p, bg ? rest * Pack::load(bg + p, n) + fg : fg, n);
        }
      }
    }
  }
}

// d x_k = m_k sum_m g_mk; d m_k = sum_c (x_k sum_m g_mk - sum_m g_mk bg_m); d bg_m = sum_k g_mk (1 - m_k).
// The sums over c (d m_k) and k (d bg_m) are kept in the gradients themselves, started from zero, so each
// is summed in the same order as in one register.
template <typename Pack>
void pack_candidates_backward(const CandidateArgs<typename Pack::T>& a, const typename Pack::T* grad, int64_t b,
                              int64_t p0, int64_t p1, typename Pack::T* dlayers, typename Pack::T* dmasks,
                              typename Pack::T* dbgs) {
  using T = typename Pack::T;
  using V = typename Pack::V;
  const int64_t K = a.K, M = a.M, B = a.B, C = a.C, HW = a.HW;
  const bool want_dbgs = dbgs && a.bgs;
  for (int64_t k = 0; k < K; ++k) {
    const T* mask = a.mask(k, b);
    T* dm = dmasks ? dmasks + (k * B + b) * HW : nullptr;
    for (int64_t c = 0; c < C; ++c) {
      const T* x = a.layer(k, b) + c * HW;
      T* dx = dlayers ? dlayers + ((k * B + b) * C + c) * HW : nullptr;
      for (int64_t p = p0; p < p1; p += Pack::kLanes) {
        const int64_t n = std::min<int64_t>(Pack::kLanes, p1 - p);
        const V mk = Pack::load(mask + p, n);
        V gsum(T(0)), gbg(T(0));
        for (int64_t mi = 0; mi < M; ++mi) {
          const V g = Pack::load(grad + ((b * M * K + mi * K + k) * C + c) * HW + p, n);
          gsum += g;
          if (a.bgs) gbg += g * Pack::load(a.bgs + ((mi * B + b) * C + c) * HW + p, n);
          if (want_dbgs) {
            T* d = dbgs + ((mi * B + b) * C + c) * HW + p;
            Pack::store(d, (k == 0 ? V(T(0)) : Pack::load(d, n)) + g * (V(T(1)) - mk), n);
          }
        }
        if (dx) Pack::store(dx + p, mk * gsum, n);
        const V term = Pack::load(x + p, n) * gsum - gbg;
        if (dm) Pack::store(dm + p, (c == 0 ? V(T(0)) : Pack::load(dm + p, n)) + term, n);
      }
    }
  }
}

// Per candidate sum over the pixels of (out_mk - x)^2, out_mk as in pack_candidates_forward; summed per lane
// in pixel order (channels in order within a pixel), then over the lanes. One sprite k at a time, so that the
// pixel loop reads its planes and the image's rather than every sprite's at once.
template <typename Pack>
void pack_distances_forward(const CandidateArgs<typename Pack::T>& a, const typename Pack::T* x, int64_t b,
                            int64_t p0, int64_t p1, typename Pack::T* sse) {
  using T = typename Pack::T;
  using V = typename Pack::V;
  const int64_t K = a.K, M = a.M, C = a.C, HW = a.HW;
  PackArray<V> acc(M);
  for (int64_t k = 0; k < K; ++k) {
    const T* mask = a.mask(k, b);
    for (int64_t mi = 0; mi < M; ++mi) acc[mi] = V(T(0));
    for (int64_t p = p0; p < p1; p += Pack::kLanes) {
      const int64_t n = std::min<int64_t>(Pack::kLanes, p1 - p);
      const V mk = Pack::load(mask + p, n), keep = V(T(1)) - mk;
      for (int64_t c = 0; c < C; ++c) {
        const V fg = mk * Pack::load(a.layer(k, b) + c * HW + p, n), xc = Pack::load(x + (b * C + c) * HW + p, n);
        for (int64_t mi = 0; mi < M; ++mi) {
          const V out = a.bgs ? keep * Pack::load(a.bgs + ((mi * a.B + b) * C + c) * HW + p, n) + fg : fg;
          const V e = out - xc;
          acc[mi] += e * e;
        }
      }
    }
    for (int64_t mi = 0; mi < M; ++mi) sse[mi * K + k] += Pack::sum(acc[mi]);
  }
}

// With e_mk = out_mk - x and g_mk = 2 e_mk grad[b, mk] scale (the gradient of out_mk):
//   d x_k = m_k sum_m g_mk;  d m_k = sum_c (x_k sum_m g_mk - sum_m g_mk bg_m);  d bg_m = sum_k g_mk (1 - m_k);
//   d x = -sum_mk g_mk.
// One sprite k at a time (as the forward); the sums over k (d bg_m, d x) are kept in those gradients, started
// from zero, so each is summed in the same order as in one register.
template <typename Pack>
void pack_distances_backward(const CandidateArgs<typename Pack::T>& a, const typename Pack::T* x,
                             const typename Pack::T* grad, typename Pack::T scale, int64_t b, int64_t p0,
                             int64_t p1, typename Pack::T* dlayers, typename Pack::T* dmasks, typename Pack::T* dbgs,
                             typename Pack::T* dx) {
  using T = typename Pack::T;
  using V = typename Pack::V;
  const int64_t K = a.K, M = a.M, B = a.B, C = a.C, HW = a.HW;
  const bool want_dbgs = dbgs && a.bgs;
  PackArray<V> two_g(M * K);
  for (int64_t j = 0; j < M * K; ++j) two_g[j] = V(T(2) * grad[b * M * K + j] * scale);
  for (int64_t k = 0; k < K; ++k) {
    const T* mask = a.mask(k, b);
    for (int64_t p = p0; p < p1; p += Pack::kLanes) {
      const int64_t n = std::min<int64_t>(Pack::kLanes, p1 - p);
      const V mk = Pack::load(mask + p, n), keep = V(T(1)) - mk;
      V dm(T(0));
      for (int64_t c = 0; c < C; ++c) {
        const V xk = Pack::load(a.layer(k, b) + c * HW + p, n), xc = Pack::load(x + (b * C + c) * HW + p, n);
        const V fg = mk * xk;
        V gsum(T(0)), gbg(T(0));
        for (int64_t mi = 0; mi < M; ++mi) {
          const V bg = a.bgs ? Pack::load(a.bgs + ((mi * B + b) * C + c) * HW + p, n) : V(T(0));
          const V out = a.bgs ? keep * bg + fg : fg;
          const V g = two_g[mi * K + k] * (out - xc);
          gsum += g;
          gbg += g * bg;
          if (want_dbgs) {
            T* d = dbgs + ((mi * B + b) * C + c) * HW + p;
            Pack::store(d, (k == 0 ? V(T(0)) : Pack::load(d, n)) + g * keep, n);
          }
        }
        if (dx) {
          T* d = dx + (b * C + c) * HW + p;
          Pack::store(d, (k == 0 ? V(T(0)) : Pack::load(d, n)) - gsum, n);
        }
        if (dlayers) Pack::store(dlayers + ((k * B + b) * C + c) * HW + p, mk * gsum, n);
        dm += xk * gsum - gbg;
      }
      if (dmasks) Pack::store(dmasks + (k * B + b) * HW + p, dm, n);
    }
  }
}

template <typename Pack>
CompositeKernels<typename Pack::T> pack_composite_kernels() {
  return {&pack_composite_forward<Pack>, &pack_composite_backward<Pack>, &pack_candidates_forward<Pack>,
          &pack_candidates_backward<Pack>, &pack_distances_forward<Pack>, &pack_distances_backward<Pack>};
}

#if DTIFAST_X86_SIMD
// Defined in csrc/x86/avx2.cpp and avx512.cpp; only called on CPUs with those instruction sets.
template <typename T>
CompositeKernels<T> composite_kernels_avx2();
template <typename T>
CompositeKernels<T> composite_kernels_avx512();
#endif

}  // namespace dtifast

// Vector CPU colour-transform kernels: color_kernel.h's per-plane functions on Vec<T>::size() pixels at a
// time, in the scalar functions' order of operations; the gain and bias gradients in color_kernel.h's
// kColorLanes partial sums, so results are the scalar path's bit for bit.
//
// Included only by the per-instruction-set files (csrc/x86/avx2.cpp, avx512.cpp) after their target pragma
// and CPU_CAPABILITY, as warp_simd.h.
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY (and CPU_CAPABILITY_<ISA>) before including color_simd.h"
#endif

#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "color_kernel.h"
#include "softclip_simd.h"

namespace dtifast {
inline namespace CPU_CAPABILITY {

template <typename T>
void vec_color_forward(const T* x, T* y, int64_t hw, T gain, T bias, T slope) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t L = V::size();
  const V g(gain), b(bias);
  for (int64_t p = 0; p < hw; p += L) {
    const int64_t n = std::min(L, hw - p);
    vec_softclip(g * V::loadu(x + p, n) + b, slope).store(y + p, n);
  }
}

// Lanes past the end of the plane load zeros: zero gradients, which leave the partial sums as they are.
template <typename T>
void vec_color_backward(const T* x, const T* g, T* dx, int64_t hw, T gain, T bias, T slope, T* dgain,
                        T* dbias) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t L = V::size(), R = kColorLanes / L;  // vectors of partial sums per gradient
  static_assert(kColorLanes % L == 0, "the partial sums must fill whole vectors");
  const V gv(gain), bv(bias);
  V sum_gain[R], sum_bias[R];
  for (int64_t r = 0; r < R; ++r) sum_gain[r] = sum_bias[r] = V(T(0));
  for (int64_t p = 0; p < hw; p += L) {
    const int64_t n = std::min(L, hw - p), r = (p / L) % R;
    const V xv = V::loadu(x + p, n);
    const V dpre = V::loadu(g + p, n) * vec_softclip_grad(gv * xv + bv, slope);
    (dpre * gv).store(dx + p, n);
    sum_gain[r] = sum_gain[r] + dpre * xv;
    sum_bias[r] = sum_bias[r] + dpre;
  }
  alignas(64) T partials[kColorLanes];
  for (int64_t r = 0; r < R; ++r) sum_gain[r].store(partials + r * L);
  *dgain = sum_color_partials(partials);
  for (int64_t r = 0; r < R; ++r) sum_bias[r].store(partials + r * L);
  *dbias = sum_color_partials(partials);
}

template <typename T>
ColorKernels<T> vec_color_kernels() {
  return {&vec_color_forward<T>, &vec_color_backward<T>};
}

}  // namespace CPU_CAPABILITY
}  // namespace dtifast

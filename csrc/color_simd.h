// Vector CPU colour-transform kernels: color_kernel.h's per-plane functions on Vec<T>::size() pixels at a
// time, in the scalar functions' order of operations; the gain and bias gradients summed pixel by pixel in
// pixel order (color_kernel.h), so results are the scalar path's bit for bit.
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

// The per-pixel terms a vector at a time; their sums over the plane one pixel at a time, in pixel order.
template <typename T>
void vec_color_backward(const T* x, const T* g, T* dx, int64_t hw, T gain, T bias, T slope, T* dgain,
                        T* dbias) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t L = V::size();
  const V gv(gain), bv(bias);
  alignas(64) T gain_terms[L], bias_terms[L];
  T sum_gain = 0, sum_bias = 0;
  for (int64_t p = 0; p < hw; p += L) {
    const int64_t n = std::min(L, hw - p);
    const V xv = V::loadu(x + p, n);
    const V dpre = V::loadu(g + p, n) * vec_softclip_grad(gv * xv + bv, slope);
    (dpre * gv).store(dx + p, n);
    (dpre * xv).store(gain_terms);
    dpre.store(bias_terms);
    for (int64_t l = 0; l < n; ++l) {
      sum_gain += gain_terms[l];
      sum_bias += bias_terms[l];
    }
  }
  *dgain = sum_gain;
  *dbias = sum_bias;
}

template <typename T>
ColorKernels<T> vec_color_kernels() {
  return {&vec_color_forward<T>, &vec_color_backward<T>};
}

}  // namespace CPU_CAPABILITY
}  // namespace dtifast

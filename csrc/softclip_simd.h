// sampling.h's softclip and its derivative on a vector of values (at::vec::Vectorized), lane by lane in their
// order of operations, for the vector render-loss and colour-transform kernels.
//
// Included only by the per-instruction-set files (csrc/x86/avx2.cpp, avx512.cpp) after their target pragma
// and CPU_CAPABILITY, as warp_simd.h.
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY (and CPU_CAPABILITY_<ISA>) before including softclip_simd.h"
#endif

#include <ATen/cpu/vec/vec.h>

namespace dtifast {
inline namespace CPU_CAPABILITY {

// sampling.h softclip_value, lane by lane, in its order of operations.
template <typename T>
at::vec::Vectorized<T> vec_softclip(const at::vec::Vectorized<T>& v, T s) {
  using V = at::vec::Vectorized<T>;
  const V zero(T(0)), one(T(1)), slope(s);
  const V clamped = at::vec::minimum(at::vec::maximum(v, zero), one);
  const V below = at::vec::minimum(v, zero), above = at::vec::maximum(v - one, zero);
  return clamped + slope * below + slope * above;
}

// sampling.h softclip_grad, lane by lane.
template <typename T>
at::vec::Vectorized<T> vec_softclip_grad(const at::vec::Vectorized<T>& v, T s) {
  using V = at::vec::Vectorized<T>;
  const V zero(T(0)), one(T(1));
  const V inner = V::blendv(one, V(T(1) + s / T(2)), (v == zero) | (v == one));
  return V::blendv(inner, V(s), (v < zero) | (v > one));
}

}  // namespace CPU_CAPABILITY
}  // namespace dtifast

// Vector CPU compositing kernels: composite_kernel.h's pack kernels on a pack of Vec<T>::size() pixels.
//
// Included only by the per-instruction-set files (csrc/x86/avx2.cpp, avx512.cpp) after their target pragma
// and CPU_CAPABILITY, as warp_simd.h: Vectorized then has that width, and VecPack lives in the inline
// namespace dtifast::<CPU_CAPABILITY>, so each build instantiates its own kernels.
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY (and CPU_CAPABILITY_<ISA>) before including composite_simd.h"
#endif

#include <ATen/cpu/vec/vec.h>

#include "composite_kernel.h"

namespace dtifast {
inline namespace CPU_CAPABILITY {

template <typename Scalar>
struct VecPack {
  using T = Scalar;
  using V = at::vec::Vectorized<Scalar>;
  static constexpr int64_t kLanes = V::size();
  // A partial pack (the end of a range) loads zeros past its n pixels and stores only n.
  static V load(const T* p, int64_t n) { return n == kLanes ? V::loadu(p) : V::loadu(p, n); }
  static void store(T* p, const V& v, int64_t n) { v.store(p, n); }
  // The lanes summed in lane (pixel) order.
  static T sum(const V& v) {
    alignas(64) T lanes[kLanes];
    v.store(lanes);
    T s = T(0);
    for (int64_t l = 0; l < kLanes; ++l) s += lanes[l];
    return s;
  }
};

template <typename T>
CompositeKernels<T> vec_composite_kernels() {
  return pack_composite_kernels<VecPack<T>>();
}

}  // namespace CPU_CAPABILITY
}  // namespace dtifast

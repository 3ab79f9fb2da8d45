// The vector warp, compositing, render-loss and colour-transform kernels (../warp_simd.h, ../composite_simd.h,
// ../render_simd.h, ../color_simd.h) built for AVX2 + FMA; cpu_capability.cpp picks them on CPUs that have both.
// setup.py compiles every source with the same flags, so the instruction set comes from the target pragma instead of
// -mavx2: the code compiled after it, ATen's 256-bit Vectorized (chosen by CPU_CAPABILITY_AVX2) included, may use those
// instructions.
#include "../cpu_capability.h"

#if DTIFAST_X86_SIMD
// What is included before the pragma is compiled for the baseline, also here: an out-of-line copy of one of
// its inline functions (the grid math shared with warp.cpp, the standard library's) is then safe wherever the
// linker keeps it in place of another file's copy. Inlined into this file's kernels, it gets their target.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "../color_kernel.h"
#include "../warp_kernel.h"

#pragma GCC target("avx2,fma")
// GCC's C++ front end does not define the instruction-set macros for a target pragma, and ATen's headers
// test them (Sleef declares its vector functions only under __AVX__ / __AVX512F__).
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2

// ATen's vector headers carry pragmas for other compilers and ABI notes on types unused here.
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#pragma GCC diagnostic ignored "-Wpsabi"
#include "../color_simd.h"
#include "../composite_simd.h"
#include "../render_simd.h"
#include "../warp_simd.h"

namespace dtifast {

template <>
WarpKernels<float> warp_kernels_avx2<float>() {
  return vec_warp_kernels<float>();
}

template <>
WarpKernels<double> warp_kernels_avx2<double>() {
  return vec_warp_kernels<double>();
}

template <>
CompositeKernels<float> composite_kernels_avx2<float>() {
  return vec_composite_kernels<float>();
}

template <>
CompositeKernels<double> composite_kernels_avx2<double>() {
  return vec_composite_kernels<double>();
}

template <>
RenderKernels<float> render_kernels_avx2<float>() {
  return vec_render_kernels<float>();
}

template <>
RenderKernels<double> render_kernels_avx2<double>() {
  return vec_render_kernels<double>();
}

template <>
ColorKernels<float> color_kernels_avx2<float>() {
  return vec_color_kernels<float>();
}

template <>
ColorKernels<double> color_kernels_avx2<double>() {
  return vec_color_kernels<double>();
}

}  // namespace dtifast
#endif

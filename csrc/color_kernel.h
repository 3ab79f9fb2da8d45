// The CPU colour-transform kernels' interface: one plane at a time, raw pointers, and one table of entry
// points per instruction set (as warp_kernel.h). csrc/color.cpp checks the inputs, runs the planes in
// parallel and calls a table: the scalar functions below (the reference) or the vector ones of
// csrc/color_simd.h, compiled per instruction set in csrc/x86/. No ATen here.
#pragma once

#include <cstdint>

#include "cpu_capability.h"
#include "sampling.h"

namespace dtifast {

// A plane's gain and bias gradients are summed in kColorLanes partial sums each: pixel p adds into partial
// p % kColorLanes, then the partials are added in order. The vector kernels keep the partials in vector lanes
// (one dependent addition per vector of pixels where a single sum chained one per pixel); the scalar kernel
// sums the same way, so every path gives the same bits.
constexpr int64_t kColorLanes = 16;

template <typename T>
struct ColorKernels {
  // y[p] = softclip(gain x[p] + bias) over one plane of hw values.
  void (*forward)(const T* x, T* y, int64_t hw, T gain, T bias, T slope);
  // dx[p] = dpre[p] gain, with dpre[p] = g[p] softclip'(gain x[p] + bias); *dgain = sum of dpre x and
  // *dbias = sum of dpre over the plane.
  void (*backward)(const T* x, const T* g, T* dx, int64_t hw, T gain, T bias, T slope, T* dgain, T* dbias);
};

template <typename T>
void scalar_color_forward(const T* x, T* y, int64_t hw, T gain, T bias, T slope) {
  for (int64_t p = 0; p < hw; ++p) y[p] = softclip_value(gain * x[p] + bias, slope);
}

// The partials in order (the vector kernels store theirs lane by lane and finish the same way).
template <typename T>
T sum_color_partials(const T* partials) {
  T total = T(0);
  for (int64_t lane = 0; lane < kColorLanes; ++lane) total += partials[lane];
  return total;
}

template <typename T>
void scalar_color_backward(const T* x, const T* g, T* dx, int64_t hw, T gain, T bias, T slope, T* dgain,
                           T* dbias) {
  T sum_gain[kColorLanes] = {}, sum_bias[kColorLanes] = {};
  for (int64_t p = 0; p < hw; ++p) {
    const T dpre = g[p] * softclip_grad(gain * x[p] + bias, slope);
    dx[p] = dpre * gain;
    sum_gain[p % kColorLanes] += dpre * x[p];
    sum_bias[p % kColorLanes] += dpre;
  }
  *dgain = sum_color_partials(sum_gain);
  *dbias = sum_color_partials(sum_bias);
}

#if DTIFAST_X86_SIMD
// Defined in csrc/x86/avx2.cpp and avx512.cpp; only called on CPUs with those instruction sets.
template <typename T>
ColorKernels<T> color_kernels_avx2();
template <typename T>
ColorKernels<T> color_kernels_avx512();
#endif

}  // namespace dtifast

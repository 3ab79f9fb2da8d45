// The CPU colour-transform kernels' interface: one plane at a time, raw pointers, and one table of entry
// points per instruction set (as warp_kernel.h). csrc/color.cpp checks the inputs, runs the planes in
// parallel and calls a table: the scalar functions below (the reference) or the vector ones of
// csrc/color_simd.h, compiled per instruction set in csrc/x86/. No ATen here.
#pragma once

#include <cstdint>

#include "cpu_capability.h"
#include "sampling.h"

namespace dtifast {

// A plane's gain and bias gradients are summed pixel by pixel in pixel order on every path, so the vector
// kernels give the scalar one's bits. (Partial sums per lane would run faster but change the rounding, and
// with it training: the demo's run, bit-identical on every path and thread count, went from ARI-FG 88.5 to
// 59.9 with 16 partial sums.)
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

template <typename T>
void scalar_color_backward(const T* x, const T* g, T* dx, int64_t hw, T gain, T bias, T slope, T* dgain,
                           T* dbias) {
  T sum_gain = 0, sum_bias = 0;
  for (int64_t p = 0; p < hw; ++p) {
    const T dpre = g[p] * softclip_grad(gain * x[p] + bias, slope);
    dx[p] = dpre * gain;
    sum_gain += dpre * x[p];
    sum_bias += dpre;
  }
  *dgain = sum_gain;
  *dbias = sum_bias;
}

#if DTIFAST_X86_SIMD
// Defined in csrc/x86/avx2.cpp and avx512.cpp; only called on CPUs with those instruction sets.
template <typename T>
ColorKernels<T> color_kernels_avx2();
template <typename T>
ColorKernels<T> color_kernels_avx512();
#endif

}  // namespace dtifast

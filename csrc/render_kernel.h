// The CPU render-loss kernels' interface: raw-pointer arguments and one table of entry points per
// instruction set (as warp_kernel.h). csrc/render_loss.cpp checks the inputs, runs the images in parallel
// and calls the table: its own per-pixel pass (the reference) or the vector pass of csrc/render_simd.h,
// compiled per instruction set in csrc/x86/. No ATen here.
#pragma once

#include <cstdint>

#include "cpu_capability.h"

namespace dtifast {

// x (B, C, H, W); sprites (L, B, C + E, h, w) (E = 1: mask; E = 2: mask, canvas with noise); theta (L, B, 6);
// occ (L, L, B); bg (B, C, H, W) or null; noise (L, B, H, W) or null; basis (W + H,).
template <typename T>
struct RenderArgs {
  int64_t L, B, C, E, H, W, h, w;
  const T *x, *sprites, *theta, *occ, *bg, *noise, *basis;
};

// Where the backward pass writes: every gradient in its input's layout, null where not wanted. dx, dnoise
// and dbg are written pixel by pixel; dsprites and dtheta are added into (zeroed by the caller); docc gets
// image b's (L, L) values written at docc[jk * B + b]. scale multiplies d(sum of squared errors).
template <typename T>
struct RenderGradPointers {
  T scale;
  T *dx, *dsprites, *dtheta, *docc, *dbg, *dnoise;
};

template <typename T>
struct RenderKernels {
  // Image b's sum of squared errors; with grads, also its backward (scaled by grads->scale).
  double (*image)(const RenderArgs<T>& a, int64_t b, const RenderGradPointers<T>* grads);
};

#if DTIFAST_X86_SIMD
// Defined in csrc/x86/avx2.cpp and avx512.cpp; only called on CPUs with those instruction sets.
template <typename T>
RenderKernels<T> render_kernels_avx2();
template <typename T>
RenderKernels<T> render_kernels_avx512();
#endif

}  // namespace dtifast

// The CPU warp kernels' interface: raw-pointer arguments and one table of entry points per instruction set.
//
// csrc/warp.cpp checks the inputs, splits the work over threads and calls a table: its own scalar kernels
// (the reference) or the vector ones of csrc/warp_simd.h, compiled per instruction set in
// csrc/x86/avx2.cpp and avx512.cpp. No ATen here: those files include this before their target
// pragma, so that its inline functions (and sampling.h's) stay baseline code there too.
#pragma once

#include <cstdint>

#include "cpu_capability.h"
#include "sampling.h"

namespace dtifast {

// One warp call (shapes as in warp.cpp): output n samples input x[index[n]] (x[n] without index) with
// transform theta[n] (P values each) over basis.
template <typename T>
struct WarpArgs {
  const T* x;
  const T* theta;
  const T* basis;
  const int64_t* index;  // nullptr: output n warps input n
  int mode;
  bool border;
  int64_t C, h, w, out_h, out_w, P, g2;

  int64_t input_of(int64_t n) const { return index ? index[n] : n; }
};

template <typename T>
struct WarpKernels {
  // Output rows [begin, end) of the flattened (N * out_h) rows into out (N, C, out_h, out_w).
  void (*forward_rows)(const WarpArgs<T>& a, T* out, int64_t begin, int64_t end);
  // Output n's backward: adds its input gradient into dx_image (input index[n]'s (C, h, w) gradient; nullptr:
  // not needed) and its transform gradient into dtheta_n (P values; nullptr: not needed), in pixel order.
  void (*backward_image)(const WarpArgs<T>& a, const T* grad, int64_t n, T* dx_image, T* dtheta_n);
};

// Grid points (x, y) of `count` pixels turned into source coordinates in place, with their derivatives
// (sampling.h source_index, as the scalar path's bilinear_taps).
template <typename T>
inline void source_indices(const WarpArgs<T>& a, int64_t count, T* x, T* y, T* dx_mult, T* dy_mult) {
  for (int64_t j = 0; j < count; ++j) {
    x[j] = source_index<T>(x[j], a.w, a.border, dx_mult[j]);
    y[j] = source_index<T>(y[j], a.h, a.border, dy_mult[j]);
  }
}

// Source coordinates of output pixels (i, j0 .. j0 + count) of a matrix mode (affine or projective), with
// their derivatives: sampling.h grid_point and source_index, the per-pixel math the vector kernels share
// with the scalar path. The mode is a template argument, so that the compiler drops the other modes' code.
template <typename T, int kMode>
inline void matrix_source_coords_of(const WarpArgs<T>& a, const T* theta, int64_t i, int64_t j0, int64_t count,
                                    T* ix, T* iy, T* dx_mult, T* dy_mult) {
  for (int64_t j = 0; j < count; ++j) {
    T gx, gy;
    grid_point<T>(kMode, theta, a.basis, a.g2, i, j0 + j, a.out_w, gx, gy);
    ix[j] = source_index<T>(gx, a.w, a.border, dx_mult[j]);
    iy[j] = source_index<T>(gy, a.h, a.border, dy_mult[j]);
  }
}

template <typename T>
inline void matrix_source_coords(const WarpArgs<T>& a, const T* theta, int64_t i, int64_t j0, int64_t count, T* ix,
                                 T* iy, T* dx_mult, T* dy_mult) {
  if (a.mode == kAffine) {
    return matrix_source_coords_of<T, kAffine>(a, theta, i, j0, count, ix, iy, dx_mult, dy_mult);
  }
  matrix_source_coords_of<T, kProjective>(a, theta, i, j0, count, ix, iy, dx_mult, dy_mult);
}

// Adds the transform gradient of output pixels (i, j0 .. j0 + count) of a matrix mode (affine or projective),
// whose grid gradients are (dgx, dgy), into dtheta: sampling.h grid_point_backward pixel by pixel, summed in
// a local copy, which the compiler keeps in registers, instead of through memory; the same order of sums.
template <typename T, int kMode>
inline void add_matrix_grad_of(const WarpArgs<T>& a, const T* theta, int64_t i, int64_t j0, int64_t count,
                               const T* dgx, const T* dgy, T* dtheta) {
  constexpr int kP = kMode == kAffine ? 6 : 9;
  T local[kP];
  for (int k = 0; k < kP; ++k) local[k] = dtheta[k];
  for (int64_t j = 0; j < count; ++j) {
    grid_point_backward<T>(kMode, theta, a.basis, a.g2, i, j0 + j, a.out_w, dgx[j], dgy[j], local);
  }
  for (int k = 0; k < kP; ++k) dtheta[k] = local[k];
}

template <typename T>
inline void add_matrix_grad(const WarpArgs<T>& a, const T* theta, int64_t i, int64_t j0, int64_t count, const T* dgx,
                            const T* dgy, T* dtheta) {
  if (a.mode == kAffine) return add_matrix_grad_of<T, kAffine>(a, theta, i, j0, count, dgx, dgy, dtheta);
  add_matrix_grad_of<T, kProjective>(a, theta, i, j0, count, dgx, dgy, dtheta);
}

#if DTIFAST_X86_SIMD
// Defined in csrc/x86/avx2.cpp and avx512.cpp; only called on CPUs with those instruction sets.
template <typename T>
WarpKernels<T> warp_kernels_avx2();
template <typename T>
WarpKernels<T> warp_kernels_avx512();
#endif

}  // namespace dtifast

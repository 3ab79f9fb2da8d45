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
  // TPS, for the vector kernels: basis transposed, (g2, out_h * out_w), so that a control point's weights of
  // neighbouring pixels are neighbours in memory (warp.cpp sets it with the table's transpose; nullptr
  // otherwise).
  const T* basis_columns = nullptr;

  int64_t input_of(int64_t n) const { return index ? index[n] : n; }
};

// Outputs grouped by input image: input k's outputs are order[first[k] .. first[k + 1]), in output order.
struct OutputsByInput {
  const int64_t* first;
  const int64_t* order;

  // Calls f(n) for each output n of input k, in output order.
  template <typename F>
  void for_each_output(int64_t k, F&& f) const {
    for (int64_t q = first[k]; q < first[k + 1]; ++q) f(order[q]);
  }
};

template <typename T>
struct WarpKernels {
  // Output pixels [begin, end) of the flattened (N * out_h * out_w) pixels into out (N, C, out_h, out_w).
  void (*forward)(const WarpArgs<T>& a, T* out, int64_t begin, int64_t end);
  // The backward of input images [begin, end): input k's gradient dx[k] (dx (K, C, h, w), written whole;
  // nullptr: not needed) summed over its outputs in output and pixel order, and those outputs' transform
  // gradients into dtheta (N, P) (nullptr: not needed; zero on entry).
  void (*backward)(const WarpArgs<T>& a, const T* grad, const OutputsByInput& outputs, int64_t begin, int64_t end,
                   T* dx, T* dtheta);
  // The vector tables: src (rows, cols) transposed into dst (cols, rows), for WarpArgs::basis_columns
  // (nullptr in the scalar table, which reads the basis as it is).
  void (*transpose)(const T* src, int64_t rows, int64_t cols, T* dst);
};

// The transform gradient of one output is summed in kThetaLanes partial sums per parameter: output pixel p
// (flattened over rows) adds into partial p % kThetaLanes, and the partials are then added in lane order
// (add_lane_sums). The vector kernels keep the partials in vector lanes, one dependent addition per vector
// of pixels where a single sum would chain one per pixel; the scalar kernels, the reference, sum the same
// way, so both give the same bits.
constexpr int64_t kThetaLanes = 16;

// dtheta[k] += partial (k, lane) for lanes 0 .. kThetaLanes - 1 in order, for k < P; partial (k, lane) is
// sums[k * param_stride + lane * lane_stride].
template <typename T>
inline void add_lane_sums(const T* sums, int64_t P, int64_t param_stride, int64_t lane_stride, T* dtheta) {
  for (int64_t k = 0; k < P; ++k) {
    for (int64_t lane = 0; lane < kThetaLanes; ++lane) dtheta[k] += sums[k * param_stride + lane * lane_stride];
  }
}

// The render loss's placement gradient (render_simd.h): the transform gradient of output pixels
// p0 .. p0 + count of a matrix mode (affine or projective), whose grid gradients are (dgx, dgy), added into
// dtheta pixel by pixel (sampling.h grid_point_backward), in a local copy that the compiler keeps in
// registers; the order of render_loss.cpp's scalar pass.
template <typename T, int kMode>
inline void add_matrix_grad_of(const WarpArgs<T>& a, const T* theta, int64_t p0, int64_t count, const T* dgx,
                               const T* dgy, T* dtheta) {
  constexpr int kP = kMode == kAffine ? 6 : 9;
  T local[kP];
  for (int k = 0; k < kP; ++k) local[k] = dtheta[k];
  int64_t i = p0 / a.out_w, j = p0 % a.out_w;
  for (int64_t k = 0; k < count; ++k) {
    grid_point_backward<T>(kMode, theta, a.basis, a.g2, i, j, a.out_w, dgx[k], dgy[k], local);
    if (++j == a.out_w) {
      j = 0;
      ++i;
    }
  }
  for (int k = 0; k < kP; ++k) dtheta[k] = local[k];
}

template <typename T>
inline void add_matrix_grad(const WarpArgs<T>& a, const T* theta, int64_t p0, int64_t count, const T* dgx,
                            const T* dgy, T* dtheta) {
  if (a.mode == kAffine) return add_matrix_grad_of<T, kAffine>(a, theta, p0, count, dgx, dgy, dtheta);
  add_matrix_grad_of<T, kProjective>(a, theta, p0, count, dgx, dgy, dtheta);
}

#if DTIFAST_X86_SIMD
// Defined in csrc/x86/avx2.cpp and avx512.cpp; only called on CPUs with those instruction sets.
template <typename T>
WarpKernels<T> warp_kernels_avx2();
template <typename T>
WarpKernels<T> warp_kernels_avx512();
#endif

}  // namespace dtifast

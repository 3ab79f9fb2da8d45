// Host launchers of the raw-pointer CUDA kernels in csrc/cuda/*.cu: the only interface between them and the
// bindings (csrc/cuda/bind_*.cpp). No torch types here, so that every .cu file compiles with nvcc alone.
// All pointers are device pointers to contiguous data laid out as in the CPU ops (csrc/*.cpp); a null
// gradient pointer means "not wanted".
//
// Work is cut into tiles of kThreads pixels of one image; the tiles of all images are numbered along grid x
// and walked by a grid-stride loop, so the batch never sits in grid y/z (limit 65 535) and no grid exceeds
// kMaxGrid blocks. A launcher does nothing for zero work (the bindings return empty or zero results first).
//
// Reductions (see common.cuh):
//   * the loss and the parameter gradients (warp theta, render-loss theta and occlusion, compositing
//     occlusion): every tile sums its pixels in a fixed tree into its own partial row, and a second kernel
//     adds each image's tiles in index order. No float atomics: the same bits on every run, in every mode;
//   * the scattered input gradients (warp dx, render-loss dsprites): atomicAdd into the gradient by default
//     (fast; the order of the adds, so the last bits, vary between runs). With a Taps buffer the kernels
//     record every tap's (row, value) instead and the binding sums them with ATen's sort-based
//     index_put_(accumulate=True), which is deterministic; the bindings do that under
//     torch.use_deterministic_algorithms(True).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "../sampling.h"  // DTIFAST_HD: the size helpers below run on host and device

namespace dtifast {
namespace cuda {

constexpr int kMaxChannels = 4;  // colour channels held per thread by the render-loss and greedy kernels
constexpr int kThreads = 256;    // threads per block = pixels per tile
constexpr int64_t kMaxGrid = 2147483647;  // grid x limit (blocks); larger work loops

// Pixel tiles of an image of `pixels` pixels.
DTIFAST_HD int64_t tiles_for(int64_t pixels) { return (pixels + kThreads - 1) / kThreads; }

// Per-tap records of the deterministic scatter for a chunk of samples (a sample: one output pixel of one
// image, and of one layer for the render loss). Tap t of sample s adds value[(4 s + t) * planes + q] to row
// index[4 s + t], plane q, of a (rows + 1, planes) gradient; a tap outside the input goes to row `dummy` =
// rows, which the binding drops. index == nullptr: scatter with atomics instead.
template <typename T>
struct Taps {
  int64_t* index;
  T* value;
  int64_t planes, dummy;
};

// Samples recorded per chunk: each takes 4 * (8 + planes * sizeof(T)) bytes, plus about as much again for
// index_put_'s sort; 2^20 samples of 5 float planes are 112 MB.
constexpr int64_t kTapSamples = int64_t(1) << 20;

// Images per deterministic chunk when an image has `samples` samples (at least one image).
inline int64_t chunk_images(int64_t samples) {
  return std::max<int64_t>(1, kTapSamples / std::max<int64_t>(samples, 1));
}

// ---------------------------------------------------------------------------------------------------------
// Compositing (composite.cu): layers (L, B, C, HW), masks (L, B, HW), occ (L, L, B), bg (B, C, HW) or null.
template <typename T>
struct CompositeArgs {
  const T *layers, *masks, *occ, *bg;
  int L;
  int64_t B, C, HW;
};

// Backward buffers: dlayers, dbg accumulated (zeroed by the caller); dmasks, docc (L, L, B) written;
// partial (B, tiles_for(HW), L * L) scratch, needed with docc.
template <typename T>
struct CompositeGradArgs {
  const T* grad;  // (B, C, HW)
  T *dlayers, *dmasks, *docc, *dbg, *partial;
};

template <typename T>
void launch_composite(const CompositeArgs<T>& a, T* out, cudaStream_t stream);

template <typename T>
void launch_composite_backward(const CompositeArgs<T>& a, const CompositeGradArgs<T>& g, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------------
// Render loss (render_loss.cu): x (B, C, H, W); sprites (L, B, C + E, h, w); theta (L, B, 6); occ (L, L, B);
// bg (B, C, H, W) or null; noise (L, B, 1, H, W) or null; basis (W + H,).
struct RenderDims {
  int L;
  int64_t B, C, H, W, h, w;
  bool has_noise;
};

template <typename T>
struct RenderArgs {
  RenderDims d;
  const T *x, *sprites, *theta, *occ, *bg, *noise, *basis;
};

// Forward: per-tile sums of squared errors, partial (B, tiles_for(H * W)) in double; the binding adds them.
template <typename T>
void launch_render_loss(const RenderArgs<T>& a, double* partial, cudaStream_t stream);

// Backward buffers. grad: the loss gradient, one element on the device (read by the kernel: no host sync);
// count = max(B * C * H * W, 1), the mean's divisor. dx, dnoise written; dsprites, dbg accumulated (zeroed by
// the caller); dtheta, docc written by launch_render_loss_params from partial (B, tiles_for(H * W),
// render_params(L, ...)). With taps.index, the sprite gradient of images [b0, b0 + nb) is recorded instead of
// scattered: sample s = ((b - b0) * L + l) * H * W + p, row (l * B + b) * h * w + y * w + x, planes C + E.
template <typename T>
struct RenderGradArgs {
  const T* grad;
  double count;
  T *dx, *dsprites, *dtheta, *docc, *dbg, *dnoise, *partial;
  Taps<T> taps;
};

// Values per partial row: the wanted parameter gradients of one image (6 L for theta, then L * L for occ).
DTIFAST_HD int64_t render_params(int L, bool theta, bool occ) { return (theta ? 6 * L : 0) + (occ ? L * L : 0); }

// The per-pixel pass for images [b0, b0 + nb).
template <typename T>
void launch_render_loss_backward(const RenderArgs<T>& a, const RenderGradArgs<T>& g, int64_t b0, int64_t nb,
                                 cudaStream_t stream);

// dtheta and docc from the partial rows, once every image has been through launch_render_loss_backward.
template <typename T>
void launch_render_loss_params(const RenderArgs<T>& a, const RenderGradArgs<T>& g, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------------
// Greedy selection (greedy.cu).
template <typename T>
struct GreedyArgs {
  int L;
  int64_t K, B, C, H, W, h, w;
  int64_t sl, sk, sb;  // element strides of the sprites' (L, K, B) dims; planes contiguous
  const T *x, *sprites, *theta, *occ, *bg, *penalty, *noise, *basis;  // bg, penalty, noise may be null
  T* selection;                                                       // (L, K, B), zeroed by the caller
  // Workspace, zeroed by the caller: current layers (L, B, C, HW), masks (L, B, HW); per-layer terms
  // s0, s1 (B, C, HW), a (B, HW); per-tile partial errors (K, B, tiles_for(HW)); chosen index (B,).
  T *cur_col, *cur_m, *s0, *s1, *a;
  double* partial;
  int64_t* best;
};

template <typename T>
void launch_greedy_select(const GreedyArgs<T>& args, int64_t n_iter, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------------
// Warps (warp.cu): x (K, C, h, w); output n (of N) warps x[index[n]] (index null: x[n], K = N), an index
// outside [0, K) gives NaN and no gradient; theta (N, P) as csrc/warp.cpp; basis (W + H,) or (H * W, g2) for
// TPS (sampling.h grid_point).
template <typename T>
struct WarpArgs {
  const T *x, *theta, *basis;
  const int64_t* index;
  int mode;
  int64_t K, N, C, h, w, H, W, P, g2;
  bool border;
};

// Backward buffers: dx (K, C, h, w) accumulated (zeroed by the caller); dtheta (N, P) written by
// launch_warp_theta from partial (N, tiles_for(H * W), P). With taps.index, dx of outputs [n0, n0 + nn) is
// recorded instead of scattered: sample s = (n - n0) * H * W + p, row k * h * w + y * w + x, planes C.
template <typename T>
struct WarpGradArgs {
  const T* grad;  // (N, C, H, W)
  T *dx, *dtheta, *partial;
  Taps<T> taps;
};

template <typename T>
void launch_warp(const WarpArgs<T>& a, T* out, cudaStream_t stream);

// The per-pixel backward of outputs [n0, n0 + nn).
template <typename T>
void launch_warp_backward(const WarpArgs<T>& a, const WarpGradArgs<T>& g, int64_t n0, int64_t nn,
                          cudaStream_t stream);

// dtheta from the partial rows, once every output has been through launch_warp_backward.
template <typename T>
void launch_warp_theta(const WarpArgs<T>& a, const WarpGradArgs<T>& g, cudaStream_t stream);

}  // namespace cuda
}  // namespace dtifast

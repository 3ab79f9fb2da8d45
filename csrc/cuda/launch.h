// Host launchers of the raw-pointer CUDA kernels in csrc/cuda/*.cu, called by the bindings in
// csrc/cuda/*.cpp. No torch types here, so that every .cu file compiles with nvcc alone.
// All pointers are device pointers to contiguous data laid out as in the CPU ops (csrc/*.cpp); gradient
// buffers documented as "accumulated" must be zeroed by the caller.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dtifast {
namespace cuda {

constexpr int kMaxChannels = 4;  // colour channels held per thread by the render-loss kernels

// Launch configuration shared by the .cu files.
constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// layers (L, B, C, HW), masks (L, B, HW), occ (L, L, B), bg (B, C, HW) or null -> out (B, C, HW).
template <typename T>
void launch_composite(const T* layers, const T* masks, const T* occ, const T* bg, T* out, int L, int64_t B,
                      int64_t C, int64_t HW, cudaStream_t stream);

// Gradients (null: not wanted): dlayers, dbg accumulated; dmasks written; docc (L, L, B) accumulated.
template <typename T>
void launch_composite_backward(const T* grad, const T* layers, const T* masks, const T* occ, const T* bg,
                               T* dlayers, T* dmasks, T* docc, T* dbg, int L, int64_t B, int64_t C, int64_t HW,
                               cudaStream_t stream);

struct RenderDims {
  int L;
  int64_t B, C, H, W, h, w;
  bool has_noise;
};

// x (B, C, H, W); sprites (L, B, C + E, h, w); theta (L, B, 6); occ (L, L, B); bg, noise (L, B, 1, H, W) or
// null. Forward: per-image sums of squared errors accumulated into sse (B,) in double.
template <typename T>
void launch_render_loss(const T* x, const T* sprites, const T* theta, const T* occ, const T* bg, const T* noise,
                        double* sse, const RenderDims& d, cudaStream_t stream);

// Backward for d(loss)/d(sse) = scale everywhere. dx, dnoise written; dsprites, dtheta, docc, dbg accumulated.
template <typename T>
void launch_render_loss_backward(const T* x, const T* sprites, const T* theta, const T* occ, const T* bg,
                                 const T* noise, T scale, T* dx, T* dsprites, T* dtheta, T* docc, T* dbg, T* dnoise,
                                 const RenderDims& d, cudaStream_t stream);

template <typename T>
struct GreedyArgs {
  int L;
  int64_t K, B, C, H, W, h, w;
  int64_t sl, sk, sb;  // element strides of the sprites' (L, K, B) dims; planes contiguous
  const T *x, *sprites, *theta, *occ, *bg, *penalty, *noise;  // bg, penalty, noise may be null
  T* selection;                                               // (L, K, B), zeroed by the caller
  // Workspace, zeroed by the caller: current layers (L, B, C, HW), masks (L, B, HW); per-layer terms
  // s0, s1 (B, C, HW), a (B, HW); per-block partial errors (K, B, blocks); chosen index (B,).
  T *cur_col, *cur_m, *s0, *s1, *a;
  double* partial;
  int64_t* best;
};

// Number of pixel blocks per image that GreedyArgs::partial must hold.
inline int64_t greedy_blocks(int64_t HW) { return blocks_for(HW); }

template <typename T>
void launch_greedy_select(const GreedyArgs<T>& args, int64_t n_iter, cudaStream_t stream);

// x (N, C, h, w); theta as csrc/warp.cpp; wts (H*W, G2) for TPS or null -> out (N, C, H, W).
template <typename T>
void launch_warp(const T* x, const T* theta, const T* wts, T* out, int mode, int64_t N, int64_t C, int64_t h,
                 int64_t w, int64_t H, int64_t W, int64_t P, int64_t g2, bool border, cudaStream_t stream);

// dx accumulated (null: not wanted); dgrid (N, H*W, 2) scratch; dtheta (N, P) written (null: not wanted).
template <typename T>
void launch_warp_backward(const T* grad, const T* x, const T* theta, const T* wts, T* dx, T* dgrid, T* dtheta,
                          int mode, int64_t N, int64_t C, int64_t h, int64_t w, int64_t H, int64_t W, int64_t P,
                          int64_t g2, bool border, cudaStream_t stream);

}  // namespace cuda
}  // namespace dtifast

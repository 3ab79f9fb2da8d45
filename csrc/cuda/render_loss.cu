// CUDA fused render loss: one thread per pixel of one image (grid.y = image) places every layer's sprite
// (csrc/place.h), composites (csrc/composite.h) and scores the pixel; the backward recomputes the same pass.
// Sprite gradients scatter with atomics; position-matrix and occlusion gradients are reduced per warp first.
#include "../composite.h"
#include "../place.h"
#include "launch.h"
#include "reduce.cuh"

namespace dtifast {
namespace cuda {
namespace {

// The forward pass of one pixel: placed layers, their colours (layer l at col[l * C]) and masks, and the
// composite minus x per channel in diff.
template <typename T>
__device__ void render_pixel(const T* x, const T* sprites, const T* theta, const T* occ, const T* bg,
                             const T* noise, const RenderDims& d, int64_t b, int64_t i, int64_t j,
                             Placed<T>* placed, T* col, T* m, T* diff) {
  const int64_t HW = d.H * d.W, hw = d.h * d.w, C = d.C, S = (C + (d.has_noise ? 2 : 1)) * hw, p = i * d.W + j;
  for (int l = 0; l < d.L; ++l) {
    const int64_t lb = l * d.B + b;
    placed[l] = place_pixel<T>(sprites + lb * S, hw, C, d.h, d.w, theta + lb * 6, i, j, d.H, d.W,
                               noise ? noise + lb * HW + p : nullptr, col + l * C);
    m[l] = placed[l].mask;
  }
  const T* bgp = bg ? bg + b * C * HW + p : nullptr;
  composite_pixel<T>(occ + b, d.B, m, col, C, 1, bgp, HW, d.L, C, diff, 1);
  for (int64_t c = 0; c < C; ++c) diff[c] -= x[(b * C + c) * HW + p];
}

template <typename T>
__global__ void render_forward_kernel(const T* x, const T* sprites, const T* theta, const T* occ, const T* bg,
                                      const T* noise, double* sse, RenderDims d) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, b = blockIdx.y;
  double acc = 0;
  if (p < d.H * d.W) {
    Placed<T> placed[kMaxLayers];
    T col[kMaxLayers * kMaxChannels], m[kMaxLayers], diff[kMaxChannels];
    render_pixel<T>(x, sprites, theta, occ, bg, noise, d, b, p / d.W, p % d.W, placed, col, m, diff);
    for (int64_t c = 0; c < d.C; ++c) acc += static_cast<double>(diff[c]) * static_cast<double>(diff[c]);
  }
  warp_atomic_add(sse + b, acc);
}

template <typename T>
__global__ void render_backward_kernel(const T* x, const T* sprites, const T* theta, const T* occ, const T* bg,
                                       const T* noise, T scale, T* dx, T* dsprites, T* dtheta, T* docc, T* dbg,
                                       T* dnoise, RenderDims d) {
  const int64_t HW = d.H * d.W, hw = d.h * d.w, C = d.C, S = (C + (d.has_noise ? 2 : 1)) * hw;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, b = blockIdx.y;
  const int L = d.L;
  T dth[kMaxLayers * 6], docc_local[kMaxLayers * kMaxLayers];
  for (int q = 0; q < L * 6; ++q) dth[q] = T(0);
  for (int q = 0; q < L * L; ++q) docc_local[q] = T(0);
  if (p < HW) {  // inactive lanes still take part in the warp reductions below
    const int64_t i = p / d.W, j = p % d.W;
    Placed<T> placed[kMaxLayers];
    T col[kMaxLayers * kMaxChannels], dcol[kMaxLayers * kMaxChannels], m[kMaxLayers], dm[kMaxLayers];
    T gout[kMaxChannels];
    render_pixel<T>(x, sprites, theta, occ, bg, noise, d, b, i, j, placed, col, m, gout);
    for (int64_t c = 0; c < C; ++c) {
      gout[c] *= T(2) * scale;
      if (dx) dx[(b * C + c) * HW + p] = -gout[c];
    }
    for (int q = 0; q < L * C; ++q) dcol[q] = T(0);
    const T* bgp = bg ? bg + b * C * HW + p : nullptr;
    composite_backward<T>(occ + b, d.B, m, col, C, 1, bgp, HW, L, C, gout, 1, dm, dcol, docc ? docc_local : nullptr,
                          dbg ? dbg + b * C * HW + p : nullptr);
    for (int l = 0; l < L; ++l) {
      const int64_t lb = l * d.B + b;
      const T dn = place_pixel_backward<T>(placed[l], sprites + lb * S, hw, C, theta + lb * 6, i, j, d.H, d.W,
                                           noise ? noise + lb * HW + p : nullptr, dcol + l * C, dm[l],
                                           dsprites ? dsprites + lb * S : nullptr, dth + l * 6);
      if (dnoise) dnoise[lb * HW + p] = dn;
    }
  }
  if (dtheta) {
    for (int l = 0; l < L; ++l) {
      for (int q = 0; q < 6; ++q) warp_atomic_add(dtheta + (l * d.B + b) * 6 + q, dth[l * 6 + q]);
    }
  }
  if (docc) {
    for (int q = 0; q < L * L; ++q) warp_atomic_add(docc + q * d.B + b, docc_local[q]);
  }
}

}  // namespace

template <typename T>
void launch_render_loss(const T* x, const T* sprites, const T* theta, const T* occ, const T* bg, const T* noise,
                        double* sse, const RenderDims& d, cudaStream_t stream) {
  const dim3 grid(blocks_for(d.H * d.W), static_cast<unsigned>(d.B));
  render_forward_kernel<T><<<grid, kThreads, 0, stream>>>(x, sprites, theta, occ, bg, noise, sse, d);
}

template <typename T>
void launch_render_loss_backward(const T* x, const T* sprites, const T* theta, const T* occ, const T* bg,
                                 const T* noise, T scale, T* dx, T* dsprites, T* dtheta, T* docc, T* dbg, T* dnoise,
                                 const RenderDims& d, cudaStream_t stream) {
  const dim3 grid(blocks_for(d.H * d.W), static_cast<unsigned>(d.B));
  render_backward_kernel<T><<<grid, kThreads, 0, stream>>>(x, sprites, theta, occ, bg, noise, scale, dx, dsprites,
                                                           dtheta, docc, dbg, dnoise, d);
}

#define DTIFAST_INSTANTIATE(T)                                                                                   \
  template void launch_render_loss<T>(const T*, const T*, const T*, const T*, const T*, const T*, double*,     \
                                      const RenderDims&, cudaStream_t);                                          \
  template void launch_render_loss_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*, T,  \
                                               T*, T*, T*, T*, T*, T*, const RenderDims&, cudaStream_t);
DTIFAST_INSTANTIATE(float)
DTIFAST_INSTANTIATE(double)
#undef DTIFAST_INSTANTIATE

}  // namespace cuda
}  // namespace dtifast

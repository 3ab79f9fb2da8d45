// CUDA fused render loss: one block per tile of kThreads pixels of one image; each thread places every
// layer's sprite at its pixel (csrc/place.h), composites (csrc/composite.h) and scores the pixel, and the
// backward recomputes the same pass. Per-thread arrays are sized by the layer bound N >= L (common.cuh).
//   * loss: per-tile sums of squared errors in double, summed by the binding (deterministic);
//   * theta and occlusion gradients: per-tile partial rows in a fixed order, added per image by a second
//     kernel (deterministic, no atomics);
//   * sprite gradients: atomicAdd per tap by default; with Taps (deterministic mode) every tap's (row, value)
//     is recorded and the binding sums them with index_put_(accumulate=True);
//   * x, noise and background gradients: written (or added) by the pixel's own thread.
// The loss gradient is read on the device (no host sync).
#include "../composite.h"
#include "../place.h"
#include "common.cuh"
#include "launch.h"

namespace dtifast {
namespace cuda {
namespace {

// Layer bounds 2, 4, 8, 16: L = 1 runs the N = 2 kernels (a few hundred bytes more stack), which saves a fifth
// of this file's compile time.
constexpr int kMinBound = 2;

// Where place_pixel_backward_to sends sample s's sprite gradient: recorded per tap (deterministic mode), or
// added into the sprite's planes with atomics (place.h ScatterToSprite; nowhere when not wanted). One sink
// for both, so that the placement backward is inlined once.
template <typename T>
struct SpriteGradient {
  Taps<T> taps;
  int64_t s;
  ScatterToSprite<T> scatter;
  DTIFAST_HD void operator()(const Bilinear<T>& b, int64_t q, T g) const {
    if (taps.index) {
      record_values<T>(taps, s, b, q, g);
    } else {
      scatter(b, q, g);
    }
  }
};

// The forward pass of pixel (i, j) of image b: placed layers, their colours (layer l at col[l * C]) and masks,
// and the composite minus x per channel in diff.
template <typename T, int N>
__device__ void render_pixel(const RenderArgs<T>& a, int64_t b, int64_t i, int64_t j, Placed<T>* placed, T* col,
                             T* m, T* diff) {
  const RenderDims& d = a.d;
  const int64_t HW = d.H * d.W, hw = d.h * d.w, C = d.C, S = (C + (d.has_noise ? 2 : 1)) * hw, p = i * d.W + j;
  for (int l = 0; l < d.L; ++l) {
    const int64_t lb = l * d.B + b;
    placed[l] = place_pixel<T>(a.sprites + lb * S, hw, C, d.h, d.w, a.theta + lb * 6, a.basis, i, j, d.W,
                               a.noise ? a.noise + lb * HW + p : nullptr, col + l * C);
    m[l] = placed[l].mask;
  }
  const T* bgp = a.bg ? a.bg + b * C * HW + p : nullptr;
  composite_pixel<T, N>(a.occ + b, d.B, m, col, C, 1, bgp, HW, d.L, C, diff, 1);
  for (int64_t c = 0; c < C; ++c) diff[c] -= a.x[(b * C + c) * HW + p];
}

template <typename T, int N>
__global__ void render_forward_kernel(RenderArgs<T> a, double* partial, int64_t tiles) {
  __shared__ double smem[kWarps];
  const RenderDims& d = a.d;
  for (int64_t blk = first_block(); blk < d.B * tiles; blk += block_stride()) {
    const int64_t b = blk / tiles, p = (blk % tiles) * kThreads + threadIdx.x;
    double acc = 0;
    if (p < d.H * d.W) {
      Placed<T> placed[N];
      T col[N * kMaxChannels], m[N], diff[kMaxChannels];
      render_pixel<T, N>(a, b, p / d.W, p % d.W, placed, col, m, diff);
      for (int64_t c = 0; c < d.C; ++c) acc += static_cast<double>(diff[c]) * static_cast<double>(diff[c]);
    }
    block_sum(&acc, 1, smem, partial + blk);
  }
}

// Three blocks per SM in float (80 registers: no spills on any default architecture; unbounded, ptxas takes 96
// and fits two), two in double.
template <typename T, int N>
__global__ void __launch_bounds__(kThreads, sizeof(T) == 4 ? 3 : 2)
    render_backward_kernel(RenderArgs<T> a, RenderGradArgs<T> g, int64_t b0, int64_t nb, int64_t tiles) {
  __shared__ T smem[(6 * N + N * N) * kWarps];
  const RenderDims& d = a.d;
  const int64_t HW = d.H * d.W, hw = d.h * d.w, C = d.C, S = (C + (d.has_noise ? 2 : 1)) * hw;
  const int L = d.L;
  const int n_theta = g.dtheta ? 6 * L : 0, n_par = static_cast<int>(render_params(L, g.dtheta, g.docc));
  const T scale = static_cast<T>(static_cast<double>(*g.grad) / g.count);  // as the CPU kernel rounds it
  for (int64_t blk = first_block(); blk < nb * tiles; blk += block_stride()) {
    const int64_t b = b0 + blk / tiles, tile = blk % tiles, p = tile * kThreads + threadIdx.x;
    T par[6 * N + N * N];  // this pixel's theta gradients (6 per layer), then its occlusion gradients
    for (int q = 0; q < n_par; ++q) par[q] = T(0);
    if (p < HW) {  // threads past the image's end still take part in block_sum
      const int64_t i = p / d.W, j = p % d.W;
      Placed<T> placed[N];
      T col[N * kMaxChannels], dcol[N * kMaxChannels], m[N], dm[N], gout[kMaxChannels];
      render_pixel<T, N>(a, b, i, j, placed, col, m, gout);
      for (int64_t c = 0; c < C; ++c) {
        gout[c] = T(2) * gout[c] * scale;
        if (g.dx) g.dx[(b * C + c) * HW + p] = -gout[c];
      }
      for (int q = 0; q < L * C; ++q) dcol[q] = T(0);
      const T* bgp = a.bg ? a.bg + b * C * HW + p : nullptr;
      composite_backward<T, N>(a.occ + b, d.B, m, col, C, 1, bgp, HW, L, C, gout, 1, dm, dcol,
                               g.docc ? par + n_theta : nullptr, g.dbg ? g.dbg + b * C * HW + p : nullptr);
      for (int l = 0; l < L; ++l) {
        const int64_t lb = l * d.B + b;
        const T* noise = a.noise ? a.noise + lb * HW + p : nullptr;
        T* dth = g.dtheta ? par + 6 * l : nullptr;
        const int64_t s = ((b - b0) * L + l) * HW + p;
        if (g.taps.index) record_rows<T>(g.taps, s, placed[l].taps, lb * hw);
        const SpriteGradient<T> sink{g.taps, s, {g.dsprites ? g.dsprites + lb * S : nullptr, hw}};
        const T dn = place_pixel_backward_to<T>(placed[l], a.sprites + lb * S, hw, C, a.theta + lb * 6, a.basis, i,
                                                j, d.W, noise, dcol + l * C, dm[l], sink, dth);
        if (g.dnoise) g.dnoise[lb * HW + p] = dn;
      }
    }
    if (n_par > 0) block_sum(par, n_par, smem, g.partial + (b * tiles + tile) * n_par);
  }
}

}  // namespace

template <typename T>
void launch_render_loss(const RenderArgs<T>& a, double* partial, cudaStream_t stream) {
  const int64_t tiles = tiles_for(a.d.H * a.d.W);
  if (a.d.B * tiles == 0) return;
  with_layer_bound<kMinBound>(a.d.L, [&](auto bound) {
    render_forward_kernel<T, decltype(bound)::value>
        <<<grid_for(a.d.B * tiles), kThreads, 0, stream>>>(a, partial, tiles);
  });
}

template <typename T>
void launch_render_loss_backward(const RenderArgs<T>& a, const RenderGradArgs<T>& g, int64_t b0, int64_t nb,
                                 cudaStream_t stream) {
  const int64_t tiles = tiles_for(a.d.H * a.d.W);
  if (nb * tiles == 0) return;
  with_layer_bound<kMinBound>(a.d.L, [&](auto bound) {
    render_backward_kernel<T, decltype(bound)::value>
        <<<grid_for(nb * tiles), kThreads, 0, stream>>>(a, g, b0, nb, tiles);
  });
}

template <typename T>
void launch_render_loss_params(const RenderArgs<T>& a, const RenderGradArgs<T>& g, cudaStream_t stream) {
  const int L = a.d.L;
  const int64_t tiles = tiles_for(a.d.H * a.d.W), n_par = render_params(L, g.dtheta, g.docc);
  if (g.dtheta) launch_sum_partials<T>(g.partial, a.d.B, tiles, n_par, 6 * L, 6, g.dtheta, stream);
  if (g.docc) launch_sum_partials<T>(g.partial + (g.dtheta ? 6 * L : 0), a.d.B, tiles, n_par, L * L, 1, g.docc, stream);
}

#define DTIFAST_INSTANTIATE(T)                                                                                \
  template void launch_render_loss<T>(const RenderArgs<T>&, double*, cudaStream_t);                          \
  template void launch_render_loss_backward<T>(const RenderArgs<T>&, const RenderGradArgs<T>&, int64_t, int64_t, \
                                               cudaStream_t);                                                 \
  template void launch_render_loss_params<T>(const RenderArgs<T>&, const RenderGradArgs<T>&, cudaStream_t);
DTIFAST_INSTANTIATE(float)
DTIFAST_INSTANTIATE(double)
#undef DTIFAST_INSTANTIATE

}  // namespace cuda
}  // namespace dtifast

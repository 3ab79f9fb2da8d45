// CUDA warps: affine, projective and TPS grids fused with bilinear sampling (csrc/sampling.h), output n
// reading input index[n] in place.
//   * forward: one thread per output pixel of all N outputs (a grid-stride loop);
//   * backward: one block per tile of kThreads pixels of one output. The input gradient is scattered with
//     atomicAdd by default, or recorded per tap for the binding's deterministic index_put_ (launch.h Taps).
//     The theta gradient of the tile is summed in a fixed order into a partial row (affine and projective:
//     each thread's 6 or 9 values through block_sum; TPS: the grid gradients staged in shared memory, one
//     thread per theta value summing its tile in pixel order), and launch_warp_theta adds each output's
//     tiles in order: deterministic, no atomics.
#include <cuda/std/limits>

#include "../sampling.h"
#include "common.cuh"
#include "launch.h"

namespace dtifast {
namespace cuda {
namespace {

constexpr int kMaxMatrix = 9;  // theta values of the affine (6) and projective (9) modes

// Input of output n, or -1 when the index is out of range (the output is NaN and gets no gradient: the
// Python op validates the index; reading it on the host here would cost a device sync).
template <typename T>
__device__ __forceinline__ int64_t input_of(const WarpArgs<T>& a, int64_t n) {
  const int64_t k = a.index ? a.index[n] : n;
  return k >= 0 && k < a.K ? k : -1;
}

// The bilinear taps of output pixel (i, j) of output n.
template <typename T>
__device__ __forceinline__ Bilinear<T> output_taps(const WarpArgs<T>& a, int64_t n, int64_t i, int64_t j) {
  T gx, gy;
  grid_point<T>(a.mode, a.theta + n * a.P, a.basis, a.g2, i, j, a.W, gx, gy);
  return bilinear_taps<T>(gx, gy, a.h, a.w, a.border);
}

template <typename T>
__global__ void warp_forward_kernel(WarpArgs<T> a, T* out) {
  const int64_t HW = a.H * a.W, hw = a.h * a.w;
  for (int64_t e = first_thread(); e < a.N * HW; e += thread_stride()) {
    const int64_t n = e / HW, p = e % HW, k = input_of(a, n);
    T* o = out + n * a.C * HW + p;
    if (k < 0) {
      for (int64_t c = 0; c < a.C; ++c) o[c * HW] = ::cuda::std::numeric_limits<T>::quiet_NaN();
      continue;
    }
    const Bilinear<T> b = output_taps(a, n, p / a.W, p % a.W);
    for (int64_t c = 0; c < a.C; ++c) o[c * HW] = bilinear_read(b, a.x + (k * a.C + c) * hw);
  }
}

// Adds the theta gradient of the tile (pixels p0 + t, t < kThreads; this thread's grid gradient (dgx, dgy),
// zero where it has none) into out[P] in a fixed order. Every thread of the block calls it.
template <typename T>
__device__ void theta_partial(const WarpArgs<T>& a, int64_t n, int64_t p0, T dgx, T dgy, T* smem, T* out) {
  const int64_t HW = a.H * a.W, p = p0 + threadIdx.x;
  if (a.mode != kTps) {
    T d[kMaxMatrix];
    for (int q = 0; q < kMaxMatrix; ++q) d[q] = T(0);
    if (p < HW) grid_point_backward<T>(a.mode, a.theta + n * a.P, a.basis, 0, p / a.W, p % a.W, a.W, dgx, dgy, d);
    block_sum(d, static_cast<int>(a.P), smem, out);
    return;
  }
  // TPS: theta value 2 g + c gets sum_t basis[p0 + t][g] * dg_c[t] (grid_point_backward's TPS branch), one
  // thread per value, so that P (any grid size) needs no per-thread array.
  smem[threadIdx.x] = dgx;
  smem[kThreads + threadIdx.x] = dgy;
  __syncthreads();
  const int64_t count = HW - p0 < kThreads ? HW - p0 : kThreads;
  for (int64_t q = threadIdx.x; q < a.P; q += blockDim.x) {
    const T* dg = smem + (q & 1) * kThreads;
    const T* row = a.basis + p0 * a.g2 + (q >> 1);
    T s = T(0);
    for (int64_t t = 0; t < count; ++t) s += row[t * a.g2] * dg[t];
    out[q] = s;
  }
  __syncthreads();
}

template <typename T>
__global__ void warp_backward_kernel(WarpArgs<T> a, WarpGradArgs<T> g, int64_t n0, int64_t nn, int64_t tiles) {
  __shared__ T smem[2 * kThreads > kMaxMatrix * kWarps ? 2 * kThreads : kMaxMatrix * kWarps];
  const int64_t HW = a.H * a.W, hw = a.h * a.w;
  const bool record = g.taps.index != nullptr;
  for (int64_t blk = first_block(); blk < nn * tiles; blk += block_stride()) {
    const int64_t n = n0 + blk / tiles, tile = blk % tiles, p = tile * kThreads + threadIdx.x;
    T dgx = T(0), dgy = T(0);
    if (p < HW) {  // threads past the image's end still take part in theta_partial
      const int64_t k = input_of(a, n), s = (n - n0) * HW + p;
      if (k >= 0) {
        const Bilinear<T> b = output_taps(a, n, p / a.W, p % a.W);
        T gix = 0, giy = 0;
        for (int64_t c = 0; c < a.C; ++c) {
          const int64_t plane = (k * a.C + c) * hw;
          const T gc = g.grad[(n * a.C + c) * HW + p];
          bilinear_backward<T>(b, a.x + plane, gc, g.dx && !record ? g.dx + plane : nullptr, gix, giy);
          if (record) record_values<T>(g.taps, s, b, c, gc);
        }
        if (record) record_rows<T>(g.taps, s, b, k * hw);
        dgx = gix * b.dx_mult;
        dgy = giy * b.dy_mult;
      } else if (record) {
        for (int t = 0; t < 4; ++t) g.taps.index[4 * s + t] = g.taps.dummy;
      }
    }
    if (g.dtheta) theta_partial(a, n, tile * kThreads, dgx, dgy, smem, g.partial + (n * tiles + tile) * a.P);
  }
}

}  // namespace

template <typename T>
void launch_warp(const WarpArgs<T>& a, T* out, cudaStream_t stream) {
  if (a.N * a.H * a.W == 0) return;
  warp_forward_kernel<T><<<grid_for(tiles_for(a.N * a.H * a.W)), kThreads, 0, stream>>>(a, out);
}

template <typename T>
void launch_warp_backward(const WarpArgs<T>& a, const WarpGradArgs<T>& g, int64_t n0, int64_t nn,
                          cudaStream_t stream) {
  const int64_t tiles = tiles_for(a.H * a.W);
  if (nn * tiles == 0) return;
  warp_backward_kernel<T><<<grid_for(nn * tiles), kThreads, 0, stream>>>(a, g, n0, nn, tiles);
}

template <typename T>
void launch_warp_theta(const WarpArgs<T>& a, const WarpGradArgs<T>& g, cudaStream_t stream) {
  if (g.dtheta) launch_sum_partials<T>(g.partial, a.N, tiles_for(a.H * a.W), a.P, a.P, a.P, g.dtheta, stream);
}

#define DTIFAST_INSTANTIATE(T)                                                                                 \
  template void launch_warp<T>(const WarpArgs<T>&, T*, cudaStream_t);                                         \
  template void launch_warp_backward<T>(const WarpArgs<T>&, const WarpGradArgs<T>&, int64_t, int64_t, cudaStream_t); \
  template void launch_warp_theta<T>(const WarpArgs<T>&, const WarpGradArgs<T>&, cudaStream_t);
DTIFAST_INSTANTIATE(float)
DTIFAST_INSTANTIATE(double)
#undef DTIFAST_INSTANTIATE

}  // namespace cuda
}  // namespace dtifast

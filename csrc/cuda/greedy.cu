// CUDA greedy sprite selection from sprite space (see csrc/greedy.cpp for the S0 - m*S1 + A*m*c scoring).
// Each (sweep, layer) step runs four kernels: the per-pixel terms of the other layers, the candidates'
// per-block squared errors (block sums in a fixed tree order), the choice per image (block partials added
// in order, strict < so ties go to the lowest k), and the placement of the chosen sprites. No atomics: the
// selection is the same on every run.
#include "../composite.h"
#include "../place.h"
#include "launch.h"

namespace dtifast {
namespace cuda {
namespace {

template <typename T>
__global__ void prepare_kernel(GreedyArgs<T> g, int l) {
  const int64_t HW = g.H * g.W, p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, b = blockIdx.y;
  if (p >= HW) return;
  T m[kMaxLayers];
  for (int j = 0; j < g.L; ++j) m[j] = g.cur_m[(j * g.B + b) * HW + p];
  const T* ob = g.occ + b;
  T* s0 = g.s0 + b * g.C * HW + p;
  T* s1 = g.s1 + b * g.C * HW + p;
  for (int64_t c = 0; c < g.C; ++c) s0[c * HW] = s1[c * HW] = T(0);
  for (int k = 0; k < g.L; ++k) {
    if (k == l) continue;
    const T t = visibility<T>(ob, g.B, m, g.L, k, l) * m[k];
    const T o = ob[(l * g.L + k) * g.B];
    for (int64_t c = 0; c < g.C; ++c) {
      const T v = t * g.cur_col[((k * g.B + b) * g.C + c) * HW + p];
      s0[c * HW] += v;
      s1[c * HW] += o * v;
    }
  }
  if (g.bg) {
    const T t = background_visibility<T>(m, g.L, l);
    for (int64_t c = 0; c < g.C; ++c) {
      const T v = t * g.bg[(b * g.C + c) * HW + p];
      s0[c * HW] += v;
      s1[c * HW] += v;
    }
  }
  g.a[b * HW + p] = visibility<T>(ob, g.B, m, g.L, l, -1);
}

template <typename T>
__global__ void score_kernel(GreedyArgs<T> g, int l) {
  __shared__ double sums[kThreads];
  const int64_t HW = g.H * g.W, p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t k = blockIdx.y, b = blockIdx.z;
  double err = 0;
  if (p < HW) {
    T col[kMaxChannels];
    const Placed<T> pl = place_pixel<T>(g.sprites + l * g.sl + k * g.sk + b * g.sb, g.h * g.w, g.C, g.h, g.w,
                                        g.theta + (l * g.B + b) * 6, p / g.W, p % g.W, g.H, g.W,
                                        g.noise ? g.noise + k * HW + p : nullptr, col);
    for (int64_t c = 0; c < g.C; ++c) {
      const int64_t q = (b * g.C + c) * HW + p;
      const T out = g.s0[q] - pl.mask * g.s1[q] + g.a[b * HW + p] * pl.mask * col[c];
      const double diff = static_cast<double>(out - g.x[q]);
      err += diff * diff;
    }
  }
  sums[threadIdx.x] = err;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) g.partial[(k * g.B + b) * gridDim.x + blockIdx.x] = sums[0];
}

template <typename T>
__global__ void choose_kernel(GreedyArgs<T> g, int l, int64_t blocks) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= g.B) return;
  int64_t best = 0;
  T best_dist = T(0);
  for (int64_t k = 0; k < g.K; ++k) {
    double sse = 0;
    for (int64_t q = 0; q < blocks; ++q) sse += g.partial[(k * g.B + b) * blocks + q];
    T dist = static_cast<T>(sse / static_cast<double>(g.C * g.H * g.W));
    if (g.penalty) dist += g.penalty[k];
    if (k == 0 || dist < best_dist) {  // strict: ties go to the lowest k
      best_dist = dist;
      best = k;
    }
  }
  for (int64_t k = 0; k < g.K; ++k) g.selection[(l * g.K + k) * g.B + b] = k == best ? T(1) : T(0);
  g.best[b] = best;
}

template <typename T>
__global__ void place_kernel(GreedyArgs<T> g, int l) {
  const int64_t HW = g.H * g.W, p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, b = blockIdx.y;
  if (p >= HW) return;
  const int64_t k = g.best[b];
  T col[kMaxChannels];
  const Placed<T> pl = place_pixel<T>(g.sprites + l * g.sl + k * g.sk + b * g.sb, g.h * g.w, g.C, g.h, g.w,
                                      g.theta + (l * g.B + b) * 6, p / g.W, p % g.W, g.H, g.W,
                                      g.noise ? g.noise + k * HW + p : nullptr, col);
  g.cur_m[(l * g.B + b) * HW + p] = pl.mask;
  for (int64_t c = 0; c < g.C; ++c) g.cur_col[((l * g.B + b) * g.C + c) * HW + p] = col[c];
}

}  // namespace

template <typename T>
void launch_greedy_select(const GreedyArgs<T>& args, int64_t n_iter, cudaStream_t stream) {
  const int64_t HW = args.H * args.W, blocks = greedy_blocks(HW);
  const dim3 pixels(static_cast<unsigned>(blocks), static_cast<unsigned>(args.B));
  const dim3 candidates(static_cast<unsigned>(blocks), static_cast<unsigned>(args.K), static_cast<unsigned>(args.B));
  for (int64_t it = 0; it < n_iter; ++it) {
    for (int l = 0; l < args.L; ++l) {
      prepare_kernel<T><<<pixels, kThreads, 0, stream>>>(args, l);
      score_kernel<T><<<candidates, kThreads, 0, stream>>>(args, l);
      choose_kernel<T><<<blocks_for(args.B), kThreads, 0, stream>>>(args, l, blocks);
      place_kernel<T><<<pixels, kThreads, 0, stream>>>(args, l);
    }
  }
}

template void launch_greedy_select<float>(const GreedyArgs<float>&, int64_t, cudaStream_t);
template void launch_greedy_select<double>(const GreedyArgs<double>&, int64_t, cudaStream_t);

}  // namespace cuda
}  // namespace dtifast

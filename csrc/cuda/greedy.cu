// CUDA greedy sprite selection from sprite space (see csrc/greedy.cpp for the S0 - m*S1 + A*m*c scoring).
// Each (sweep, layer) step runs four kernels: the per-pixel terms of the other layers (one thread per pixel of
// all images), the candidates' per-tile squared errors (one block per tile of kThreads pixels of one
// candidate in one image, summed in a fixed order), the choice per image (tiles added in order, strict < so
// ties go to the lowest k), and the placement of the chosen sprites (one thread per pixel). Images and
// candidates are numbered along grid x (grid-stride loops), never in grid y/z. No atomics: the selection is
// the same on every run.
#include <cuda/std/limits>

#include "../composite.h"
#include "../place.h"
#include "common.cuh"
#include "launch.h"

namespace dtifast {
namespace cuda {
namespace {

template <typename T, int N>
__global__ void prepare_kernel(GreedyArgs<T> g, int l) {
  const int64_t HW = g.H * g.W;
  for (int64_t e = first_thread(); e < g.B * HW; e += thread_stride()) {
    const int64_t b = e / HW, p = e % HW;
    T m[N];
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
}

// Candidate k of layer l placed at pixel p of image b: its mask, colours in col.
template <typename T>
__device__ __forceinline__ Placed<T> place_candidate(const GreedyArgs<T>& g, int l, int64_t k, int64_t b, int64_t p,
                                                     T* col) {
  return place_pixel<T>(g.sprites + l * g.sl + k * g.sk + b * g.sb, g.h * g.w, g.C, g.h, g.w,
                        g.theta + (l * g.B + b) * 6, g.basis, p / g.W, p % g.W, g.W,
                        g.noise ? g.noise + k * g.H * g.W + p : nullptr, col);
}

// Tile blk = (k * B + b) * tiles + t: candidate k in image b, pixels of tile t.
template <typename T>
__global__ void score_kernel(GreedyArgs<T> g, int l, int64_t tiles) {
  __shared__ double smem[kWarps];
  const int64_t HW = g.H * g.W;
  for (int64_t blk = first_block(); blk < g.K * g.B * tiles; blk += block_stride()) {
    const int64_t k = blk / (g.B * tiles), b = blk / tiles % g.B, p = blk % tiles * kThreads + threadIdx.x;
    double err = 0;
    if (p < HW) {
      T col[kMaxChannels];
      const Placed<T> pl = place_candidate(g, l, k, b, p, col);
      for (int64_t c = 0; c < g.C; ++c) {
        const int64_t q = (b * g.C + c) * HW + p;
        const T out = g.s0[q] - pl.mask * g.s1[q] + g.a[b * HW + p] * pl.mask * col[c];
        const double diff = static_cast<double>(out - g.x[q]);
        err += diff * diff;
      }
    }
    block_sum(&err, 1, smem, g.partial + blk);
  }
}

template <typename T>
__global__ void choose_kernel(GreedyArgs<T> g, int l, int64_t tiles) {
  for (int64_t b = first_thread(); b < g.B; b += thread_stride()) {
    int64_t best = 0;
    T best_dist = ::cuda::std::numeric_limits<T>::infinity();  // as the CPU kernel (a NaN distance never wins)
    for (int64_t k = 0; k < g.K; ++k) {
      double sse = 0;
      for (int64_t t = 0; t < tiles; ++t) sse += g.partial[(k * g.B + b) * tiles + t];
      T dist = static_cast<T>(sse / static_cast<double>(g.C * g.H * g.W));
      if (g.penalty) dist += g.penalty[k];
      if (dist < best_dist) {  // strict: ties go to the lowest k
        best_dist = dist;
        best = k;
      }
    }
    for (int64_t k = 0; k < g.K; ++k) g.selection[(l * g.K + k) * g.B + b] = k == best ? T(1) : T(0);
    g.best[b] = best;
  }
}

template <typename T>
__global__ void place_kernel(GreedyArgs<T> g, int l) {
  const int64_t HW = g.H * g.W;
  for (int64_t e = first_thread(); e < g.B * HW; e += thread_stride()) {
    const int64_t b = e / HW, p = e % HW;
    T col[kMaxChannels];
    const Placed<T> pl = place_candidate(g, l, g.best[b], b, p, col);
    g.cur_m[(l * g.B + b) * HW + p] = pl.mask;
    for (int64_t c = 0; c < g.C; ++c) g.cur_col[((l * g.B + b) * g.C + c) * HW + p] = col[c];
  }
}

}  // namespace

template <typename T>
void launch_greedy_select(const GreedyArgs<T>& args, int64_t n_iter, cudaStream_t stream) {
  const int64_t HW = args.H * args.W, tiles = tiles_for(HW);
  if (args.B * HW == 0) return;
  const unsigned pixels = grid_for(tiles_for(args.B * HW)), candidates = grid_for(args.K * args.B * tiles);
  with_layer_bound(args.L, [&](auto bound) {
    for (int64_t it = 0; it < n_iter; ++it) {
      for (int l = 0; l < args.L; ++l) {
        prepare_kernel<T, decltype(bound)::value><<<pixels, kThreads, 0, stream>>>(args, l);
        score_kernel<T><<<candidates, kThreads, 0, stream>>>(args, l, tiles);
        choose_kernel<T><<<grid_for(tiles_for(args.B)), kThreads, 0, stream>>>(args, l, tiles);
        place_kernel<T><<<pixels, kThreads, 0, stream>>>(args, l);
      }
    }
  });
}

template void launch_greedy_select<float>(const GreedyArgs<float>&, int64_t, cudaStream_t);
template void launch_greedy_select<double>(const GreedyArgs<double>&, int64_t, cudaStream_t);

}  // namespace cuda
}  // namespace dtifast

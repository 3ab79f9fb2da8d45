// CUDA occlusion compositing (per-pixel math of csrc/composite.h). Forward: one thread per pixel of the
// B * H * W pixels of all images (a grid-stride loop). Backward: one block per tile of kThreads pixels of one
// image; layer, mask and background gradients are written per pixel, the occlusion gradient is summed per
// tile in a fixed order into a partial row and the tiles of each image are added in order by a second kernel
// (deterministic, no atomics). Per-thread arrays are sized by the layer bound N >= L (common.cuh).
#include "../composite.h"
#include "common.cuh"
#include "launch.h"

namespace dtifast {
namespace cuda {
namespace {

template <typename T, int N>
__global__ void composite_forward_kernel(CompositeArgs<T> a, T* out) {
  for (int64_t e = first_thread(); e < a.B * a.HW; e += thread_stride()) {
    const int64_t b = e / a.HW, p = e % a.HW, at = b * a.C * a.HW + p;
    T m[N];
    for (int l = 0; l < a.L; ++l) m[l] = a.masks[(l * a.B + b) * a.HW + p];
    composite_pixel<T, N>(a.occ + b, a.B, m, a.layers + at, a.B * a.C * a.HW, a.HW, a.bg ? a.bg + at : nullptr, a.HW,
                          a.L, a.C, out + at, a.HW);
  }
}

template <typename T, int N>
__global__ void composite_backward_kernel(CompositeArgs<T> a, CompositeGradArgs<T> g, int64_t tiles) {
  __shared__ T smem[N * N * kWarps];
  const int L = a.L;
  for (int64_t blk = first_block(); blk < a.B * tiles; blk += block_stride()) {
    const int64_t b = blk / tiles, p = (blk % tiles) * kThreads + threadIdx.x;
    T docc_local[N * N];
    for (int q = 0; g.docc && q < L * L; ++q) docc_local[q] = T(0);
    if (p < a.HW) {  // threads past the image's end still take part in block_sum
      T m[N], dm[N];
      for (int l = 0; l < L; ++l) m[l] = a.masks[(l * a.B + b) * a.HW + p];
      const int64_t at = b * a.C * a.HW + p;
      composite_backward<T, N>(a.occ + b, a.B, m, a.layers + at, a.B * a.C * a.HW, a.HW, a.bg ? a.bg + at : nullptr,
                               a.HW, L, a.C, g.grad + at, a.HW, dm, g.dlayers ? g.dlayers + at : nullptr,
                               g.docc ? docc_local : nullptr, g.dbg ? g.dbg + at : nullptr);
      if (g.dmasks) {
        for (int l = 0; l < L; ++l) g.dmasks[(l * a.B + b) * a.HW + p] = dm[l];
      }
    }
    if (g.docc) block_sum(docc_local, L * L, smem, g.partial + blk * L * L);
  }
}

}  // namespace

template <typename T>
void launch_composite(const CompositeArgs<T>& a, T* out, cudaStream_t stream) {
  if (a.B * a.HW == 0) return;
  with_layer_bound(a.L, [&](auto bound) {
    composite_forward_kernel<T, decltype(bound)::value>
        <<<grid_for(tiles_for(a.B * a.HW)), kThreads, 0, stream>>>(a, out);
  });
}

template <typename T>
void launch_composite_backward(const CompositeArgs<T>& a, const CompositeGradArgs<T>& g, cudaStream_t stream) {
  if (a.B * a.HW == 0) return;
  const int64_t tiles = tiles_for(a.HW);
  with_layer_bound(a.L, [&](auto bound) {
    composite_backward_kernel<T, decltype(bound)::value><<<grid_for(a.B * tiles), kThreads, 0, stream>>>(a, g, tiles);
  });
  if (g.docc) launch_sum_partials<T>(g.partial, a.B, tiles, a.L * a.L, a.L * a.L, 1, g.docc, stream);
}

#define DTIFAST_INSTANTIATE(T)                                                                          \
  template void launch_composite<T>(const CompositeArgs<T>&, T*, cudaStream_t);                        \
  template void launch_composite_backward<T>(const CompositeArgs<T>&, const CompositeGradArgs<T>&, cudaStream_t);
DTIFAST_INSTANTIATE(float)
DTIFAST_INSTANTIATE(double)
#undef DTIFAST_INSTANTIATE

}  // namespace cuda
}  // namespace dtifast

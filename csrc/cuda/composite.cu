// CUDA occlusion compositing: one thread per pixel of one image (grid.y = image), the per-pixel math of
// csrc/composite.h. The occlusion gradient is reduced per warp before its atomic add.
#include "../composite.h"
#include "launch.h"
#include "reduce.cuh"

namespace dtifast {
namespace cuda {
namespace {

template <typename T>
__global__ void composite_forward_kernel(const T* layers, const T* masks, const T* occ, const T* bg, T* out, int L,
                                         int64_t B, int64_t C, int64_t HW) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, b = blockIdx.y;
  if (p >= HW) return;
  T m[kMaxLayers];
  for (int l = 0; l < L; ++l) m[l] = masks[(l * B + b) * HW + p];
  const int64_t at = b * C * HW + p;
  composite_pixel<T>(occ + b, B, m, layers + at, B * C * HW, HW, bg ? bg + at : nullptr, HW, L, C, out + at, HW);
}

template <typename T>
__global__ void composite_backward_kernel(const T* grad, const T* layers, const T* masks, const T* occ, const T* bg,
                                          T* dlayers, T* dmasks, T* docc, T* dbg, int L, int64_t B, int64_t C,
                                          int64_t HW) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, b = blockIdx.y;
  const bool active = p < HW;  // inactive lanes still take part in the warp reduction
  T m[kMaxLayers], dm[kMaxLayers], docc_local[kMaxLayers * kMaxLayers];
  for (int jk = 0; jk < L * L; ++jk) docc_local[jk] = T(0);
  if (active) {
    for (int l = 0; l < L; ++l) m[l] = masks[(l * B + b) * HW + p];
    const int64_t at = b * C * HW + p;
    composite_backward<T>(occ + b, B, m, layers + at, B * C * HW, HW, bg ? bg + at : nullptr, HW, L,
                                     C, grad + at, HW, dm, dlayers ? dlayers + at : nullptr,
                                     docc ? docc_local : nullptr, dbg ? dbg + at : nullptr);
    if (dmasks) {
      for (int l = 0; l < L; ++l) dmasks[(l * B + b) * HW + p] = dm[l];
    }
  }
  if (docc) {
    for (int jk = 0; jk < L * L; ++jk) warp_atomic_add(docc + jk * B + b, docc_local[jk]);
  }
}

}  // namespace

template <typename T>
void launch_composite(const T* layers, const T* masks, const T* occ, const T* bg, T* out, int L, int64_t B,
                      int64_t C, int64_t HW, cudaStream_t stream) {
  const dim3 grid(blocks_for(HW), static_cast<unsigned>(B));
  composite_forward_kernel<T><<<grid, kThreads, 0, stream>>>(layers, masks, occ, bg, out, L, B, C, HW);
}

template <typename T>
void launch_composite_backward(const T* grad, const T* layers, const T* masks, const T* occ, const T* bg,
                               T* dlayers, T* dmasks, T* docc, T* dbg, int L, int64_t B, int64_t C, int64_t HW,
                               cudaStream_t stream) {
  const dim3 grid(blocks_for(HW), static_cast<unsigned>(B));
  composite_backward_kernel<T><<<grid, kThreads, 0, stream>>>(grad, layers, masks, occ, bg, dlayers, dmasks, docc,
                                                              dbg, L, B, C, HW);
}

#define DTIFAST_INSTANTIATE(T)                                                                                 \
  template void launch_composite<T>(const T*, const T*, const T*, const T*, T*, int, int64_t, int64_t, int64_t, \
                                    cudaStream_t);                                                              \
  template void launch_composite_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, T*, T*,   \
                                             int, int64_t, int64_t, int64_t, cudaStream_t);
DTIFAST_INSTANTIATE(float)
DTIFAST_INSTANTIATE(double)
#undef DTIFAST_INSTANTIATE

}  // namespace cuda
}  // namespace dtifast

// CUDA warps (affine, projective, TPS grids fused with bilinear sampling; csrc/sampling.h): one thread per
// output pixel. The backward scatters the input gradient with atomics and writes each pixel's grid gradient;
// a second kernel, one thread per image, chains the grid gradients to theta in pixel order (no atomics, so
// the parameter gradient is the same on every run).
#include "../sampling.h"
#include "launch.h"

namespace dtifast {
namespace cuda {
namespace {

// The bilinear taps of output pixel p = (i, j) of image n (both kernels start from them).
template <typename T>
__device__ __forceinline__ Bilinear<T> output_taps(int mode, const T* theta, const T* wts, int64_t n, int64_t p,
                                                   int64_t h, int64_t w, int64_t H, int64_t W, int64_t P, int64_t g2,
                                                   bool border) {
  T gx, gy;
  grid_point<T>(mode, theta + n * P, wts, g2, p / W, p % W, H, W, gx, gy);
  return bilinear_taps<T>(gx, gy, h, w, border);
}

template <typename T>
__global__ void warp_forward_kernel(const T* x, const T* theta, const T* wts, T* out, int mode, int64_t N, int64_t C,
                                    int64_t h, int64_t w, int64_t H, int64_t W, int64_t P, int64_t g2, bool border) {
  const int64_t HW = H * W, idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * HW) return;
  const int64_t n = idx / HW, p = idx % HW;
  const Bilinear<T> b = output_taps<T>(mode, theta, wts, n, p, h, w, H, W, P, g2, border);
  for (int64_t c = 0; c < C; ++c) out[(n * C + c) * HW + p] = bilinear_read(b, x + (n * C + c) * h * w);
}

template <typename T>
__global__ void warp_backward_kernel(const T* grad, const T* x, const T* theta, const T* wts, T* dx, T* dgrid,
                                     int mode, int64_t N, int64_t C, int64_t h, int64_t w, int64_t H, int64_t W,
                                     int64_t P, int64_t g2, bool border) {
  const int64_t HW = H * W, idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * HW) return;
  const int64_t n = idx / HW, p = idx % HW;
  const Bilinear<T> b = output_taps<T>(mode, theta, wts, n, p, h, w, H, W, P, g2, border);
  T gix = 0, giy = 0;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t plane = (n * C + c) * h * w;
    bilinear_backward<T>(b, x + plane, grad[(n * C + c) * HW + p], dx ? dx + plane : nullptr, gix, giy);
  }
  if (dgrid) {
    dgrid[2 * idx] = gix * b.dx_mult;
    dgrid[2 * idx + 1] = giy * b.dy_mult;
  }
}

template <typename T>
__global__ void warp_theta_kernel(const T* theta, const T* wts, const T* dgrid, T* dtheta, int mode, int64_t N,
                                  int64_t H, int64_t W, int64_t P, int64_t g2) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  for (int64_t q = 0; q < P; ++q) dtheta[n * P + q] = T(0);
  for (int64_t i = 0; i < H; ++i) {
    for (int64_t j = 0; j < W; ++j) {
      const T* d = dgrid + 2 * (n * H * W + i * W + j);
      grid_point_backward<T>(mode, theta + n * P, wts, g2, i, j, H, W, d[0], d[1], dtheta + n * P);
    }
  }
}

}  // namespace

template <typename T>
void launch_warp(const T* x, const T* theta, const T* wts, T* out, int mode, int64_t N, int64_t C, int64_t h,
                 int64_t w, int64_t H, int64_t W, int64_t P, int64_t g2, bool border, cudaStream_t stream) {
  warp_forward_kernel<T><<<blocks_for(N * H * W), kThreads, 0, stream>>>(x, theta, wts, out, mode, N, C, h, w, H, W,
                                                                         P, g2, border);
}

template <typename T>
void launch_warp_backward(const T* grad, const T* x, const T* theta, const T* wts, T* dx, T* dgrid, T* dtheta,
                          int mode, int64_t N, int64_t C, int64_t h, int64_t w, int64_t H, int64_t W, int64_t P,
                          int64_t g2, bool border, cudaStream_t stream) {
  warp_backward_kernel<T><<<blocks_for(N * H * W), kThreads, 0, stream>>>(
      grad, x, theta, wts, dx, dtheta ? dgrid : nullptr, mode, N, C, h, w, H, W, P, g2, border);
  if (dtheta) {
    warp_theta_kernel<T><<<blocks_for(N), kThreads, 0, stream>>>(theta, wts, dgrid, dtheta, mode, N, H, W, P, g2);
  }
}

#define DTIFAST_INSTANTIATE(T)                                                                                   \
  template void launch_warp<T>(const T*, const T*, const T*, T*, int, int64_t, int64_t, int64_t, int64_t,       \
                               int64_t, int64_t, int64_t, int64_t, bool, cudaStream_t);                          \
  template void launch_warp_backward<T>(const T*, const T*, const T*, const T*, T*, T*, T*, int, int64_t,       \
                                        int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool,    \
                                        cudaStream_t);
DTIFAST_INSTANTIATE(float)
DTIFAST_INSTANTIATE(double)
#undef DTIFAST_INSTANTIATE

}  // namespace cuda
}  // namespace dtifast

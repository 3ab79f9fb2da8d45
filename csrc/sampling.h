// Grid math and bilinear sampling shared by the CPU (csrc/*.cpp) and CUDA (csrc/cuda/*.cu) kernels.
//
// Plain raw-pointer inline functions, no ATen: nvcc compiles them alone (tests/test_cuda_sources.py).
// Semantics are those of dtifast/ops/reference.py:
//   * F.grid_sample(mode="bilinear", align_corners=False), padding zeros or border;
//   * affine grids (position / similarity / affine) on pixel centres, F.affine_grid(align_corners=False);
//   * projective grids on linspace(-1, 1), homogeneous divide unless |w| <= 1e-8 (kornia 0.3);
//   * TPS grids = W @ source control points, W the (H*W, G*G) interpolation matrix from Python.
// Every forward helper has a backward twin here, so forward and backward cannot drift apart.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DTIFAST_HD __host__ __device__ __forceinline__
#else
#define DTIFAST_HD inline
#endif

namespace dtifast {

// Adds v into *p: a plain add on the CPU, where each output belongs to one thread; an atomic add on the GPU,
// where the threads of different output pixels scatter into the same input pixels.
template <typename T>
DTIFAST_HD void scatter_add(T* p, T v) {
#if defined(__CUDA_ARCH__)
  atomicAdd(p, v);
#else
  *p += v;
#endif
}

enum WarpMode : int { kAffine = 0, kProjective = 1, kTps = 2 };

constexpr double kHomogeneousEps = 1e-8;

// Normalised sampling location (gx, gy) of output pixel (i, j) of an (H, W) output. `basis` is what the
// transform applies to, computed in Python by the same torch calls as the reference (so that the kernels
// start from bit-identical coordinates; torch.linspace's vectorised CPU path differs from any scalar formula
// in the last bit, which moves pixel-exact samples across a floor):
//   kAffine:     basis (W + H,): F.affine_grid's base coordinates, the W column x's then the H row y's;
//                theta (6,) row-major 2x3 matrix;
//   kProjective: basis (W + H,): linspace(-1, 1) per axis; theta (9,) row-major homography;
//   kTps:        basis (H*W, G2): the TPS interpolation matrix; theta (G2, 2) source control points.
template <typename T>
DTIFAST_HD void grid_point(int mode, const T* theta, const T* basis, int64_t g2, int64_t i, int64_t j, int64_t W,
                           T& gx, T& gy) {
  if (mode == kAffine) {
    const T x = basis[j], y = basis[W + i];
    gx = theta[0] * x + theta[1] * y + theta[2];
    gy = theta[3] * x + theta[4] * y + theta[5];
  } else if (mode == kProjective) {
    const T x = basis[j], y = basis[W + i];
    const T u = theta[0] * x + theta[1] * y + theta[2];
    const T v = theta[3] * x + theta[4] * y + theta[5];
    const T w = theta[6] * x + theta[7] * y + theta[8];
    const T s = (w > T(kHomogeneousEps) || w < -T(kHomogeneousEps)) ? T(1) / w : T(1);
    gx = u * s;
    gy = v * s;
  } else {
    const T* row = basis + (i * W + j) * g2;
    T ax = 0, ay = 0;
    for (int64_t g = 0; g < g2; ++g) {
      ax += row[g] * theta[2 * g];
      ay += row[g] * theta[2 * g + 1];
    }
    gx = ax;
    gy = ay;
  }
}

// Backward of grid_point: adds d(loss)/d(theta) for the pixel's grid gradient (dgx, dgy) into dtheta.
template <typename T>
DTIFAST_HD void grid_point_backward(int mode, const T* theta, const T* basis, int64_t g2, int64_t i, int64_t j,
                                    int64_t W, T dgx, T dgy, T* dtheta) {
  if (mode == kAffine) {
    const T x = basis[j], y = basis[W + i];
    dtheta[0] += dgx * x;
    dtheta[1] += dgx * y;
    dtheta[2] += dgx;
    dtheta[3] += dgy * x;
    dtheta[4] += dgy * y;
    dtheta[5] += dgy;
  } else if (mode == kProjective) {
    const T x = basis[j], y = basis[W + i];
    const T w = theta[6] * x + theta[7] * y + theta[8];
    T du = dgx, dv = dgy, dw = 0;
    if (w > T(kHomogeneousEps) || w < -T(kHomogeneousEps)) {
      const T u = theta[0] * x + theta[1] * y + theta[2];
      const T v = theta[3] * x + theta[4] * y + theta[5];
      const T inv = T(1) / w;
      du = dgx * inv;
      dv = dgy * inv;
      dw = -(dgx * u + dgy * v) * inv * inv;
    }
    dtheta[0] += du * x;
    dtheta[1] += du * y;
    dtheta[2] += du;
    dtheta[3] += dv * x;
    dtheta[4] += dv * y;
    dtheta[5] += dv;
    dtheta[6] += dw * x;
    dtheta[7] += dw * y;
    dtheta[8] += dw;
  } else {
    const T* row = basis + (i * W + j) * g2;
    for (int64_t g = 0; g < g2; ++g) {
      dtheta[2 * g] += row[g] * dgx;
      dtheta[2 * g + 1] += row[g] * dgy;
    }
  }
}

// Softclip (dtifast/ops/reference.py softclip): identity on [0, 1], slope s outside.
// Written as clamp + s * min(v, 0) + s * max(v - 1, 0), every term computed unconditionally and combined
// with pure selects: the compiler turns those into min/max instructions and vectorises the loop, where
// branches (or arithmetic inside a branch, which it may not speculate) mispredict on inputs straddling
// [0, 1]. Bit-identical to the branchy form: the outer terms are exact zeros where they do not apply.
template <typename T>
DTIFAST_HD T softclip_value(T v, T s) {
  const T d = v - T(1);
  const T low = v < T(0) ? T(0) : v;
  const T clamped = low > T(1) ? T(1) : low;
  const T below = v < T(0) ? v : T(0);
  const T above = d > T(0) ? d : T(0);
  return clamped + s * below + s * above;
}

// Its derivative with the reference's subgradient: at exactly 0 or 1, clamp passes 1 and the
// minimum/maximum against 0 split their gradient in half.
template <typename T>
DTIFAST_HD T softclip_grad(T v, T s) {
  const T inner = (v == T(0) || v == T(1)) ? T(1) + s / T(2) : T(1);
  return (v < T(0) || v > T(1)) ? s : inner;
}

// The four taps of one bilinear sample of an (h, w) plane, as F.grid_sample computes them.
template <typename T>
struct Bilinear {
  int64_t offset[4];  // y * w + x of nw, ne, sw, se; only meaningful where valid
  bool valid[4];
  bool any_valid, all_valid;  // fast paths: nothing to read (outside the input), or no bounds checks
  T weight[4];
  T ix, iy;            // unnormalised (and, for border, clipped) source coordinates
  T x0, y0;            // floor(ix), floor(iy)
  T dx_mult, dy_mult;  // d ix / d gx and d iy / d gy, including the border clip's zero gradient
};

// Source coordinate of normalised coordinate g on an axis of n pixels (align_corners=False), with its
// derivative; border padding clips to [0, n - 1] (zero gradient at and beyond the ends, as torch: "borders
// are out of bounds" for the gradient). The operation order is ATen's, fused multiply-add included, because
// at the identity transform the coordinate lands exactly on a pixel and one ulp decides the floor (and so
// which neighbour the gradient uses): the CPU grid sampler computes fma(g + 1, n / 2, -0.5), the CUDA one
// ((g + 1) * n - 1) / 2 with the multiply-add fused by nvcc.
template <typename T>
DTIFAST_HD T source_index(T g, int64_t n, bool border, T& mult) {
  const T size = static_cast<T>(n);
#if defined(__CUDA_ARCH__)
  T c = fma(g + T(1), size, T(-1)) / T(2);
#else
  T c = std::fma(g + T(1), size / T(2), T(-0.5));
#endif
  mult = size / T(2);
  if (border) {
    const T hi = static_cast<T>(n - 1);
    if (c <= T(0)) {
      c = T(0);
      mult = T(0);
    } else if (c >= hi) {
      c = hi;
      mult = T(0);
    }
  }
  return c;
}

template <typename T>
DTIFAST_HD Bilinear<T> bilinear_taps(T gx, T gy, int64_t h, int64_t w, bool border) {
  Bilinear<T> b;
  b.ix = source_index<T>(gx, w, border, b.dx_mult);
  b.iy = source_index<T>(gy, h, border, b.dy_mult);
  // Coordinates far outside the image must not reach the integer conversion (it would overflow); every
  // tap of such a sample is invalid anyway. Inside the limit, floor is a truncation plus a correction,
  // which is exact and avoids a libm call per pixel.
  const T lim = static_cast<T>(h > w ? h : w) + T(2);
  const bool inside = (b.ix > -lim) && (b.ix < lim) && (b.iy > -lim) && (b.iy < lim);
  int64_t xi = inside ? static_cast<int64_t>(b.ix) : -2;
  int64_t yi = inside ? static_cast<int64_t>(b.iy) : -2;
  xi -= (inside && static_cast<T>(xi) > b.ix) ? 1 : 0;
  yi -= (inside && static_cast<T>(yi) > b.iy) ? 1 : 0;
  b.x0 = inside ? static_cast<T>(xi) : floor(b.ix);
  b.y0 = inside ? static_cast<T>(yi) : floor(b.iy);
  const T x1 = b.x0 + T(1), y1 = b.y0 + T(1);
  b.weight[0] = (x1 - b.ix) * (y1 - b.iy);
  b.weight[1] = (b.ix - b.x0) * (y1 - b.iy);
  b.weight[2] = (x1 - b.ix) * (b.iy - b.y0);
  b.weight[3] = (b.ix - b.x0) * (b.iy - b.y0);
  for (int t = 0; t < 4; ++t) {
    const int64_t x = xi + (t & 1), y = yi + (t >> 1);
    b.valid[t] = x >= 0 && x < w && y >= 0 && y < h;
    b.offset[t] = b.valid[t] ? y * w + x : 0;
  }
  b.any_valid = b.valid[0] || b.valid[1] || b.valid[2] || b.valid[3];
  b.all_valid = b.valid[0] && b.valid[1] && b.valid[2] && b.valid[3];
  return b;
}

// One channel: the bilinear interpolation of plane (h*w values) at the taps.
template <typename T>
DTIFAST_HD T bilinear_read(const Bilinear<T>& b, const T* plane) {
  if (b.all_valid) {
    return b.weight[0] * plane[b.offset[0]] + b.weight[1] * plane[b.offset[1]] + b.weight[2] * plane[b.offset[2]] +
           b.weight[3] * plane[b.offset[3]];
  }
  T acc = 0;
  for (int t = 0; t < 4; ++t) {
    if (b.valid[t]) acc += b.weight[t] * plane[b.offset[t]];
  }
  return acc;
}

// Scatters g * weight into the valid taps of dplane (the input-gradient half of bilinear_backward).
template <typename T>
DTIFAST_HD void scatter_taps(const Bilinear<T>& b, T g, T* dplane) {
  for (int t = 0; t < 4; ++t) {
    if (b.valid[t]) scatter_add(dplane + b.offset[t], g * b.weight[t]);
  }
}

// One channel's backward: scatters g * weight into dplane (if not null) and adds the gradient with
// respect to the unnormalised coordinates into (gix, giy).
template <typename T>
DTIFAST_HD void bilinear_backward(const Bilinear<T>& b, const T* plane, T g, T* dplane, T& gix, T& giy) {
  if (!b.any_valid) return;  // all taps outside: the sample was 0 and nothing depends on the location
  const T v0 = b.valid[0] ? plane[b.offset[0]] : T(0);
  const T v1 = b.valid[1] ? plane[b.offset[1]] : T(0);
  const T v2 = b.valid[2] ? plane[b.offset[2]] : T(0);
  const T v3 = b.valid[3] ? plane[b.offset[3]] : T(0);
  const T wy1 = b.y0 + T(1) - b.iy, wy0 = b.iy - b.y0;
  const T wx1 = b.x0 + T(1) - b.ix, wx0 = b.ix - b.x0;
  gix += g * ((v1 - v0) * wy1 + (v3 - v2) * wy0);
  giy += g * ((v2 - v0) * wx1 + (v3 - v1) * wx0);
  if (dplane != nullptr) scatter_taps(b, g, dplane);
}

}  // namespace dtifast

// Vector CPU warp kernels on ATen's at::vec::Vectorized: Vec<T>::size() output pixels at a time, the output
// pixels flattened over rows.
//
// Included only by the per-instruction-set files (csrc/x86/avx2.cpp, avx512.cpp), which define
// CPU_CAPABILITY first: Vectorized then has that width, and everything here lives in the inline namespace
// dtifast::<CPU_CAPABILITY>, so the builds do not collide.
// Per chunk of output pixels the source coordinates are computed a vector of pixels at a time with
// sampling.h's operations in its order and rounding (grid_point, source_index), so they are bit-identical to
// the scalar path's; the TPS grid's sums over the control points run in grid_point's order. Then the
// bilinear sampling: floor, weights, tap masks and offsets, the taps' values (one pack load per pixel and tap
// from the input in channel packs, or masked gathers per channel where the input image is much larger than
// the output, see reads_packed_input), and in the backward the coordinate gradient. The transform gradient is summed in the 16 lane partial sums of warp_kernel.h
// kThetaLanes (grid_point_backward on a vector of pixels, as the scalar path sums). The input gradient is
// summed in channel packs (one vector add per tap for all of a pixel's channels, see ChannelPack), lane by
// lane in pixel order, so results keep the scalar path's summation order (and the backward stays
// deterministic: one thread owns each input image).
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY (and CPU_CAPABILITY_<ISA>) before including warp_simd.h"
#endif

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>
#include <type_traits>

#include "warp_kernel.h"

namespace dtifast {
inline namespace CPU_CAPABILITY {

// For the helpers of the per-pixel loops: GCC left some out of line (a call through the PLT per channel and
// vector, the coordinate gradients then kept in memory).
#define DTIFAST_ALWAYS_INLINE __attribute__((always_inline)) inline

template <typename T>
using Vec = at::vec::Vectorized<T>;
template <typename T>
using IndexOf = at::vec::int_same_size_t<T>;

// Output pixels whose source coordinates are computed together (stack buffers); a multiple of every width.
constexpr int64_t kChunk = 64;

// The four taps (nw, ne, sw, se) of Vec<T>::size() bilinear samples: sampling.h's Bilinear, a lane per pixel.
template <typename T>
struct VecTaps {
  static constexpr int kLanes = Vec<T>::size();
  Vec<T> wx0, wx1, wy0, wy1;              // ix - x0, x0 + 1 - ix, iy - y0, y0 + 1 - iy
  Vec<T> weight[4];                       // zero where the tap is invalid
  Vec<T> valid[4];                        // all-ones lanes where the tap is inside the input
  Vec<T> any_valid;                       // lanes with at least one valid tap
  Vec<IndexOf<T>> offset[4];              // y * w + x, only meaningful where valid
  alignas(64) IndexOf<T> lane_offset[4][kLanes];  // the same per lane, for the scatter
  int valid_bits[4];                      // valid as bit masks: lane l is bit l

  // No lane has a valid tap: the samples are all zero and have no gradient. Placements leave much of the
  // canvas outside the sprite (a position warp at the bench's scales samples outside for 50-85% of the
  // canvas), so the kernels skip such vectors.
  bool none_valid() const { return (valid_bits[0] | valid_bits[1] | valid_bits[2] | valid_bits[3]) == 0; }

  // User-provided: an implicit constructor would be compiled without this file's target pragma, and
  // then could not inline Vectorized's (it would be an out-of-line call per block).
  VecTaps() {}
};

// Taps of the samples at (ix, iy) of an (h, w) plane; lanes from `count` on are no pixels (all taps
// invalid, so the scatter skips them). Same arithmetic as bilinear_taps: floor is exact, and the tap tests
// compare the floored coordinates as floats, which also covers coordinates too far out for an integer
// conversion (the offsets of such lanes are garbage, but never read).
template <typename T>
DTIFAST_ALWAYS_INLINE VecTaps<T> vec_taps(const Vec<T>& ix, const Vec<T>& iy, int64_t h, int64_t w, int64_t count) {
  using V = Vec<T>;
  VecTaps<T> b;
  const V zero(T(0)), one(T(1)), width(static_cast<T>(w)), height(static_cast<T>(h));
  const V x0 = ix.floor(), y0 = iy.floor();
  const V x1 = x0 + one, y1 = y0 + one;
  b.wx1 = x1 - ix;
  b.wx0 = ix - x0;
  b.wy1 = y1 - iy;
  b.wy0 = iy - y0;
  const V lanes = V::arange(T(0), T(1)) < V(static_cast<T>(count));
  const V in_x0 = (x0 >= zero) & (x0 < width), in_x1 = (x1 >= zero) & (x1 < width);
  const V in_y0 = lanes & (y0 >= zero) & (y0 < height), in_y1 = lanes & (y1 >= zero) & (y1 < height);
  b.valid[0] = in_x0 & in_y0;
  b.valid[1] = in_x1 & in_y0;
  b.valid[2] = in_x0 & in_y1;
  b.valid[3] = in_x1 & in_y1;
  b.any_valid = b.valid[0] | b.valid[1] | b.valid[2] | b.valid[3];
  b.weight[0] = b.wx1 * b.wy1;
  b.weight[1] = b.wx0 * b.wy1;
  b.weight[2] = b.wx1 * b.wy0;
  b.weight[3] = b.wx0 * b.wy0;
  // y0 * w + x0 is exact in T for the planes the dispatch lets through (warp.cpp vector_fits).
  const Vec<IndexOf<T>> nw = at::vec::convert_to_int_of_same_size<T>(y0 * width + x0);
  b.offset[0] = nw;
  b.offset[1] = nw + Vec<IndexOf<T>>(1);
  b.offset[2] = nw + Vec<IndexOf<T>>(static_cast<IndexOf<T>>(w));
  b.offset[3] = b.offset[2] + Vec<IndexOf<T>>(1);
  const int all_lanes = (1 << VecTaps<T>::kLanes) - 1;
  for (int t = 0; t < 4; ++t) {
    // Zeroed weights keep far-out (even non-finite) coordinates from turning 0 * weight into NaN.
    b.weight[t] = b.weight[t] & b.valid[t];
    b.valid_bits[t] = ~b.valid[t].zero_mask() & all_lanes;
    b.offset[t].store(b.lane_offset[t]);
  }
  return b;
}

// base[index] in the lanes of `mask` (all-ones lanes; `bits` the same as lane bits), zero elsewhere.
template <typename T>
DTIFAST_ALWAYS_INLINE Vec<T> masked_gather(const T* base, const Vec<IndexOf<T>>& index, const Vec<T>& mask, int bits) {
#if defined(CPU_CAPABILITY_AVX512)
  // ATen's 512-bit mask_gather turns its mask into lane bits with an ordered compare against all-ones, a
  // NaN pattern, which never holds (it gathers nothing): pass the lane bits directly.
  (void)mask;
  if constexpr (sizeof(T) == 4) {
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), bits, index, base, 4);
  } else {
    return _mm512_mask_i64gather_pd(_mm512_setzero_pd(), bits, index, base, 8);
  }
#else
  (void)bits;
  Vec<T> m = mask;
  return at::vec::mask_gather<sizeof(T)>(Vec<T>(T(0)), base, index, m);
#endif
}

// Tap t's values in plane, zero where invalid.
template <typename T>
DTIFAST_ALWAYS_INLINE Vec<T> gather_tap(const VecTaps<T>& b, int t, const T* plane) {
  return masked_gather<T>(plane, b.offset[t], b.valid[t], b.valid_bits[t]);
}

template <typename T>
DTIFAST_ALWAYS_INLINE void gather_taps(const VecTaps<T>& b, const T* plane, Vec<T> (&v)[4]) {
  for (int t = 0; t < 4; ++t) v[t] = gather_tap(b, t, plane);
}

// bilinear_read for every lane, in its summation order.
template <typename T>
DTIFAST_ALWAYS_INLINE Vec<T> vec_read(const VecTaps<T>& b, const T* plane) {
  Vec<T> v[4];
  gather_taps(b, plane, v);
  return b.weight[0] * v[0] + b.weight[1] * v[1] + b.weight[2] * v[2] + b.weight[3] * v[3];
}

// The coordinate half of bilinear_backward: adds channel gradient g's share into (gix, giy).
template <typename T>
DTIFAST_ALWAYS_INLINE void vec_coordinate_grad(const VecTaps<T>& b, const T* plane, const Vec<T>& g, Vec<T>& gix,
                                               Vec<T>& giy) {
  Vec<T> v[4];
  gather_taps(b, plane, v);
  gix = gix + g * ((v[1] - v[0]) * b.wy1 + (v[3] - v[2]) * b.wy0);
  giy = giy + g * ((v[2] - v[0]) * b.wx1 + (v[3] - v[1]) * b.wx0);
}

// Stack buffers of one chunk of output pixels (flattened over rows).
template <typename T>
struct PixelChunk {
  alignas(64) T ix[kChunk], iy[kChunk], dx_mult[kChunk], dy_mult[kChunk];
  alignas(64) T gix[kChunk], giy[kChunk];  // backward: coordinate gradients
  alignas(64) T bx[kChunk], by[kChunk];    // matrix modes: basis x of each pixel's column, y of its row
};

// sampling.h source_index for Vec<T>::size() grid coordinates: the same fused multiply-add (one rounding, as
// std::fma), and the border clip as selects that leave NaN coordinates alone as its branches do.
template <typename T>
Vec<T> vec_source_index(const Vec<T>& g, int64_t n, bool border, Vec<T>& mult) {
  using V = Vec<T>;
  const T size = static_cast<T>(n);
  V c = at::vec::fmadd(g + V(T(1)), V(size / T(2)), V(T(-0.5)));
  mult = V(size / T(2));
  if (border) {
    const V zero(T(0)), hi(static_cast<T>(n - 1));
    const V low = c <= zero, high = c >= hi;  // both only where hi == c == 0, where either gives 0
    c = V::blendv(V::blendv(c, hi, high), zero, low);
    mult = V::blendv(mult, zero, low | high);
  }
  return c;
}

// The source coordinates of grid points (gx, gy) of chunk pixels k .. k + n, with their derivatives.
template <typename T>
void store_source_indices(const WarpArgs<T>& a, const Vec<T>& gx, const Vec<T>& gy, int64_t k, int64_t n,
                          PixelChunk<T>& s) {
  Vec<T> mx, my;
  vec_source_index<T>(gx, a.w, a.border, mx).store(s.ix + k, n);
  vec_source_index<T>(gy, a.h, a.border, my).store(s.iy + k, n);
  mx.store(s.dx_mult + k, n);
  my.store(s.dy_mult + k, n);
}

// Source coordinates of output pixels p0 .. p0 + count of a matrix mode (affine or projective), with their
// derivatives: grid_point and source_index a vector of pixels at a time, every operation in their order and
// rounding, so the coordinates are bit-identical. The pixels' basis values (x of their column, y of their
// row) are laid out first, row segment by row segment.
template <typename T, int kMode>
void vec_matrix_coords_of(const WarpArgs<T>& a, const T* theta, int64_t p0, int64_t count, PixelChunk<T>& s) {
  using V = Vec<T>;
  constexpr int64_t L = V::size();
  for (int64_t k = 0, i = p0 / a.out_w, j = p0 % a.out_w; k < count; ++i, j = 0) {
    const int64_t n = std::min(count - k, a.out_w - j);
    std::copy(a.basis + j, a.basis + j + n, s.bx + k);
    std::fill(s.by + k, s.by + k + n, a.basis[a.out_w + i]);
    k += n;
  }
  const V t0(theta[0]), t1(theta[1]), t2(theta[2]), t3(theta[3]), t4(theta[4]), t5(theta[5]);
  for (int64_t k = 0; k < count; k += L) {
    const int64_t n = std::min(L, count - k);
    const V x = V::loadu(s.bx + k, n), y = V::loadu(s.by + k, n);
    V gx = t0 * x + t1 * y + t2, gy = t3 * x + t4 * y + t5;
    if constexpr (kMode == kProjective) {
      const V w = V(theta[6]) * x + V(theta[7]) * y + V(theta[8]);
      const V eps(static_cast<T>(kHomogeneousEps));
      const V scale = V::blendv(V(T(1)), V(T(1)) / w, (w > eps) | (w < -eps));
      gx = gx * scale;
      gy = gy * scale;
    }
    store_source_indices(a, gx, gy, k, n, s);
  }
}

// TPS grid points of output pixels p0 .. p0 + count into (gx, gy): grid_point's sums over the control points,
// in its order, for Vec<T>::size() pixels at a time, each control point's weights one load from the
// transposed basis.
template <typename T>
void vec_tps_grid(const WarpArgs<T>& a, const T* theta, int64_t p0, int64_t count, T* gx, T* gy) {
  using V = Vec<T>;
  constexpr int64_t L = V::size();
  // Vectors of pixels summed side by side: a pixel's sum over the control points is a chain of dependent
  // additions, and kBlock independent chains keep the adder busy.
  constexpr int kBlock = 4;
  const int64_t HW = a.out_h * a.out_w;
  for (int64_t j0 = 0; j0 < count; j0 += kBlock * L) {
    int64_t n[kBlock];
    V ax[kBlock], ay[kBlock];
    for (int b = 0; b < kBlock; ++b) {
      n[b] = std::clamp<int64_t>(count - j0 - b * L, 0, L);
      ax[b] = ay[b] = V(T(0));
    }
    for (int64_t g = 0; g < a.g2; ++g) {
      const V tx(theta[2 * g]), ty(theta[2 * g + 1]);
      const T* weights = a.basis_columns + g * HW + p0 + j0;
      for (int b = 0; b < kBlock; ++b) {
        const V v = V::loadu(weights + b * L, n[b]);
        ax[b] = ax[b] + v * tx;
        ay[b] = ay[b] + v * ty;
      }
    }
    for (int b = 0; b < kBlock && n[b] > 0; ++b) {
      ax[b].store(gx + j0 + b * L, n[b]);
      ay[b].store(gy + j0 + b * L, n[b]);
    }
  }
}

// Source coordinates of output pixels p0 .. p0 + count and their derivatives (sampling.h's math, vectorised).
template <typename T>
void chunk_coords(const WarpArgs<T>& a, const T* theta, int64_t p0, int64_t count, PixelChunk<T>& s) {
  if (a.mode == kAffine) return vec_matrix_coords_of<T, kAffine>(a, theta, p0, count, s);
  if (a.mode == kProjective) return vec_matrix_coords_of<T, kProjective>(a, theta, p0, count, s);
  vec_tps_grid(a, theta, p0, count, s.ix, s.iy);
  for (int64_t k = 0; k < count; k += Vec<T>::size()) {
    const int64_t n = std::min<int64_t>(Vec<T>::size(), count - k);
    store_source_indices(a, Vec<T>::loadu(s.ix + k, n), Vec<T>::loadu(s.iy + k, n), k, n, s);
  }
}

// Chunk pixels j .. j + count have no valid tap (VecTaps::none_valid): their coordinate gradient is zero.
template <typename T>
DTIFAST_ALWAYS_INLINE void store_zero_coordinate_grads(PixelChunk<T>& s, int64_t j, int64_t count) {
  Vec<T>(T(0)).store(s.gix + j, count);
  Vec<T>(T(0)).store(s.giy + j, count);
}

template <typename T>
DTIFAST_ALWAYS_INLINE VecTaps<T> chunk_taps(const WarpArgs<T>& a, const PixelChunk<T>& s, int64_t j, int64_t count) {
  return vec_taps<T>(Vec<T>::loadu(s.ix + j, count), Vec<T>::loadu(s.iy + j, count), a.h, a.w, count);
}

// The kernels prefetch the input ahead of the pixels they make: where the inputs outgrow the caches, the
// gathers otherwise wait on memory (on 320 x 5 x 128 x 128 images the forward took 90 ms without, 68 with;
// sprite batches that fit the last-level cache gain up to 15%, smaller ones nothing measurable). Where a warp
// reads is known only from its coordinates, so the prefetch takes the identity's share: each image is
// prefetched once, in the order of its rows, while its output is made, kPrefetchRows output rows ahead (at
// least kPrefetchChunks chunks). Warped samples stray a few rows from that share (by up to 3 rows of 128 for
// a TPS whose control points move by 0.05, as the bench's), and prefetching 2 chunks (one row) ahead left the
// gathers of 320 x 5 x 128 x 128 sprites waiting: forward+backward at 2 threads took 165-200 ms (affine,
// TPS) then, 130-160 ms 8 rows ahead.
constexpr int64_t kPrefetchChunks = 2;
constexpr int64_t kPrefetchRows = 8;

DTIFAST_ALWAYS_INLINE int64_t prefetch_distance(int64_t out_w) {
  return std::max(kPrefetchChunks * kChunk, kPrefetchRows * out_w);
}

// Prefetches the share of an image's C planes of plane_size values that output pixels [p, p + kChunk) of HW
// read under the identity warp: the same fraction of each plane.
template <typename T>
DTIFAST_ALWAYS_INLINE void prefetch_share(const T* image, int64_t C, int64_t plane_size, int64_t HW, int64_t p) {
  constexpr int64_t kLine = 64 / sizeof(T);
  const int64_t lo = p * plane_size / HW / kLine * kLine, hi = std::min(plane_size, (p + kChunk) * plane_size / HW);
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t k = lo; k < hi; k += kLine) __builtin_prefetch(image + c * plane_size + k);
  }
}

// Channel packs: an image held pixel-major, the values of kPack channels of a pixel side by side (a "pack", a
// GCC vector of kPack values); channels beyond kPack take further planes of packs.
// * The input gradient is summed in packs: each tap of a sample adds one pack (one vector add) instead of
//   one value per channel; at the end the packs are transposed back to (C, h, w).
// * The input is read from packs where that pays (reads_packed_input): a tap of a vector of pixels is then
//   one pack load per pixel for all its channels, where the (C, h, w) layout takes a gather per channel
//   (on Zen 4 a 16-lane gather costs about as much as 16 loads, and a sample has four taps).
// The lanes and taps keep their order, and every channel's arithmetic is the scalar path's, so the values
// are the same bits as sampling.h's.
// Unaligned vector types (aligned(sizeof(T))): the accumulator and stack buffers need no particular alignment.
template <typename T, int kPack>
struct ChannelPack {
  typedef T type __attribute__((vector_size(kPack * sizeof(T)), aligned(sizeof(T))));
};

// Transposes between kPack rows of Vec<T>::size() values (row c: channel c of the block's pixels) and the
// same values pixel-major (the block's packs, one after the other).
#if defined(CPU_CAPABILITY_AVX512)
// For 16-lane floats, a network of two-register permutes (vpermt2ps) in log2(kPack) levels: kPack log2(kPack)
// permutes per direction (24 for packs of 8) where ATen's transpose_mxn runs its 16 x 16 network (64) whatever
// the shape. Level s merges groups of 2^s registers, which hold the values of 2^s channels ordered by their
// place in the pixel-major result and split over the registers in that order, two groups at a time: merged
// register 2i + h takes half h of the values of register i of both groups. After the last level, register v
// holds the result's values 16 v .. 16 v + 15. The permute indices come from simulating the levels once.
template <int kPack>
struct PackNetwork {
  static constexpr int kLevels = kPack == 4 ? 2 : kPack == 8 ? 3 : 4;
  // Merge k of level s: registers first(s, k) and first(s, k) + 2^s into halves out(s, k) and out(s, k) + 1.
  static constexpr int first(int s, int k) { return ((k >> s) << (s + 1)) | (k & ((1 << s) - 1)); }
  static constexpr int out(int s, int k) { return ((k >> s) << (s + 1)) | ((k & ((1 << s) - 1)) << 1); }

  alignas(64) int32_t pack_index[kLevels][kPack / 2][2][16];    // half h: permute(first, idx, second)
  alignas(64) int32_t unpack_index[kLevels][kPack / 2][2][16];  // first, second: permute(half 0, idx, half 1)

  PackNetwork() {
    int value[kPack][16];  // value[r][lane]: the result position (pixel * kPack + channel) held there
    for (int c = 0; c < kPack; ++c) {
      for (int p = 0; p < 16; ++p) value[c][p] = p * kPack + c;
    }
    for (int s = 0; s < kLevels; ++s) {
      int next[kPack][16];
      for (int k = 0; k < kPack / 2; ++k) {
        int merged[32], order[32];
        for (int m = 0; m < 16; ++m) {
          merged[m] = value[first(s, k)][m];
          merged[16 + m] = value[first(s, k) + (1 << s)][m];
        }
        for (int m = 0; m < 32; ++m) order[m] = m;
        std::sort(order, order + 32, [&](int x, int y) { return merged[x] < merged[y]; });
        for (int h = 0; h < 2; ++h) {
          for (int m = 0; m < 16; ++m) {
            const int from = order[16 * h + m];  // a lane of (first, second) taken as one 32-lane vector
            pack_index[s][k][h][m] = from;
            next[out(s, k) + h][m] = merged[from];
            unpack_index[s][k][from >> 4][from & 15] = 16 * h + m;
          }
        }
      }
      std::copy(&next[0][0], &next[0][0] + kPack * 16, &value[0][0]);
    }
  }
};

template <int kPack>
const PackNetwork<kPack>& pack_network() {
  static const PackNetwork<kPack> network;
  return network;
}
#endif

template <typename T, int kPack>
void rows_to_packs(const T* rows, T* packs) {
  constexpr int L = Vec<T>::size();
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    // Fully unrolled, so that the register indices are constants and the registers stay registers.
    using Net = PackNetwork<kPack>;
    const Net& net = pack_network<kPack>();
    __m512 r[kPack], next[kPack];
#pragma GCC unroll 16
    for (int c = 0; c < kPack; ++c) r[c] = _mm512_load_ps(rows + c * L);
#pragma GCC unroll 4
    for (int s = 0; s < Net::kLevels; ++s) {
#pragma GCC unroll 8
      for (int k = 0; k < kPack / 2; ++k) {
        const int a = Net::first(s, k), o = Net::out(s, k);
        next[o] = _mm512_permutex2var_ps(r[a], _mm512_load_si512(net.pack_index[s][k][0]), r[a + (1 << s)]);
        next[o + 1] = _mm512_permutex2var_ps(r[a], _mm512_load_si512(net.pack_index[s][k][1]), r[a + (1 << s)]);
      }
#pragma GCC unroll 16
      for (int c = 0; c < kPack; ++c) r[c] = next[c];
    }
#pragma GCC unroll 16
    for (int v = 0; v < kPack; ++v) _mm512_store_ps(packs + v * L, r[v]);
    return;
  }
#endif
  at::vec::transpose_mxn<T, kPack, L>(rows, L, packs, kPack);
}

template <typename T, int kPack>
void packs_to_rows(const T* packs, T* rows) {
  constexpr int L = Vec<T>::size();
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    using Net = PackNetwork<kPack>;
    const Net& net = pack_network<kPack>();
    __m512 r[kPack], prev[kPack];
#pragma GCC unroll 16
    for (int v = 0; v < kPack; ++v) r[v] = _mm512_loadu_ps(packs + v * L);
#pragma GCC unroll 4
    for (int s = Net::kLevels - 1; s >= 0; --s) {
#pragma GCC unroll 8
      for (int k = 0; k < kPack / 2; ++k) {
        const int a = Net::first(s, k), o = Net::out(s, k);
        prev[a] = _mm512_permutex2var_ps(r[o], _mm512_load_si512(net.unpack_index[s][k][0]), r[o + 1]);
        prev[a + (1 << s)] = _mm512_permutex2var_ps(r[o], _mm512_load_si512(net.unpack_index[s][k][1]), r[o + 1]);
      }
#pragma GCC unroll 16
      for (int c = 0; c < kPack; ++c) r[c] = prev[c];
    }
#pragma GCC unroll 16
    for (int c = 0; c < kPack; ++c) _mm512_store_ps(rows + c * L, r[c]);
    return;
  }
#endif
  at::vec::transpose_mxn<T, L, kPack>(packs, kPack, rows, L);
}

// An (h, w) image's channels in packs (the accumulator of an input gradient, or a packed input), in memory
// aligned for the transposes' whole-vector stores.
template <typename T, int kPack>
struct PackedPlanes {
  int64_t trash;   // per plane: h * w rounded up to whole vectors (the transposes read whole blocks); then
                   // Vec<T>::size() spare packs (redirect_invalid_taps)
  int64_t pixels;  // trash + Vec<T>::size()
  int64_t values;  // all planes' values
  std::unique_ptr<T[], void (*)(void*)> storage;  // nullptr where not needed

  PackedPlanes(int64_t C, int64_t hw, bool needed)
      : trash((hw + Vec<T>::size() - 1) / Vec<T>::size() * Vec<T>::size()),
        pixels(trash + Vec<T>::size()),
        values((C + kPack - 1) / kPack * pixels * kPack),
        storage(needed ? aligned_array(values) : nullptr, &std::free) {
    if (needed && storage == nullptr) throw std::bad_alloc();
  }

  T* data() const { return storage.get(); }
  T* plane(int64_t c0) const { return data() + (c0 / kPack) * pixels * kPack; }

 private:
  static T* aligned_array(int64_t n) {
    const size_t bytes = (static_cast<size_t>(n) * sizeof(T) + 63) / 64 * 64;  // aligned_alloc wants multiples
    return static_cast<T*>(std::aligned_alloc(64, bytes));
  }
};

// Image (C, h, w) into packed planes; the channel slots past C, the padding to whole vectors and the spare
// packs zero, so that an invalid tap, redirected to a spare pack, reads zeros as a masked gather does.
template <typename T, int kPack>
void pack_image(const T* image, int64_t C, int64_t hw, const PackedPlanes<T, kPack>& packed) {
  constexpr int64_t L = Vec<T>::size();
  alignas(64) T rows[kPack][L];
  for (int64_t c0 = 0; c0 < C; c0 += kPack) {
    const int64_t channels = std::min<int64_t>(kPack, C - c0);
    std::fill(&rows[0][0], &rows[0][0] + kPack * L, T(0));
    T* plane = packed.plane(c0);
    for (int64_t p = 0; p < hw; p += L) {
      const int64_t count = std::min(L, hw - p);  // lanes past it load zeros
      for (int64_t c = 0; c < channels; ++c) Vec<T>::loadu(image + (c0 + c) * hw + p, count).store(rows[c]);
      rows_to_packs<T, kPack>(&rows[0][0], plane + p * kPack);
    }
    std::fill(plane + packed.trash * kPack, plane + packed.pixels * kPack, T(0));
  }
}

// Sends the scatter of lane l's invalid taps to accumulator pack trash + l, which no input pixel owns and
// nothing reads: pack_scatter then needs no test per tap and lane (tiles whose rows are narrower than a vector
// have invalid taps in nearly every vector, and those tests were mispredicted branches). Such a tap's weight
// is zero, and the valid taps' sums are unchanged.
template <typename T>
void redirect_invalid_taps(VecTaps<T>& b, int64_t trash) {
  using I = Vec<IndexOf<T>>;
  const I spare = I::arange(static_cast<IndexOf<T>>(trash), 1);
  for (int t = 0; t < 4; ++t) {
    I::blendv(spare, b.offset[t], at::vec::cast<IndexOf<T>>(b.valid[t])).store(b.lane_offset[t]);
  }
}

// Adds the packs gt[l] (one per lane: its channels' gradients, channel-major within the pack) times each
// tap's weight into the accumulator plane, lane by lane, taps in order (as scatter_taps); invalid taps
// redirected (redirect_invalid_taps).
// Where a lane's nw (sw) tap is the pack that the previous lane's ne (se) tap has just updated (neighbouring
// pixels of a warp near the identity), its value is taken from the register that holds it rather than
// reloaded: the same sum, but the update no longer waits for the previous one's store to reach the load
// (a chain through memory that bound the scatter; an input gradient alone got 8-12% faster on GTSRB's,
// SVHN's and Horse's shapes). Nothing else writes that pack in between: within a lane the taps are distinct
// packs, or invalid ones redirected to the lane's own spare pack.
template <typename T, int kPack>
void pack_scatter(const VecTaps<T>& b, const T (*gt)[kPack], const T (*weight)[VecTaps<T>::kLanes], T* plane) {
  using P = typename ChannelPack<T, kPack>::type;
  using Index = IndexOf<T>;
  constexpr int L = VecTaps<T>::kLanes;
  P* d = reinterpret_cast<P*>(plane);
  Index last_ne = -1, last_se = -1;  // the previous lane's ne and se packs, whose values are in ne and se
  P ne{}, se{};
  for (int l = 0; l < L; ++l) {
    const P g = *reinterpret_cast<const P*>(gt[l]);
    // Through the offsets, not as nw + 1 etc.: the compiler would pair the neighbouring taps into 8-byte
    // updates, which overlap the previous lane's by half and so defeat store-to-load forwarding.
    const Index o[4] = {b.lane_offset[0][l], b.lane_offset[1][l], b.lane_offset[2][l], b.lane_offset[3][l]};
    const P nw = (o[0] == last_ne ? ne : d[o[0]]) + g * weight[0][l];
    d[o[0]] = nw;
    ne = d[o[1]] + g * weight[1][l];
    d[o[1]] = ne;
    const P sw = (o[2] == last_se ? se : d[o[2]]) + g * weight[2][l];
    d[o[2]] = sw;
    se = d[o[3]] + g * weight[3][l];
    d[o[3]] = se;
    last_ne = o[1];
    last_se = o[3];
  }
}

// The lanes' samples of one plane of packed input (invalid taps redirected to its zero spare packs) with tap
// weights weight[t][lane], summed in bilinear_read's order: a pack per lane, transposed so that rows[c] holds
// channel c's samples (rows past the plane's channels hold the pack slots that no channel owns).
template <typename T, int kPack>
DTIFAST_ALWAYS_INLINE void packed_read(const VecTaps<T>& b, const T (*weight)[VecTaps<T>::kLanes], const T* plane,
                                       T (*rows)[VecTaps<T>::kLanes]) {
  using P = typename ChannelPack<T, kPack>::type;
  const P* d = reinterpret_cast<const P*>(plane);
  alignas(64) T packs[VecTaps<T>::kLanes][kPack];
  for (int l = 0; l < VecTaps<T>::kLanes; ++l) {
    *reinterpret_cast<P*>(packs[l]) = weight[0][l] * d[b.lane_offset[0][l]] + weight[1][l] * d[b.lane_offset[1][l]] +
                                      weight[2][l] * d[b.lane_offset[2][l]] + weight[3][l] * d[b.lane_offset[3][l]];
  }
  packs_to_rows<T, kPack>(&packs[0][0], &rows[0][0]);
}

// The factors of bilinear_backward's coordinate gradient for one plane of packed input, per lane and channel,
// transposed as packed_read's: x_rows[c][lane] = (v1 - v0) wy1 + (v3 - v2) wy0 and
// y_rows[c][lane] = (v2 - v0) wx1 + (v3 - v1) wx0, where w[0 .. 3] hold the lanes' wx1, wx0, wy1, wy0.
template <typename T, int kPack>
DTIFAST_ALWAYS_INLINE void packed_coordinate_factors(const VecTaps<T>& b, const T (*w)[VecTaps<T>::kLanes],
                                                     const T* plane, T (*x_rows)[VecTaps<T>::kLanes],
                                                     T (*y_rows)[VecTaps<T>::kLanes]) {
  using P = typename ChannelPack<T, kPack>::type;
  const P* d = reinterpret_cast<const P*>(plane);
  alignas(64) T x_packs[VecTaps<T>::kLanes][kPack], y_packs[VecTaps<T>::kLanes][kPack];
  for (int l = 0; l < VecTaps<T>::kLanes; ++l) {
    const P v0 = d[b.lane_offset[0][l]], v1 = d[b.lane_offset[1][l]];
    const P v2 = d[b.lane_offset[2][l]], v3 = d[b.lane_offset[3][l]];
    *reinterpret_cast<P*>(x_packs[l]) = (v1 - v0) * w[2][l] + (v3 - v2) * w[3][l];
    *reinterpret_cast<P*>(y_packs[l]) = (v2 - v0) * w[0][l] + (v3 - v1) * w[1][l];
  }
  packs_to_rows<T, kPack>(&x_packs[0][0], &x_rows[0][0]);
  packs_to_rows<T, kPack>(&y_packs[0][0], &y_rows[0][0]);
}

// The lanes' wx1, wx0, wy1, wy0 into w[0 .. 3], for packed_coordinate_factors.
template <typename T>
DTIFAST_ALWAYS_INLINE void store_lerp_weights(const VecTaps<T>& b, T (*w)[VecTaps<T>::kLanes]) {
  b.wx1.store(w[0]);
  b.wx0.store(w[1]);
  b.wy1.store(w[2]);
  b.wy0.store(w[3]);
}

// Runs f(std::integral_constant<int, kPack>()) for the narrowest pack of 4, 8 or 16 channels that holds C
// (more channels: several planes of packs of 16), and returns what it returns.
template <typename F>
DTIFAST_ALWAYS_INLINE auto with_pack_width(int64_t C, F&& f) {
  if (C <= 4) return f(std::integral_constant<int, 4>());
  if (C <= 8) return f(std::integral_constant<int, 8>());
  return f(std::integral_constant<int, 16>());
}

// Whether the kernels read the input from packs: packing takes a pass over an input image per output (per
// input image in the backward), which pays unless that image is much larger than the output.
constexpr int64_t kPackedInputRatio = 4;

template <typename T>
bool reads_packed_input(const WarpArgs<T>& a) {
  return a.h * a.w <= kPackedInputRatio * a.out_h * a.out_w;
}

// Output pixels are taken flattened over rows, so a vector spans row ends (an output row narrower than
// or not a multiple of the vector would leave lanes idle).
template <typename T>
void vec_forward_gathered(const WarpArgs<T>& a, T* out, int64_t begin, int64_t end) {
  constexpr int64_t L = Vec<T>::size();
  const int64_t hw = a.h * a.w, HW = a.out_h * a.out_w;
  PixelChunk<T> s;
  for (int64_t q = begin; q < end;) {
    const int64_t n = q / HW, p0 = q - n * HW, len = std::min({kChunk, HW - p0, end - q});
    const T* img = a.x + a.input_of(n) * a.C * hw;
    T* o = out + n * a.C * HW + p0;
    chunk_coords<T>(a, a.theta + n * a.P, p0, len, s);
    const int64_t ahead = p0 + prefetch_distance(a.out_w);
    if (ahead < HW) {
      prefetch_share(img, a.C, hw, HW, ahead);
    } else if (q - p0 + HW < end) {  // the next output's image, if this thread makes that output
      prefetch_share(a.x + a.input_of(n + 1) * a.C * hw, a.C, hw, HW, ahead - HW);
    }
    for (int64_t j = 0; j < len; j += L) {
      const int64_t count = std::min(L, len - j);
      const VecTaps<T> b = chunk_taps(a, s, j, count);
      if (b.none_valid()) {
        for (int64_t c = 0; c < a.C; ++c) Vec<T>(T(0)).store(o + c * HW + j, count);
        continue;
      }
      for (int64_t c = 0; c < a.C; ++c) vec_read(b, img + c * hw).store(o + c * HW + j, count);
    }
    q += len;
  }
}

// The same from packed input: each input image packed when its first output (of this thread's) is made.
template <typename T, int kPack>
void vec_forward_packed(const WarpArgs<T>& a, T* out, int64_t begin, int64_t end) {
  constexpr int64_t L = Vec<T>::size();
  const int64_t hw = a.h * a.w, HW = a.out_h * a.out_w;
  const PackedPlanes<T, kPack> input(a.C, hw, true);
  int64_t packed = -1;  // the input image in `input`
  PixelChunk<T> s;
  alignas(64) T weight[4][L];
  alignas(64) T rows[kPack][L];
  for (int64_t q = begin; q < end;) {
    const int64_t n = q / HW, p0 = q - n * HW, len = std::min({kChunk, HW - p0, end - q});
    if (a.input_of(n) != packed) {
      packed = a.input_of(n);
      pack_image(a.x + packed * a.C * hw, a.C, hw, input);
    }
    T* o = out + n * a.C * HW + p0;
    chunk_coords<T>(a, a.theta + n * a.P, p0, len, s);
    for (int64_t j = 0; j < len; j += L) {
      const int64_t count = std::min(L, len - j);
      VecTaps<T> b = chunk_taps(a, s, j, count);
      if (b.none_valid()) {
        for (int64_t c = 0; c < a.C; ++c) Vec<T>(T(0)).store(o + c * HW + j, count);
        continue;
      }
      redirect_invalid_taps(b, input.trash);
      for (int t = 0; t < 4; ++t) b.weight[t].store(weight[t]);
      for (int64_t c0 = 0; c0 < a.C; c0 += kPack) {
        packed_read<T, kPack>(b, weight, input.plane(c0), rows);
        const int64_t channels = std::min<int64_t>(kPack, a.C - c0);
        for (int64_t c = 0; c < channels; ++c) Vec<T>::loadu(rows[c]).store(o + (c0 + c) * HW + j, count);
      }
    }
    q += len;
  }
}

template <typename T>
void vec_forward(const WarpArgs<T>& a, T* out, int64_t begin, int64_t end) {
  if (!reads_packed_input(a)) return vec_forward_gathered(a, out, begin, end);
  with_pack_width(a.C, [&](auto pack) { vec_forward_packed<T, decltype(pack)::value>(a, out, begin, end); });
}

// The transform gradient's partial sums of one output (warp_kernel.h kThetaLanes): partial (k, lane) at
// sums[k * kThetaLanes + lane], so that chunk pixel q's lanes, q % kThetaLanes onwards, are one vector load.
// Chunks start at multiples of kChunk, itself a multiple of kThetaLanes, so chunk pixel q is output pixel
// p0 + q of the same lane.
template <typename T>
constexpr int64_t kLaneVectors = kThetaLanes / Vec<T>::size();

// The partial sums of K parameters (consecutive rows of kThetaLanes at sums) to and from vector registers.
template <typename T, int K>
DTIFAST_ALWAYS_INLINE void load_lane_sums(const T* sums, Vec<T> (&acc)[K][kLaneVectors<T>]) {
  constexpr int64_t L = Vec<T>::size();
  for (int k = 0; k < K; ++k) {
    for (int64_t r = 0; r < kLaneVectors<T>; ++r) acc[k][r] = Vec<T>::loadu(sums + k * kThetaLanes + r * L);
  }
}

template <typename T, int K>
DTIFAST_ALWAYS_INLINE void store_lane_sums(const Vec<T> (&acc)[K][kLaneVectors<T>], T* sums) {
  constexpr int64_t L = Vec<T>::size();
  for (int k = 0; k < K; ++k) {
    for (int64_t r = 0; r < kLaneVectors<T>; ++r) acc[k][r].store(sums + k * kThetaLanes + r * L);
  }
}

// Adds the transform gradients of a matrix mode's chunk pixels 0 .. count (grid gradients s.gix, s.giy,
// basis values s.bx, s.by) into the partial sums: sampling.h grid_point_backward a vector of pixels at a
// time, every operation in its order and rounding (the homogeneous divide's test as a select).
template <typename T, int kMode>
void vec_matrix_theta_grad_of(const T* theta, int64_t count, const PixelChunk<T>& s, T* sums) {
  using V = Vec<T>;
  constexpr int64_t L = V::size(), R = kLaneVectors<T>;
  constexpr int kP = kMode == kAffine ? 6 : 9;
  V acc[kP][R];
  load_lane_sums<T, kP>(sums, acc);
  for (int64_t q = 0; q < count; q += L) {
    // Lanes past count load zeros: zero gradients, which leave every partial sum as it is.
    const int64_t n = std::min(L, count - q), r = (q / L) % R;
    const V x = V::loadu(s.bx + q, n), y = V::loadu(s.by + q, n);
    V du = V::loadu(s.gix + q, n), dv = V::loadu(s.giy + q, n);
    if constexpr (kMode == kProjective) {
      const V w = V(theta[6]) * x + V(theta[7]) * y + V(theta[8]);
      const V u = V(theta[0]) * x + V(theta[1]) * y + V(theta[2]);
      const V v = V(theta[3]) * x + V(theta[4]) * y + V(theta[5]);
      const V eps(static_cast<T>(kHomogeneousEps));
      const V divide = (w > eps) | (w < -eps);
      const V inv = V(T(1)) / w;
      const V dw = ((du * u + dv * v).neg() * inv * inv) & divide;
      du = V::blendv(du, du * inv, divide);
      dv = V::blendv(dv, dv * inv, divide);
      acc[6][r] = acc[6][r] + dw * x;
      acc[7][r] = acc[7][r] + dw * y;
      acc[8][r] = acc[8][r] + dw;
    }
    acc[0][r] = acc[0][r] + du * x;
    acc[1][r] = acc[1][r] + du * y;
    acc[2][r] = acc[2][r] + du;
    acc[3][r] = acc[3][r] + dv * x;
    acc[4][r] = acc[4][r] + dv * y;
    acc[5][r] = acc[5][r] + dv;
  }
  store_lane_sums<T, kP>(acc, sums);
}

// The same for TPS, control points g0 .. g0 + kGroup, chunk pixels 0 .. count of output pixels p0 onwards:
// each control point's two partial sums over the pixels, its weights read from the transposed basis. A group
// of control points shares the gradient loads, and its 2 kGroup sums are independent chains of additions.
template <typename T, int kGroup>
void vec_tps_theta_grad_group(const WarpArgs<T>& a, int64_t g0, int64_t p0, int64_t count, const PixelChunk<T>& s,
                              T* sums) {
  using V = Vec<T>;
  constexpr int64_t L = V::size(), R = kLaneVectors<T>;
  const int64_t HW = a.out_h * a.out_w;
  const T* weights = a.basis_columns + g0 * HW + p0;
  T* group_sums = sums + 2 * g0 * kThetaLanes;
  V acc[2 * kGroup][R];
  load_lane_sums<T, 2 * kGroup>(group_sums, acc);
  for (int64_t q = 0; q < count; q += L) {
    const int64_t n = std::min(L, count - q), r = (q / L) % R;
    const V dgx = V::loadu(s.gix + q, n), dgy = V::loadu(s.giy + q, n);
    for (int g = 0; g < kGroup; ++g) {
      const V weight = V::loadu(weights + g * HW + q, n);
      acc[2 * g][r] = acc[2 * g][r] + weight * dgx;
      acc[2 * g + 1][r] = acc[2 * g + 1][r] + weight * dgy;
    }
  }
  store_lane_sums<T, 2 * kGroup>(acc, group_sums);
}

template <typename T>
void vec_tps_theta_grad(const WarpArgs<T>& a, int64_t p0, int64_t count, const PixelChunk<T>& s, T* sums) {
  constexpr int kGroup = 4;
  int64_t g0 = 0;
  for (; g0 + kGroup <= a.g2; g0 += kGroup) vec_tps_theta_grad_group<T, kGroup>(a, g0, p0, count, s, sums);
  for (; g0 < a.g2; ++g0) vec_tps_theta_grad_group<T, 1>(a, g0, p0, count, s, sums);
}

template <typename T>
void chunk_theta_grad(const WarpArgs<T>& a, const T* theta, int64_t p0, int64_t count, const PixelChunk<T>& s,
                      T* sums) {
  if (a.mode == kAffine) return vec_matrix_theta_grad_of<T, kAffine>(theta, count, s, sums);
  if (a.mode == kProjective) return vec_matrix_theta_grad_of<T, kProjective>(theta, count, s, sums);
  vec_tps_theta_grad(a, p0, count, s, sums);
}

// One output's backward: its input gradient into acc (if it has storage), its transform gradient into
// dtheta_n (if not null) through theta_sums (kThetaLanes * P partial sums, vec_matrix_theta_grad_of). The
// coordinate gradient reads the input from `input` where that holds the output's input image packed, from
// a.x (gathers) otherwise.
template <typename T, int kPack>
void vec_backward_output(const WarpArgs<T>& a, const T* grad, int64_t n, const PackedPlanes<T, kPack>& acc,
                         const PackedPlanes<T, kPack>& input, T* dtheta_n, T* theta_sums) {
  constexpr int64_t L = Vec<T>::size();
  const int64_t hw = a.h * a.w, HW = a.out_h * a.out_w;
  const bool want_coords = dtheta_n != nullptr, packed = want_coords && input.data() != nullptr;
  const bool redirect = acc.data() != nullptr || packed;  // the taps index packs
  const T* theta = a.theta + n * a.P;
  const T* img = a.x + a.input_of(n) * a.C * hw;
  const T* g = grad + n * a.C * HW;
  PixelChunk<T> s;
  // A block's channel gradients channel-major, then pixel-major. Rows past a partial group's channels are
  // summed into pack slots that no channel owns (unpack_grad never reads them); zero-initialised, so that
  // they never hold a slow denormal or a NaN pattern from the stack.
  alignas(64) T gc_rows[kPack][L] = {};
  alignas(64) T gt[L][kPack];
  alignas(64) T weight[4][L];
  alignas(64) T lerp[4][L];  // packed coordinate gradient: the lanes' wx1, wx0, wy1, wy0
  alignas(64) T x_rows[kPack][L], y_rows[kPack][L];
  if (want_coords) std::fill(theta_sums, theta_sums + kThetaLanes * a.P, T(0));
  for (int64_t p0 = 0; p0 < HW; p0 += kChunk) {
    const int64_t len = std::min(kChunk, HW - p0);
    chunk_coords<T>(a, theta, p0, len, s);
    // The input, for the coordinate gradient's gathers (prefetching the output gradient, read in order,
    // gained nothing).
    const int64_t ahead = p0 + prefetch_distance(a.out_w);
    if (want_coords && !packed && ahead < HW) prefetch_share(img, a.C, hw, HW, ahead);
    for (int64_t j = 0; j < len; j += L) {
      const int64_t count = std::min(L, len - j);
      VecTaps<T> b = chunk_taps(a, s, j, count);
      if (b.none_valid()) {
        // Nothing to scatter (every tap would go to the spare packs) and a zero coordinate gradient.
        if (want_coords) store_zero_coordinate_grads(s, j, count);
        continue;
      }
      if (redirect) redirect_invalid_taps(b, acc.trash);
      if (acc.data()) {
        for (int t = 0; t < 4; ++t) b.weight[t].store(weight[t]);
      }
      if (packed) store_lerp_weights(b, lerp);
      Vec<T> gix(T(0)), giy(T(0));
      for (int64_t c0 = 0; c0 < a.C; c0 += kPack) {
        const int64_t channels = std::min<int64_t>(kPack, a.C - c0);
        if (packed) {
          packed_coordinate_factors<T, kPack>(b, lerp, input.plane(c0), x_rows, y_rows);
        }
        for (int64_t c = 0; c < channels; ++c) {
          const Vec<T> gc = Vec<T>::loadu(g + (c0 + c) * HW + p0 + j, count);
          if (packed) {
            gix = gix + gc * Vec<T>::loadu(x_rows[c]);
            giy = giy + gc * Vec<T>::loadu(y_rows[c]);
          } else if (want_coords) {
            vec_coordinate_grad(b, img + (c0 + c) * hw, gc, gix, giy);
          }
          if (acc.data()) gc.store(gc_rows[c]);
        }
        if (acc.data() == nullptr) continue;
        rows_to_packs<T, kPack>(&gc_rows[0][0], &gt[0][0]);
        pack_scatter<T, kPack>(b, gt, weight, acc.plane(c0));
      }
      if (want_coords) {
        // bilinear_backward skips samples without a valid tap: their coordinate gradient is exactly zero.
        ((gix & b.any_valid) * Vec<T>::loadu(s.dx_mult + j, count)).store(s.gix + j, count);
        ((giy & b.any_valid) * Vec<T>::loadu(s.dy_mult + j, count)).store(s.giy + j, count);
      }
    }
    if (want_coords) chunk_theta_grad(a, theta, p0, len, s, theta_sums);
  }
  if (want_coords) add_lane_sums(theta_sums, a.P, kThetaLanes, 1, dtheta_n);
}

// The accumulator's packs transposed into dx_image (C, h, w), or added into it.
template <typename T, int kPack>
void unpack_grad(const WarpArgs<T>& a, const PackedPlanes<T, kPack>& acc, T* dx_image, bool add_into = false) {
  constexpr int64_t L = Vec<T>::size();
  const int64_t hw = a.h * a.w;
  alignas(64) T rows[kPack][L];
  for (int64_t c0 = 0; c0 < a.C; c0 += kPack) {
    const int64_t channels = std::min<int64_t>(kPack, a.C - c0);
    const T* plane = acc.plane(c0);
    for (int64_t p = 0; p < hw; p += L) {
      const int64_t count = std::min(L, hw - p);
      packs_to_rows<T, kPack>(plane + p * kPack, &rows[0][0]);
      for (int64_t c = 0; c < channels; ++c) {
        T* d = dx_image + (c0 + c) * hw + p;
        const Vec<T> v = Vec<T>::loadu(rows[c]);
        (add_into ? Vec<T>::loadu(d, count) + v : v).store(d, count);
      }
    }
  }
}

template <typename T, int kPack>
void vec_backward_packed(const WarpArgs<T>& a, const T* grad, const OutputsByInput& outputs, int64_t begin,
                         int64_t end, T* dx, T* dtheta) {
  const int64_t hw = a.h * a.w;
  // One accumulator and one packed input per call of this function (per thread), reused for its input images.
  const PackedPlanes<T, kPack> acc(a.C, hw, dx != nullptr);
  const PackedPlanes<T, kPack> input(a.C, hw, dtheta != nullptr && reads_packed_input(a));
  std::unique_ptr<T[]> theta_sums(dtheta ? new T[kThetaLanes * a.P] : nullptr);
  for (int64_t k = begin; k < end; ++k) {
    if (acc.data()) std::fill(acc.data(), acc.data() + acc.values, T(0));
    bool packed = false;  // input k is packed at its first output (under index=, an input may have none)
    outputs.for_each_output(k, [&](int64_t n) {
      if (input.data() && !packed) {
        pack_image(a.x + k * a.C * hw, a.C, hw, input);
        packed = true;
      }
      vec_backward_output<T, kPack>(a, grad, n, acc, input, dtheta ? dtheta + n * a.P : nullptr, theta_sums.get());
    });
    if (acc.data()) unpack_grad<T, kPack>(a, acc, dx + k * a.C * hw);
  }
}

template <typename T>
void vec_backward(const WarpArgs<T>& a, const T* grad, const OutputsByInput& outputs, int64_t begin, int64_t end,
                  T* dx, T* dtheta) {
  with_pack_width(a.C, [&](auto pack) {
    vec_backward_packed<T, decltype(pack)::value>(a, grad, outputs, begin, end, dx, dtheta);
  });
}

// src (rows, cols) into dst (cols, rows): ATen's vector transposes, 16 x 16 blocks for AVX-512 floats.
template <typename T>
void vec_transpose(const T* src, int64_t rows, int64_t cols, T* dst) {
  constexpr int64_t kRows = int64_t(1) << 20;  // transpose_mxn counts in int
  for (int64_t i = 0; i < rows; i += kRows) {
    const int m = static_cast<int>(std::min(kRows, rows - i));
    at::vec::transpose_mxn<T>(src + i * cols, cols, dst + i, rows, m, static_cast<int>(cols));
  }
}

template <typename T>
WarpKernels<T> vec_warp_kernels() {
  return {&vec_forward<T>, &vec_backward<T>, &vec_transpose<T>};
}

}  // namespace CPU_CAPABILITY
}  // namespace dtifast

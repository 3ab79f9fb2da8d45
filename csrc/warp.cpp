// Fused grid generation + bilinear sampling on CPU for every warp family (affine, projective, TPS).
//
//   dtifast::warp_theta(x, theta, basis, index, mode, out_h, out_w, border) -> out
//   dtifast::warp_theta_backward(grad, x, theta, basis, index, mode, out_h, out_w, border, need_x, need_theta)
//     -> (dx, dtheta)
//
// x (N, C, h, w), or (K, C, h, w) shared inputs with index (N,) int64: output n warps x[index[n]];
// theta (N, 6) affine matrix, (N, 9) homography or (N, G2, 2) TPS source points, and basis the base
// coordinates (W + H,) or the (H*W, G2) TPS matrix (sampling.h grid_point). Python builds theta from the
// raw head outputs, so autograd chains dtheta to the parameters.
// The forward parallelises over output pixels; the backward over input images, each input's gradient (and
// the theta gradients of its outputs) summed by one thread in output and pixel order, so results do not
// depend on the thread count.
// The per-pixel kernels below are the scalar reference; on CPUs with AVX2 or AVX-512 the vector kernels of
// warp_simd.h run instead (cpu_capability.h), with the same coordinates and summation order.
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <mutex>
#include <vector>

#include "checks.h"
#include "cpu_capability.h"
#include "warp_kernel.h"

namespace dtifast {
namespace {

int64_t theta_size(const at::Tensor& theta) { return theta.numel() / std::max<int64_t>(theta.size(0), 1); }

template <typename T>
void scalar_forward(const WarpArgs<T>& a, T* out, int64_t begin, int64_t end) {
  const int64_t hw = a.h * a.w, HW = a.out_h * a.out_w;
  for (int64_t q = begin; q < end; ++q) {
    const int64_t n = q / HW, p = q - n * HW, i = p / a.out_w, j = p - i * a.out_w;
    const T* img = a.x + a.input_of(n) * a.C * hw;
    T gx, gy;
    grid_point<T>(a.mode, a.theta + n * a.P, a.basis, a.g2, i, j, a.out_w, gx, gy);
    const Bilinear<T> b = bilinear_taps<T>(gx, gy, a.h, a.w, a.border);
    T* o = out + n * a.C * HW + p;
    for (int64_t c = 0; c < a.C; ++c) o[c * HW] = bilinear_read(b, img + c * hw);
  }
}

// Output n's backward: adds its input gradient into dx_image (nullptr: not needed) and its transform gradient
// into dtheta_n (nullptr: not needed), pixel by pixel, the latter through lane_sums (kThetaLanes * P values,
// partial (k, lane) at lane * P + k; warp_kernel.h kThetaLanes).
template <typename T>
void scalar_backward_output(const WarpArgs<T>& a, const T* grad, int64_t n, T* dx_image, T* dtheta_n,
                            T* lane_sums) {
  const int64_t hw = a.h * a.w, HW = a.out_h * a.out_w;
  const T* theta = a.theta + n * a.P;
  const T* img = a.x + a.input_of(n) * a.C * hw;
  const T* g = grad + n * a.C * HW;
  if (dtheta_n) std::fill(lane_sums, lane_sums + kThetaLanes * a.P, T(0));
  for (int64_t i = 0; i < a.out_h; ++i) {
    for (int64_t j = 0; j < a.out_w; ++j) {
      T gx, gy;
      grid_point<T>(a.mode, theta, a.basis, a.g2, i, j, a.out_w, gx, gy);
      const Bilinear<T> b = bilinear_taps<T>(gx, gy, a.h, a.w, a.border);
      T gix = 0, giy = 0;
      for (int64_t c = 0; c < a.C; ++c) {
        bilinear_backward<T>(b, img + c * hw, g[c * HW + i * a.out_w + j], dx_image ? dx_image + c * hw : nullptr,
                             gix, giy);
      }
      if (dtheta_n) {
        T* sums = lane_sums + (i * a.out_w + j) % kThetaLanes * a.P;
        grid_point_backward<T>(a.mode, theta, a.basis, a.g2, i, j, a.out_w, gix * b.dx_mult, giy * b.dy_mult, sums);
      }
    }
  }
  if (dtheta_n) add_lane_sums(lane_sums, a.P, 1, a.P, dtheta_n);
}

template <typename T>
void scalar_backward(const WarpArgs<T>& a, const T* grad, const OutputsByInput& outputs, int64_t begin, int64_t end,
                     T* dx, T* dtheta) {
  const int64_t image = a.C * a.h * a.w;
  std::vector<T> lane_sums(dtheta ? kThetaLanes * a.P : 0);
  for (int64_t k = begin; k < end; ++k) {
    T* dx_image = dx ? dx + k * image : nullptr;
    if (dx_image) std::fill(dx_image, dx_image + image, T(0));
    outputs.for_each_output(k, [&](int64_t n) {
      scalar_backward_output(a, grad, n, dx_image, dtheta ? dtheta + n * a.P : nullptr, lane_sums.data());
    });
  }
}

// The vector kernels address taps by y * w + x computed in T (warp_simd.h vec_taps), exact below 2^24 in
// float; larger planes take the scalar path.
template <typename T>
bool vector_fits(const WarpArgs<T>& a) {
  const double limit = sizeof(T) == 4 ? 16777216.0 : 4503599627370496.0;
  return static_cast<double>(a.h + 2) * static_cast<double>(a.w + 2) < limit;
}

template <typename T>
WarpKernels<T> kernels_for(const WarpArgs<T>& a) {
  const WarpKernels<T> scalar{&scalar_forward<T>, &scalar_backward<T>, nullptr};
#if DTIFAST_X86_SIMD
  if (vector_fits(a)) return table_for_capability(scalar, &warp_kernels_avx2<T>, &warp_kernels_avx512<T>);
#endif
  return scalar;
}

// Transposed TPS bases of recent calls, reused while the same basis tensor comes back unchanged (the same
// tensor, so the same storage, and the same version): Python passes one cached basis per grid size, output
// size, dtype and device (geometry.tps_weights), so a training loop transposes each basis once instead of in
// every forward and backward (on 8 x 5 x 128 x 128 outputs the cache took a TPS forward+backward from 1.86 to
// 1.63 ms). Entries hold their source tensor, so its memory cannot be reused by another tensor while it is
// cached.
class TransposedBases {
 public:
  // The cached transpose of basis, or an undefined tensor.
  at::Tensor find(const at::Tensor& basis) {
    if (basis.is_inference()) return {};  // no version counter to tell a modified basis
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Entry& e : entries_) {
      if (e.source.is_same(basis) && e.version == basis._version()) return e.columns;
    }
    return {};
  }

  void add(const at::Tensor& basis, const at::Tensor& columns) {
    if (basis.is_inference()) return;
    std::lock_guard<std::mutex> lock(mutex_);
    entries_[next_] = {basis, basis._version(), columns};
    next_ = (next_ + 1) % kEntries;
  }

 private:
  struct Entry {
    at::Tensor source;
    int64_t version = 0;
    at::Tensor columns;
  };
  static constexpr int kEntries = 4;  // a model warps to a few output sizes at most
  std::mutex mutex_;
  std::array<Entry, kEntries> entries_;
  int next_ = 0;
};

TransposedBases& transposed_bases() {
  static TransposedBases cache;
  return cache;
}

// The transposed TPS basis that the vector kernels read (WarpArgs::basis_columns), set in a; the returned
// tensor holds it (undefined where not needed). Transposed by the table's vector code: ATen's strided copy
// (basis.t().contiguous()) took as long as a 128 x 128 warp's forward.
template <typename T>
at::Tensor set_basis_columns(WarpArgs<T>& a, const WarpKernels<T>& kernels, const at::Tensor& basis) {
  if (a.mode != kTps || kernels.transpose == nullptr) return {};
  at::Tensor columns = transposed_bases().find(basis);
  if (!columns.defined()) {
    columns = at::empty({a.g2, a.out_h * a.out_w}, basis.options());
    kernels.transpose(basis.const_data_ptr<T>(), a.out_h * a.out_w, a.g2, columns.mutable_data_ptr<T>());
    transposed_bases().add(basis, columns);
  }
  a.basis_columns = columns.const_data_ptr<T>();
  return columns;
}

template <typename T>
WarpArgs<T> warp_args(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& basis, const int64_t* index,
                      int64_t mode, int64_t out_h, int64_t out_w, bool border) {
  return {x.const_data_ptr<T>(), theta.const_data_ptr<T>(), basis.const_data_ptr<T>(), index,
          static_cast<int>(mode), border, x.size(1), x.size(2), x.size(3), out_h, out_w, theta_size(theta),
          mode == kTps ? theta.size(1) : 0};
}

at::Tensor warp_cpu(const at::Tensor& x_in, const at::Tensor& theta_in, const at::Tensor& basis_in,
                    const std::optional<at::Tensor>& index_in, int64_t mode, int64_t out_h, int64_t out_w,
                    bool border) {
  check_warp(x_in, theta_in, basis_in, index_in, mode, out_h, out_w, at::kCPU);
  const at::Tensor x = x_in.contiguous(), theta = theta_in.contiguous(), basis = basis_in.contiguous();
  at::Tensor index_holder;
  const int64_t* index = optional_ptr<int64_t>(index_in, index_holder);
  const int64_t N = theta.size(0), C = x.size(1);
  at::Tensor out = at::empty({N, C, out_h, out_w}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "warp_cpu", [&] {
    WarpArgs<scalar_t> a = warp_args<scalar_t>(x, theta, basis, index, mode, out_h, out_w, border);
    const WarpKernels<scalar_t> kernels = kernels_for(a);
    const at::Tensor columns = set_basis_columns(a, kernels, basis);
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(64, 4096 / std::max<int64_t>(C, 1));
    at::parallel_for(0, N * out_h * out_w, grain,
                     [&](int64_t begin, int64_t end) { kernels.forward(a, dst, begin, end); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> warp_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                     const at::Tensor& theta_in,
                                                     const at::Tensor& basis_in,
                                                     const std::optional<at::Tensor>& index_in, int64_t mode,
                                                     int64_t out_h, int64_t out_w, bool border, bool need_x,
                                                     bool need_theta) {
  check_warp(x_in, theta_in, basis_in, index_in, mode, out_h, out_w, at::kCPU);
  check_like(grad_in, "grad", x_in);
  check_sizes(grad_in, "grad", {theta_in.size(0), x_in.size(1), out_h, out_w});
  const at::Tensor x = x_in.contiguous(), theta = theta_in.contiguous(), basis = basis_in.contiguous(),
                   grad = grad_in.contiguous();
  const int64_t K = x.size(0), N = theta.size(0);
  // Outputs grouped by input image, in output order (a stable counting sort): one thread owns an input
  // and sums every gradient into it in that order, so there are no races and no dependence on threads.
  std::vector<int64_t> first(K + 1, 0), order(N);
  at::Tensor index_holder;
  const int64_t* index = optional_ptr<int64_t>(index_in, index_holder);
  for (int64_t n = 0; n < N; ++n) ++first[(index ? index[n] : n) + 1];
  for (int64_t k = 0; k < K; ++k) first[k + 1] += first[k];
  {
    std::vector<int64_t> fill(first.begin(), first.end() - 1);
    for (int64_t n = 0; n < N; ++n) order[fill[index ? index[n] : n]++] = n;
  }
  // A custom op returns tensors only: an empty tensor stands for a gradient that was not requested. The
  // kernels write dx image by image, each by the thread that owns the image.
  at::Tensor dx = need_x ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor dtheta = need_theta ? at::zeros_like(theta) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "warp_backward_cpu", [&] {
    WarpArgs<scalar_t> a = warp_args<scalar_t>(x, theta, basis, index, mode, out_h, out_w, border);
    const WarpKernels<scalar_t> kernels = kernels_for(a);
    const at::Tensor columns = set_basis_columns(a, kernels, basis);
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* dsrc = need_x ? dx.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* dth = need_theta ? dtheta.mutable_data_ptr<scalar_t>() : nullptr;
    const OutputsByInput outputs{first.data(), order.data()};
    at::parallel_for(0, K, 1,
                     [&](int64_t begin, int64_t end) { kernels.backward(a, g, outputs, begin, end, dsrc, dth); });
  });
  return {dx, dtheta};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dtifast, m) {
  m.def(
      "warp_theta(Tensor x, Tensor theta, Tensor basis, Tensor? index, int mode, int out_h, int out_w, "
      "bool border) -> Tensor");
  m.def(
      "warp_theta_backward(Tensor grad, Tensor x, Tensor theta, Tensor basis, Tensor? index, int mode, int out_h, "
      "int out_w, bool border, bool need_x, bool need_theta) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dtifast, CPU, m) {
  m.impl("warp_theta", &warp_cpu);
  m.impl("warp_theta_backward", &warp_backward_cpu);
}

}  // namespace dtifast

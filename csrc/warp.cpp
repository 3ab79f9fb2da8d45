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
// The forward parallelises over output rows; the backward over input images, each input's gradient (and
// the theta gradients of its outputs) summed by one thread in output and pixel order, so results do not
// depend on the thread count.
#include <torch/library.h>

#include "checks.h"
#include "sampling.h"

namespace dtifast {
namespace {

int64_t theta_size(const at::Tensor& theta) { return theta.numel() / std::max<int64_t>(theta.size(0), 1); }

// Output n's input image: index[n], or n without an index.
struct InputOf {
  const int64_t* index;
  int64_t operator()(int64_t n) const { return index ? index[n] : n; }
};

at::Tensor warp_cpu(const at::Tensor& x_in, const at::Tensor& theta_in, const at::Tensor& basis_in,
                    const std::optional<at::Tensor>& index_in, int64_t mode, int64_t out_h, int64_t out_w,
                    bool border) {
  check_warp(x_in, theta_in, basis_in, index_in, mode, out_h, out_w, at::kCPU);
  const at::Tensor x = x_in.contiguous(), theta = theta_in.contiguous(), basis = basis_in.contiguous();
  at::Tensor index_holder;
  const InputOf input_of{optional_ptr<int64_t>(index_in, index_holder)};
  const int64_t N = theta.size(0), C = x.size(1), h = x.size(2), w = x.size(3), P = theta_size(theta);
  const int64_t g2 = mode == kTps ? theta.size(1) : 0;
  at::Tensor out = at::empty({N, C, out_h, out_w}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "warp_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    const scalar_t* th = theta.const_data_ptr<scalar_t>();
    const scalar_t* bas = basis.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(out_w * C, 1));
    at::parallel_for(0, N * out_h, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / out_h, i = row % out_h;
        const scalar_t* img = src + input_of(n) * C * h * w;
        for (int64_t j = 0; j < out_w; ++j) {
          scalar_t gx, gy;
          grid_point<scalar_t>(mode, th + n * P, bas, g2, i, j, out_w, gx, gy);
          const Bilinear<scalar_t> b = bilinear_taps<scalar_t>(gx, gy, h, w, border);
          scalar_t* o = dst + (n * C * out_h + i) * out_w + j;
          for (int64_t c = 0; c < C; ++c) o[c * out_h * out_w] = bilinear_read(b, img + c * h * w);
        }
      }
    });
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
  const int64_t K = x.size(0), N = theta.size(0), C = x.size(1), h = x.size(2), w = x.size(3), P = theta_size(theta);
  const int64_t g2 = mode == kTps ? theta.size(1) : 0;
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
  // A custom op returns tensors only: an empty tensor stands for a gradient that was not requested.
  at::Tensor dx = need_x ? at::zeros_like(x) : at::empty({0}, x.options());
  at::Tensor dtheta = need_theta ? at::zeros_like(theta) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "warp_backward_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* th = theta.const_data_ptr<scalar_t>();
    const scalar_t* bas = basis.const_data_ptr<scalar_t>();
    scalar_t* dsrc = need_x ? dx.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* dth = need_theta ? dtheta.mutable_data_ptr<scalar_t>() : nullptr;
    const int64_t HW = out_h * out_w, hw = h * w;
    at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
      for (int64_t q = first[begin]; q < first[end]; ++q) {
        const int64_t n = order[q], k = index ? index[n] : n;
        const scalar_t* img = src + k * C * hw;
        const scalar_t* gimg = g + n * C * HW;
        for (int64_t i = 0; i < out_h; ++i) {
          for (int64_t j = 0; j < out_w; ++j) {
            scalar_t gx, gy;
            grid_point<scalar_t>(mode, th + n * P, bas, g2, i, j, out_w, gx, gy);
            const Bilinear<scalar_t> b = bilinear_taps<scalar_t>(gx, gy, h, w, border);
            scalar_t gix = 0, giy = 0;
            for (int64_t c = 0; c < C; ++c) {
              bilinear_backward<scalar_t>(b, img + c * hw, gimg[c * HW + i * out_w + j],
                                          dsrc ? dsrc + (k * C + c) * hw : nullptr, gix, giy);
            }
            if (dth) {
              grid_point_backward<scalar_t>(mode, th + n * P, bas, g2, i, j, out_w, gix * b.dx_mult,
                                            giy * b.dy_mult, dth + n * P);
            }
          }
        }
      }
    });
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

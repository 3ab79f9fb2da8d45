// Per-channel colour transform on CPU (dtifast/ops/reference.py color_transform):
//   y_c = softclip((1 + g_c) x_c + b_c) for the n_color colour channels, y_c = x_c for the extra channels.
//
//   dtifast::color_transform(x, params, slope) -> y
//   dtifast::color_transform_backward(grad, x, params, slope, need_x, need_params) -> (dx, dparams)
//
// x (N, CE, h, w) with CE >= n_color; params (N, 2 * n_color) interleaved (g_0, b_0, g_1, b_1, ...). Python
// expands a one-channel image to n_color channels before the call. Both directions parallelise over the
// (image, channel) planes and run color_kernel.h's per-plane kernels: the scalar ones (the reference) or the
// vector ones (color_simd.h, on CPUs with AVX2 or AVX-512, cpu_capability.h). A plane's gain and bias
// gradients are summed by the thread that owns it, in pixel order on both paths, so results do not depend on
// the thread count or the instruction set.
#include <torch/library.h>

#include "color_kernel.h"
#include "common.h"
#include "cpu_capability.h"

namespace dtifast {
namespace {

void check_color(const at::Tensor& x, const at::Tensor& params) {
  check_device(x, "x", at::kCPU);
  TORCH_CHECK(x.dim() == 4, "x must be (N, C + E, h, w), got ", x.sizes());
  check_like(params, "params", x);
  TORCH_CHECK(params.dim() == 2 && params.size(0) == x.size(0) && params.size(1) % 2 == 0 && params.size(1) > 0 &&
                  params.size(1) / 2 <= x.size(1),
              "params must be (N, 2 * n_color) with n_color <= x.size(1) = ", x.size(1), ", got ", params.sizes());
}

template <typename T>
ColorKernels<T> kernels_for() {
  const ColorKernels<T> scalar{&scalar_color_forward<T>, &scalar_color_backward<T>};
#if DTIFAST_X86_SIMD
  return table_for_capability(scalar, &color_kernels_avx2<T>, &color_kernels_avx512<T>);
#else
  return scalar;
#endif
}

// Runs colour(n, c, plane) for every colour plane (c < n_color) and extra(plane) for the others, in parallel
// over the (image, channel) planes of an (N, CE, hw) tensor.
template <typename Colour, typename Extra>
void for_each_plane(int64_t N, int64_t CE, int64_t hw, int64_t n_color, const Colour& colour, const Extra& extra) {
  at::parallel_for(0, N * CE, std::max<int64_t>(1, 16384 / std::max<int64_t>(hw, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / CE, c = plane % CE;
      if (c < n_color) {
        colour(n, c, plane);
      } else {
        extra(plane);
      }
    }
  });
}

at::Tensor color_transform_cpu(const at::Tensor& x_in, const at::Tensor& params_in, double slope) {
  check_color(x_in, params_in);
  const at::Tensor x = x_in.contiguous(), params = params_in.contiguous();
  const int64_t N = x.size(0), CE = x.size(1), hw = x.size(2) * x.size(3), n_color = params.size(1) / 2;
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "color_transform_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    const scalar_t* par = params.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(slope);
    const ColorKernels<scalar_t> kernels = kernels_for<scalar_t>();
    for_each_plane(
        N, CE, hw, n_color,
        [&](int64_t n, int64_t c, int64_t plane) {
          const scalar_t gain = scalar_t(1) + par[n * 2 * n_color + 2 * c], bias = par[n * 2 * n_color + 2 * c + 1];
          kernels.forward(src + plane * hw, dst + plane * hw, hw, gain, bias, s);
        },
        [&](int64_t plane) { std::copy(src + plane * hw, src + (plane + 1) * hw, dst + plane * hw); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> color_transform_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                                const at::Tensor& params_in, double slope,
                                                                bool need_x, bool need_params) {
  check_color(x_in, params_in);
  check_like(grad_in, "grad", x_in);
  check_sizes(grad_in, "grad", std::vector<int64_t>(x_in.sizes().begin(), x_in.sizes().end()));
  const at::Tensor x = x_in.contiguous(), params = params_in.contiguous(), grad = grad_in.contiguous();
  const int64_t N = x.size(0), CE = x.size(1), hw = x.size(2) * x.size(3), n_color = params.size(1) / 2;
  at::Tensor dx = at::empty_like(x), dparams = at::empty_like(params);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "color_transform_backward_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    const scalar_t* par = params.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* dsrc = dx.mutable_data_ptr<scalar_t>();
    scalar_t* dpar = dparams.mutable_data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(slope);
    const ColorKernels<scalar_t> kernels = kernels_for<scalar_t>();
    for_each_plane(
        N, CE, hw, n_color,
        [&](int64_t n, int64_t c, int64_t plane) {
          const int64_t k = n * 2 * n_color + 2 * c;  // the plane's gain; its bias follows
          kernels.backward(src + plane * hw, g + plane * hw, dsrc + plane * hw, hw, scalar_t(1) + par[k], par[k + 1],
                           s, dpar + k, dpar + k + 1);
        },
        [&](int64_t plane) { std::copy(g + plane * hw, g + (plane + 1) * hw, dsrc + plane * hw); });
  });
  // Both gradients come out of one pass; an empty tensor stands for one that was not asked for.
  const at::Tensor empty = at::empty({0}, x.options());
  return {need_x ? dx : empty, need_params ? dparams : empty};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dtifast, m) {
  m.def("color_transform(Tensor x, Tensor params, float slope) -> Tensor");
  m.def(
      "color_transform_backward(Tensor grad, Tensor x, Tensor params, float slope, bool need_x, bool need_params) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dtifast, CPU, m) {
  m.impl("color_transform", &color_transform_cpu);
  m.impl("color_transform_backward", &color_transform_backward_cpu);
}

}  // namespace dtifast

// CUDA bindings of dtifast::composite / composite_backward (kernels in composite.cu).
#include <torch/library.h>

#include "bind.h"

namespace dtifast {
namespace cuda {
namespace {

at::Tensor composite_cuda(const at::Tensor& layers_in, const at::Tensor& masks_in, const at::Tensor& occ_in,
                          const std::optional<at::Tensor>& bg_in) {
  check_composite(layers_in, masks_in, occ_in, bg_in, at::kCUDA);
  const c10::cuda::CUDAGuard guard(layers_in.device());
  const at::Tensor layers = layers_in.contiguous(), masks = masks_in.contiguous(), occ = occ_in.contiguous(),
                   bg = contiguous_or_undefined(bg_in);
  const int64_t L = layers.size(0), B = layers.size(1), C = layers.size(2), HW = layers.size(3) * layers.size(4);
  at::Tensor out = at::empty({B, C, layers.size(3), layers.size(4)}, layers.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(layers.scalar_type(), "composite_cuda", [&] {
    launch_composite<scalar_t>(layers.const_data_ptr<scalar_t>(), masks.const_data_ptr<scalar_t>(),
                               occ.const_data_ptr<scalar_t>(), in_ptr<scalar_t>(bg), out.mutable_data_ptr<scalar_t>(),
                               static_cast<int>(L), B, C, HW, current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& layers_in, const at::Tensor& masks_in, const at::Tensor& occ_in,
    const std::optional<at::Tensor>& bg_in, bool need_layers, bool need_masks, bool need_occ, bool need_bg) {
  check_composite(layers_in, masks_in, occ_in, bg_in, at::kCUDA);
  check_like(grad_in, "grad", layers_in);
  check_sizes(grad_in, "grad", {layers_in.size(1), layers_in.size(2), layers_in.size(3), layers_in.size(4)});
  const c10::cuda::CUDAGuard guard(layers_in.device());
  const at::Tensor layers = layers_in.contiguous(), masks = masks_in.contiguous(), occ = occ_in.contiguous(),
                   bg = contiguous_or_undefined(bg_in), grad = grad_in.contiguous();
  const int64_t L = layers.size(0), B = layers.size(1), C = layers.size(2), HW = layers.size(3) * layers.size(4);
  const auto empty = at::empty({0}, layers.options());
  at::Tensor dlayers = need_layers ? at::zeros_like(layers) : empty;
  at::Tensor dmasks = need_masks ? at::empty_like(masks) : empty;
  at::Tensor docc = need_occ ? at::zeros_like(occ) : empty;
  at::Tensor dbg = need_bg && bg.defined() ? at::zeros_like(bg) : empty;
  if (grad.numel() == 0) return {dlayers, dmasks, docc, dbg};
  AT_DISPATCH_FLOATING_TYPES(layers.scalar_type(), "composite_backward_cuda", [&] {
    launch_composite_backward<scalar_t>(grad.const_data_ptr<scalar_t>(), layers.const_data_ptr<scalar_t>(),
                                        masks.const_data_ptr<scalar_t>(), occ.const_data_ptr<scalar_t>(),
                                        in_ptr<scalar_t>(bg), out_ptr<scalar_t>(dlayers), out_ptr<scalar_t>(dmasks),
                                        out_ptr<scalar_t>(docc), out_ptr<scalar_t>(dbg), static_cast<int>(L), B, C,
                                        HW, current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dlayers, dmasks, docc, dbg};
}

}  // namespace

TORCH_LIBRARY_IMPL(dtifast, CUDA, m) {
  m.impl("composite", &composite_cuda);
  m.impl("composite_backward", &composite_backward_cuda);
}

}  // namespace cuda
}  // namespace dtifast

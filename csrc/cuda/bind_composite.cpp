// CUDA bindings of dtifast::composite_layers / composite_layers_backward (kernels in composite.cu; the op
// contract is csrc/composite.cpp's). Every gradient is deterministic (no atomics).
#include <torch/library.h>

#include "bind.h"

namespace dtifast {
namespace cuda {
namespace {

template <typename T>
CompositeArgs<T> composite_args(const at::Tensor& layers, const at::Tensor& masks, const at::Tensor& occ,
                                const at::Tensor& bg) {
  return {layers.const_data_ptr<T>(), masks.const_data_ptr<T>(), occ.const_data_ptr<T>(), in_ptr<T>(bg),
          static_cast<int>(layers.size(0)), layers.size(1), layers.size(2), layers.size(3) * layers.size(4)};
}

at::Tensor composite_cuda(const at::Tensor& layers_in, const at::Tensor& masks_in, const at::Tensor& occ_in,
                          const std::optional<at::Tensor>& bg_in) {
  check_composite(layers_in, masks_in, occ_in, bg_in, at::kCUDA);
  const c10::cuda::CUDAGuard guard(layers_in.device());
  const at::Tensor layers = layers_in.contiguous(), masks = masks_in.contiguous(), occ = occ_in.contiguous(),
                   bg = contiguous_or_undefined(bg_in);
  at::Tensor out = at::empty({layers.size(1), layers.size(2), layers.size(3), layers.size(4)}, layers.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(layers.scalar_type(), "composite_layers_cuda", [&] {
    launch_composite<scalar_t>(composite_args<scalar_t>(layers, masks, occ, bg), out.mutable_data_ptr<scalar_t>(),
                               current_stream());
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
  const int64_t L = layers.size(0), B = layers.size(1), HW = layers.size(3) * layers.size(4);
  const auto empty = at::empty({0}, layers.options());
  at::Tensor dlayers = need_layers ? at::zeros_like(layers) : empty;
  at::Tensor dmasks = need_masks ? at::empty_like(masks) : empty;
  at::Tensor docc = need_occ ? at::zeros_like(occ) : empty;
  at::Tensor dbg = need_bg && bg.defined() ? at::zeros_like(bg) : empty;
  // No pixel: nothing to launch (every buffer is then empty, or zeros for occ). C = 0 still launches: the
  // mask gradients are written (zeros).
  if (B * HW == 0) return {dlayers, dmasks, docc, dbg};
  at::Tensor partial = need_occ ? at::empty({B, tiles_for(HW), L * L}, layers.options()) : empty;
  AT_DISPATCH_FLOATING_TYPES(layers.scalar_type(), "composite_layers_backward_cuda", [&] {
    const CompositeGradArgs<scalar_t> g{grad.const_data_ptr<scalar_t>(), out_ptr<scalar_t>(dlayers),
                                        out_ptr<scalar_t>(dmasks), out_ptr<scalar_t>(docc), out_ptr<scalar_t>(dbg),
                                        out_ptr<scalar_t>(partial)};
    launch_composite_backward<scalar_t>(composite_args<scalar_t>(layers, masks, occ, bg), g, current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dlayers, dmasks, docc, dbg};
}

}  // namespace

TORCH_LIBRARY_IMPL(dtifast, CUDA, m) {
  m.impl("composite_layers", &composite_cuda);
  m.impl("composite_layers_backward", &composite_backward_cuda);
}

}  // namespace cuda
}  // namespace dtifast

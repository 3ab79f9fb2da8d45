// Occlusion compositing of L layers over an optional background on CPU (per-pixel math in composite.h).
//
//   dtifast::composite_layers(layers, masks, occlusion, background) -> out
//   dtifast::composite_layers_backward(grad, layers, masks, occlusion, background, need_layers, need_masks,
//                                      need_occlusion, need_background) -> (dlayers, dmasks, docclusion, dbackground)
//
// layers (L, B, C, H, W), masks (L, B, 1, H, W), occlusion (L, L, B), background (B, C, H, W) or None.
// Work is split into fixed pixel chunks of each image; the occlusion gradient is summed per chunk and the
// chunks are added in order, so the result is the same for any number of threads.
#include <torch/library.h>

#include "checks.h"
#include "composite.h"

namespace dtifast {
namespace {

constexpr int64_t kChunk = 2048;  // pixels per work item: a fixed split, independent of the thread count

at::Tensor composite_cpu(const at::Tensor& layers_in, const at::Tensor& masks_in, const at::Tensor& occ_in,
                         const std::optional<at::Tensor>& bg_in) {
  check_composite(layers_in, masks_in, occ_in, bg_in, at::kCPU);
  const at::Tensor layers = layers_in.contiguous(), masks = masks_in.contiguous(), occ = occ_in.contiguous();
  const int64_t L = layers.size(0), B = layers.size(1), C = layers.size(2), HW = layers.size(3) * layers.size(4);
  at::Tensor out = at::empty({B, C, layers.size(3), layers.size(4)}, layers.options());
  at::Tensor bg_holder;
  const int64_t chunks = (HW + kChunk - 1) / kChunk;
  AT_DISPATCH_FLOATING_TYPES(layers.scalar_type(), "composite_cpu", [&] {
    const scalar_t* xs = layers.const_data_ptr<scalar_t>();
    const scalar_t* ms = masks.const_data_ptr<scalar_t>();
    const scalar_t* os = occ.const_data_ptr<scalar_t>();
    const scalar_t* bg = optional_ptr<scalar_t>(bg_in, bg_holder);
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
      scalar_t m[kMaxLayers];
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / chunks, p0 = (item % chunks) * kChunk, p1 = std::min(HW, p0 + kChunk);
        for (int64_t p = p0; p < p1; ++p) {
          for (int64_t l = 0; l < L; ++l) m[l] = ms[(l * B + b) * HW + p];
          const scalar_t* x = xs + b * C * HW + p;
          const scalar_t* bgp = bg ? bg + b * C * HW + p : nullptr;
          composite_pixel<scalar_t>(os + b, B, m, x, B * C * HW, HW, bgp, HW, static_cast<int>(L), C,
                                    dst + b * C * HW + p, HW);
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& layers_in, const at::Tensor& masks_in, const at::Tensor& occ_in,
    const std::optional<at::Tensor>& bg_in, bool need_layers, bool need_masks, bool need_occ, bool need_bg) {
  check_composite(layers_in, masks_in, occ_in, bg_in, at::kCPU);
  const at::Tensor layers = layers_in.contiguous(), masks = masks_in.contiguous(), occ = occ_in.contiguous();
  const int64_t L = layers.size(0), B = layers.size(1), C = layers.size(2), HW = layers.size(3) * layers.size(4);
  check_like(grad_in, "grad", layers);
  check_sizes(grad_in, "grad", {B, C, layers.size(3), layers.size(4)});
  const at::Tensor grad = grad_in.contiguous();
  need_bg = need_bg && bg_in.has_value();
  const auto opts = layers.options();
  at::Tensor dlayers = need_layers ? at::zeros_like(layers) : at::empty({0}, opts);
  at::Tensor dmasks = need_masks ? at::empty_like(masks) : at::empty({0}, opts);
  at::Tensor dbg = need_bg ? at::zeros_like(*bg_in, at::MemoryFormat::Contiguous) : at::empty({0}, opts);
  const int64_t chunks = (HW + kChunk - 1) / kChunk;
  at::Tensor docc_parts = at::zeros({need_occ ? B * chunks : 0, L * L}, opts);
  at::Tensor bg_holder;
  AT_DISPATCH_FLOATING_TYPES(layers.scalar_type(), "composite_backward_cpu", [&] {
    const scalar_t* xs = layers.const_data_ptr<scalar_t>();
    const scalar_t* ms = masks.const_data_ptr<scalar_t>();
    const scalar_t* os = occ.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* bg = optional_ptr<scalar_t>(bg_in, bg_holder);
    scalar_t* dxs = need_layers ? dlayers.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* dms = need_masks ? dmasks.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* dbgp = need_bg ? dbg.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* parts = need_occ ? docc_parts.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
      scalar_t m[kMaxLayers], dm[kMaxLayers];
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / chunks, p0 = (item % chunks) * kChunk, p1 = std::min(HW, p0 + kChunk);
        for (int64_t p = p0; p < p1; ++p) {
          for (int64_t l = 0; l < L; ++l) m[l] = ms[(l * B + b) * HW + p];
          const int64_t at_px = b * C * HW + p;
          composite_backward<scalar_t>(os + b, B, m, xs + at_px, B * C * HW, HW, bg ? bg + at_px : nullptr, HW,
                                       static_cast<int>(L), C, g + at_px, HW, dm, dxs ? dxs + at_px : nullptr,
                                       parts ? parts + item * L * L : nullptr, dbgp ? dbgp + at_px : nullptr);
          if (dms) {
            for (int64_t l = 0; l < L; ++l) dms[(l * B + b) * HW + p] = dm[l];
          }
        }
      }
    });
  });
  at::Tensor docc = need_occ ? at::zeros_like(occ) : at::empty({0}, opts);
  if (need_occ) {
    // (B, chunks, L*L) partials summed over chunks in index order into the (L, L, B) layout.
    AT_DISPATCH_FLOATING_TYPES(layers.scalar_type(), "composite_occ_reduce", [&] {
      const scalar_t* parts = docc_parts.const_data_ptr<scalar_t>();
      scalar_t* d = docc.mutable_data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t ch = 0; ch < chunks; ++ch) {
          for (int64_t jk = 0; jk < L * L; ++jk) d[jk * B + b] += parts[(b * chunks + ch) * L * L + jk];
        }
      }
    });
  }
  return {dlayers, dmasks, docc, dbg};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dtifast, m) {
  m.def("composite_layers(Tensor layers, Tensor masks, Tensor occlusion, Tensor? background) -> Tensor");
  m.def(
      "composite_layers_backward(Tensor grad, Tensor layers, Tensor masks, Tensor occlusion, Tensor? background, "
      "bool need_layers, bool need_masks, bool need_occlusion, bool need_background) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dtifast, CPU, m) {
  m.impl("composite_layers", &composite_cpu);
  m.impl("composite_layers_backward", &composite_backward_cpu);
}

}  // namespace dtifast

// Occlusion compositing on CPU: L layers over an optional background, and the single-object model's
// candidates (every sprite over every background). The kernels are composite_kernel.h's, per pixel (the
// reference) or per vector of pixels (composite_simd.h, on CPUs with AVX2 or AVX-512, cpu_capability.h).
//
//   dtifast::composite_layers(layers, masks, occlusion, background) -> out
//   dtifast::composite_layers_backward(grad, layers, masks, occlusion, background, need_layers, need_masks,
//                                      need_occlusion, need_background) -> (dlayers, dmasks, docclusion, dbackground)
//   dtifast::composite_candidates(layers, masks, backgrounds) -> out
//   dtifast::composite_candidates_backward(grad, layers, masks, backgrounds, need_layers, need_masks,
//                                          need_backgrounds) -> (dlayers, dmasks, dbackgrounds)
//   dtifast::candidate_distances(layers, masks, backgrounds, x) -> distances
//   dtifast::candidate_distances_backward(grad, layers, masks, backgrounds, x, need_layers, need_masks,
//                                         need_backgrounds, need_x) -> (dlayers, dmasks, dbackgrounds, dx)
//
// composite_layers: layers (L, B, C, H, W), masks (L, B, 1, H, W), occlusion (L, L, B), background
// (B, C, H, W) or None. composite_candidates: layers (K, B, C, H, W), masks (K, B, 1, H, W), backgrounds
// (M, B, C, H, W) or None (black) -> (B, M * K, C, H, W), candidate m * K + k; candidate_distances: the
// mean squared error of each candidate against x (B, C, H, W) -> (B, M * K), in one pass without the
// candidates (the backward recomputes them). Both read layers and masks whose (C, H, W) blocks are dense in
// place (views split from one sprite tensor); CPU only (the CUDA backend composites each candidate as one
// layer, dtifast/ops/composite.py).
// Work is split into fixed pixel chunks of each image. Every pixel's gradients belong to its chunk; the
// occlusion gradient and the squared errors are summed per chunk and the chunks are added in order, so the
// result is the same for any number of threads.
#include <torch/library.h>

#include "checks.h"
#include "composite_kernel.h"
#include "cpu_capability.h"

namespace dtifast {
namespace {

constexpr int64_t kChunk = 2048;  // pixels per work item: a fixed split, independent of the thread count

template <typename T>
CompositeKernels<T> kernels_for() {
  const CompositeKernels<T> scalar = pack_composite_kernels<ScalarPack<T>>();
#if DTIFAST_X86_SIMD
  return table_for_capability(scalar, &composite_kernels_avx2<T>, &composite_kernels_avx512<T>);
#else
  return scalar;
#endif
}

// Runs work(b, p0, p1, item) over the fixed pixel chunks of every image in parallel.
template <typename Work>
void for_each_chunk(int64_t B, int64_t HW, const Work& work) {
  const int64_t chunks = (HW + kChunk - 1) / kChunk;
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / chunks, p0 = (item % chunks) * kChunk;
      work(b, p0, std::min(HW, p0 + kChunk), item);
    }
  });
}

template <typename T>
T* ptr_or_null(at::Tensor& t) {
  return t.numel() ? t.mutable_data_ptr<T>() : nullptr;
}

at::Tensor composite_cpu(const at::Tensor& layers_in, const at::Tensor& masks_in, const at::Tensor& occ_in,
                         const std::optional<at::Tensor>& bg_in) {
  check_composite(layers_in, masks_in, occ_in, bg_in, at::kCPU);
  const at::Tensor layers = layers_in.contiguous(), masks = masks_in.contiguous(), occ = occ_in.contiguous();
  const int64_t L = layers.size(0), B = layers.size(1), C = layers.size(2), HW = layers.size(3) * layers.size(4);
  at::Tensor out = at::empty({B, C, layers.size(3), layers.size(4)}, layers.options());
  at::Tensor bg_holder;
  AT_DISPATCH_FLOATING_TYPES(layers.scalar_type(), "composite_cpu", [&] {
    const CompositeArgs<scalar_t> a{layers.const_data_ptr<scalar_t>(), masks.const_data_ptr<scalar_t>(),
                                    occ.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(bg_in, bg_holder),
                                    L, B, C, HW};
    const CompositeKernels<scalar_t> kernels = kernels_for<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    for_each_chunk(B, HW,
                   [&](int64_t b, int64_t p0, int64_t p1, int64_t) { kernels.layers_forward(a, b, p0, p1, dst); });
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
  // Every pixel's gradients are written by the chunk that owns it, so no buffer needs zeroing.
  const auto opts = layers.options();
  at::Tensor dlayers = need_layers ? at::empty_like(layers) : at::empty({0}, opts);
  at::Tensor dmasks = need_masks ? at::empty_like(masks) : at::empty({0}, opts);
  at::Tensor dbg = need_bg ? at::empty_like(*bg_in, at::MemoryFormat::Contiguous) : at::empty({0}, opts);
  const int64_t chunks = (HW + kChunk - 1) / kChunk;
  at::Tensor docc_parts = at::zeros({need_occ ? B * chunks : 0, L * L}, opts);
  at::Tensor bg_holder;
  AT_DISPATCH_FLOATING_TYPES(layers.scalar_type(), "composite_backward_cpu", [&] {
    const CompositeArgs<scalar_t> a{layers.const_data_ptr<scalar_t>(), masks.const_data_ptr<scalar_t>(),
                                    occ.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(bg_in, bg_holder),
                                    L, B, C, HW};
    const CompositeKernels<scalar_t> kernels = kernels_for<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t *dxs = ptr_or_null<scalar_t>(dlayers), *dms = ptr_or_null<scalar_t>(dmasks),
             *dbgp = ptr_or_null<scalar_t>(dbg), *parts = ptr_or_null<scalar_t>(docc_parts);
    for_each_chunk(B, HW, [&](int64_t b, int64_t p0, int64_t p1, int64_t item) {
      kernels.layers_backward(a, g, b, p0, p1, dxs, dms, parts ? parts + item * L * L : nullptr, dbgp);
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

// layers (K, B, C, H, W), masks (K, B, 1, H, W), backgrounds (M, B, C, H, W) or None.
int64_t check_candidates(const at::Tensor& layers, const at::Tensor& masks,
                         const std::optional<at::Tensor>& backgrounds) {
  check_device(layers, "layers", at::kCPU);
  TORCH_CHECK(layers.dim() == 5, "layers must be (K, B, C, H, W), got ", layers.sizes());
  check_like(masks, "masks", layers);
  check_sizes(masks, "masks", {layers.size(0), layers.size(1), 1, layers.size(3), layers.size(4)});
  if (!backgrounds.has_value()) return 1;
  check_like(*backgrounds, "backgrounds", layers);
  check_sizes(*backgrounds, "backgrounds", {-1, layers.size(1), layers.size(2), layers.size(3), layers.size(4)});
  return backgrounds->size(0);
}

// t (K, B, C, H, W) itself when each (k, b) block of C * H * W values is contiguous (a slice of a larger
// sprite tensor along C, an expanded tensor), else a contiguous copy: the kernels read blocks in place.
at::Tensor with_dense_blocks(const at::Tensor& t) {
  const int64_t HW = t.size(3) * t.size(4);
  const bool dense = (t.size(4) <= 1 || t.stride(4) == 1) && (t.size(3) <= 1 || t.stride(3) == t.size(4)) &&
                     (t.size(2) <= 1 || t.stride(2) == HW);
  return dense ? t : t.contiguous();
}

template <typename T>
CandidateArgs<T> candidate_args(const at::Tensor& layers, const at::Tensor& masks, const T* bgs, int64_t M) {
  return {layers.const_data_ptr<T>(), masks.const_data_ptr<T>(), bgs, layers.size(0), M, layers.size(1),
          layers.size(2), layers.size(3) * layers.size(4), layers.stride(0), layers.stride(1), masks.stride(0),
          masks.stride(1)};
}

// The contiguous gradients of layers, masks and backgrounds that are asked for (and exist), else empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor> candidate_grad_buffers(const at::Tensor& layers,
                                                                      const at::Tensor& masks,
                                                                      const std::optional<at::Tensor>& bgs,
                                                                      bool need_layers, bool need_masks,
                                                                      bool need_bgs) {
  const auto opts = layers.options();
  return {need_layers ? at::empty(layers.sizes(), opts) : at::empty({0}, opts),
          need_masks ? at::empty(masks.sizes(), opts) : at::empty({0}, opts),
          need_bgs && bgs.has_value() ? at::empty_like(*bgs, at::MemoryFormat::Contiguous) : at::empty({0}, opts)};
}

at::Tensor candidates_cpu(const at::Tensor& layers_in, const at::Tensor& masks_in,
                          const std::optional<at::Tensor>& bgs_in) {
  const int64_t M = check_candidates(layers_in, masks_in, bgs_in);
  const at::Tensor layers = with_dense_blocks(layers_in), masks = with_dense_blocks(masks_in);
  const int64_t K = layers.size(0), B = layers.size(1), C = layers.size(2), HW = layers.size(3) * layers.size(4);
  at::Tensor out = at::empty({B, M * K, C, layers.size(3), layers.size(4)}, layers.options());
  at::Tensor bgs_holder;
  AT_DISPATCH_FLOATING_TYPES(layers.scalar_type(), "composite_candidates_cpu", [&] {
    const auto a = candidate_args<scalar_t>(layers, masks, optional_ptr<scalar_t>(bgs_in, bgs_holder), M);
    const CompositeKernels<scalar_t> kernels = kernels_for<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    for_each_chunk(B, HW,
                   [&](int64_t b, int64_t p0, int64_t p1, int64_t) { kernels.candidates_forward(a, b, p0, p1, dst); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> candidates_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& layers_in, const at::Tensor& masks_in,
    const std::optional<at::Tensor>& bgs_in, bool need_layers, bool need_masks, bool need_bgs) {
  const int64_t M = check_candidates(layers_in, masks_in, bgs_in);
  const at::Tensor layers = with_dense_blocks(layers_in), masks = with_dense_blocks(masks_in);
  const int64_t K = layers.size(0), B = layers.size(1), C = layers.size(2), HW = layers.size(3) * layers.size(4);
  check_like(grad_in, "grad", layers);
  check_sizes(grad_in, "grad", {B, M * K, C, layers.size(3), layers.size(4)});
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor dlayers, dmasks, dbgs;
  std::tie(dlayers, dmasks, dbgs) = candidate_grad_buffers(layers, masks, bgs_in, need_layers, need_masks, need_bgs);
  at::Tensor bgs_holder;
  AT_DISPATCH_FLOATING_TYPES(layers.scalar_type(), "composite_candidates_backward_cpu", [&] {
    const auto a = candidate_args<scalar_t>(layers, masks, optional_ptr<scalar_t>(bgs_in, bgs_holder), M);
    const CompositeKernels<scalar_t> kernels = kernels_for<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t *dxs = ptr_or_null<scalar_t>(dlayers), *dms = ptr_or_null<scalar_t>(dmasks),
             *dbg = ptr_or_null<scalar_t>(dbgs);
    for_each_chunk(B, HW, [&](int64_t b, int64_t p0, int64_t p1, int64_t) {
      kernels.candidates_backward(a, g, b, p0, p1, dxs, dms, dbg);
    });
  });
  return {dlayers, dmasks, dbgs};
}

// x (B, C, H, W) against the candidates of composite_candidates -> (B, M * K) mean squared errors.
void check_distances(const at::Tensor& layers, const at::Tensor& x) {
  check_like(x, "x", layers);
  check_sizes(x, "x", {layers.size(1), layers.size(2), layers.size(3), layers.size(4)});
}

at::Tensor distances_cpu(const at::Tensor& layers_in, const at::Tensor& masks_in,
                         const std::optional<at::Tensor>& bgs_in, const at::Tensor& x_in) {
  const int64_t M = check_candidates(layers_in, masks_in, bgs_in);
  check_distances(layers_in, x_in);
  const at::Tensor layers = with_dense_blocks(layers_in), masks = with_dense_blocks(masks_in), x = x_in.contiguous();
  const int64_t K = layers.size(0), B = layers.size(1), C = layers.size(2), HW = layers.size(3) * layers.size(4);
  const int64_t chunks = (HW + kChunk - 1) / kChunk;
  // (B, chunks, M * K) partial sums, added over the chunks in order: the same result on any thread count.
  at::Tensor parts = at::zeros({B * chunks, M * K}, layers.options());
  at::Tensor out = at::empty({B, M * K}, layers.options());
  at::Tensor bgs_holder;
  AT_DISPATCH_FLOATING_TYPES(layers.scalar_type(), "candidate_distances_cpu", [&] {
    const auto a = candidate_args<scalar_t>(layers, masks, optional_ptr<scalar_t>(bgs_in, bgs_holder), M);
    const CompositeKernels<scalar_t> kernels = kernels_for<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* sse = parts.mutable_data_ptr<scalar_t>();
    for_each_chunk(B, HW, [&](int64_t b, int64_t p0, int64_t p1, int64_t item) {
      kernels.distances_forward(a, xp, b, p0, p1, sse + item * M * K);
    });
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const scalar_t count = static_cast<scalar_t>(std::max<int64_t>(C * HW, 1));
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < M * K; ++j) {
        scalar_t total = 0;
        for (int64_t ch = 0; ch < chunks; ++ch) total += sse[(b * chunks + ch) * M * K + j];
        dst[b * M * K + j] = total / count;
      }
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> distances_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& layers_in, const at::Tensor& masks_in,
    const std::optional<at::Tensor>& bgs_in, const at::Tensor& x_in, bool need_layers, bool need_masks,
    bool need_bgs, bool need_x) {
  const int64_t M = check_candidates(layers_in, masks_in, bgs_in);
  check_distances(layers_in, x_in);
  const at::Tensor layers = with_dense_blocks(layers_in), masks = with_dense_blocks(masks_in), x = x_in.contiguous();
  const int64_t K = layers.size(0), B = layers.size(1), C = layers.size(2), HW = layers.size(3) * layers.size(4);
  check_like(grad_in, "grad", layers);
  check_sizes(grad_in, "grad", {B, M * K});
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor dlayers, dmasks, dbgs;
  std::tie(dlayers, dmasks, dbgs) = candidate_grad_buffers(layers, masks, bgs_in, need_layers, need_masks, need_bgs);
  at::Tensor dx = need_x ? at::empty_like(x) : at::empty({0}, layers.options());
  at::Tensor bgs_holder;
  AT_DISPATCH_FLOATING_TYPES(layers.scalar_type(), "candidate_distances_backward_cpu", [&] {
    const auto a = candidate_args<scalar_t>(layers, masks, optional_ptr<scalar_t>(bgs_in, bgs_holder), M);
    const CompositeKernels<scalar_t> kernels = kernels_for<scalar_t>();
    const scalar_t scale = scalar_t(1) / static_cast<scalar_t>(std::max<int64_t>(C * HW, 1));
    const scalar_t *g = grad.const_data_ptr<scalar_t>(), *xp = x.const_data_ptr<scalar_t>();
    scalar_t *dxs = ptr_or_null<scalar_t>(dlayers), *dms = ptr_or_null<scalar_t>(dmasks),
             *dbg = ptr_or_null<scalar_t>(dbgs), *dxp = ptr_or_null<scalar_t>(dx);
    for_each_chunk(B, HW, [&](int64_t b, int64_t p0, int64_t p1, int64_t) {
      kernels.distances_backward(a, xp, g, scale, b, p0, p1, dxs, dms, dbg, dxp);
    });
  });
  return {dlayers, dmasks, dbgs, dx};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dtifast, m) {
  m.def("composite_layers(Tensor layers, Tensor masks, Tensor occlusion, Tensor? background) -> Tensor");
  m.def(
      "composite_layers_backward(Tensor grad, Tensor layers, Tensor masks, Tensor occlusion, Tensor? background, "
      "bool need_layers, bool need_masks, bool need_occlusion, bool need_background) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("composite_candidates(Tensor layers, Tensor masks, Tensor? backgrounds) -> Tensor");
  m.def(
      "composite_candidates_backward(Tensor grad, Tensor layers, Tensor masks, Tensor? backgrounds, "
      "bool need_layers, bool need_masks, bool need_backgrounds) -> (Tensor, Tensor, Tensor)");
  m.def("candidate_distances(Tensor layers, Tensor masks, Tensor? backgrounds, Tensor x) -> Tensor");
  m.def(
      "candidate_distances_backward(Tensor grad, Tensor layers, Tensor masks, Tensor? backgrounds, Tensor x, "
      "bool need_layers, bool need_masks, bool need_backgrounds, bool need_x) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dtifast, CPU, m) {
  m.impl("composite_layers", &composite_cpu);
  m.impl("composite_layers_backward", &composite_backward_cpu);
  m.impl("composite_candidates", &candidates_cpu);
  m.impl("composite_candidates_backward", &candidates_backward_cpu);
  m.impl("candidate_distances", &distances_cpu);
  m.impl("candidate_distances_backward", &distances_backward_cpu);
}

}  // namespace dtifast

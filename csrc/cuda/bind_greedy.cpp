// CUDA binding of dtifast::greedy_select_sprites (kernels in greedy.cu; the op contract is csrc/greedy.cpp's).
// The image-space dtifast::greedy_select has no CUDA kernel.
#include <torch/library.h>

#include "bind.h"

namespace dtifast {
namespace cuda {
namespace {

at::Tensor greedy_select_sprites_cuda(const at::Tensor& x_in, const at::Tensor& sprites_in,
                                      const at::Tensor& theta_in, const at::Tensor& occ_in,
                                      const std::optional<at::Tensor>& bg_in, int64_t n_iter,
                                      const std::optional<at::Tensor>& penalty_in,
                                      const std::optional<at::Tensor>& noise_in, const at::Tensor& basis_in) {
  check_greedy(x_in, sprites_in, theta_in, occ_in, bg_in, n_iter, penalty_in, noise_in, basis_in, at::kCUDA);
  TORCH_CHECK(x_in.size(1) <= kMaxChannels, "the CUDA greedy selection takes at most ", kMaxChannels,
              " colour channels, got ", x_in.size(1));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t L = sprites_in.size(0), K = sprites_in.size(1), B = x_in.size(0), C = x_in.size(1);
  const int64_t H = x_in.size(2), W = x_in.size(3), h = sprites_in.size(4), w = sprites_in.size(5), HW = H * W;
  const auto opts = x_in.options();
  at::Tensor selection = at::zeros({L, K, B}, opts);
  if (B * HW == 0) {
    // No pixel: every distance is 0 / 0 (NaN), which never beats the first candidate (the CPU kernel's
    // choice); no image: nothing to choose.
    selection.select(1, 0).fill_(1);
    return selection;
  }
  // Expanded (stride-0) candidate dims are read in place; only non-contiguous sprite planes are copied.
  const bool planes_contiguous =
      sprites_in.stride(5) == 1 && sprites_in.stride(4) == w && sprites_in.stride(3) == h * w;
  const at::Tensor sprites = planes_contiguous ? sprites_in : sprites_in.contiguous();
  const at::Tensor x = x_in.contiguous(), theta = theta_in.contiguous(), occ = occ_in.contiguous(),
                   bg = contiguous_or_undefined(bg_in), penalty = contiguous_or_undefined(penalty_in),
                   noise = contiguous_or_undefined(noise_in), basis = basis_in.contiguous();
  at::Tensor cur_col = at::zeros({L, B, C, HW}, opts), cur_m = at::zeros({L, B, HW}, opts);
  at::Tensor s0 = at::empty({B, C, HW}, opts), s1 = at::empty({B, C, HW}, opts), a = at::empty({B, HW}, opts);
  at::Tensor partial = at::empty({K, B, tiles_for(HW)}, opts.dtype(at::kDouble));
  at::Tensor best = at::empty({B}, opts.dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "greedy_select_sprites_cuda", [&] {
    const GreedyArgs<scalar_t> args{static_cast<int>(L), K, B, C, H, W, h, w,
                                    sprites.stride(0), sprites.stride(1), sprites.stride(2),
                                    x.const_data_ptr<scalar_t>(), sprites.const_data_ptr<scalar_t>(),
                                    theta.const_data_ptr<scalar_t>(), occ.const_data_ptr<scalar_t>(),
                                    in_ptr<scalar_t>(bg), in_ptr<scalar_t>(penalty), in_ptr<scalar_t>(noise),
                                    basis.const_data_ptr<scalar_t>(), selection.mutable_data_ptr<scalar_t>(),
                                    cur_col.mutable_data_ptr<scalar_t>(), cur_m.mutable_data_ptr<scalar_t>(),
                                    s0.mutable_data_ptr<scalar_t>(), s1.mutable_data_ptr<scalar_t>(),
                                    a.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<double>(),
                                    best.mutable_data_ptr<int64_t>()};
    launch_greedy_select<scalar_t>(args, n_iter, current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return selection;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtifast, CUDA, m) { m.impl("greedy_select_sprites", &greedy_select_sprites_cuda); }

}  // namespace cuda
}  // namespace dtifast

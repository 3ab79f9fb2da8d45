"""The C++ greedy selection returns exactly the reference's one-hot selection (ties, empty sprite, expanded
candidates, several sweeps), the same for 1 and 2 threads, and rejects bad input clearly."""
import pytest
import torch

from dtifast import ops
from dtifast.ops import _native as native
from dtifast.ops import reference
from thread_runs import assert_bitwise_equal, run_per_thread_count


def _candidates(L, K, B, C=3, H=12, W=11, h=7, w=6, noise=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    sprites = torch.rand(L, K, B, C + 1 + int(noise), h, w, generator=g, dtype=dtype)
    sprites[:, -1, :, C:] = 0                       # the empty sprite: no mask, no canvas
    if K > 2:
        sprites[:, 1] = sprites[:, 0]                # an exact tie: must go to the lowest k
    params = 0.5 * torch.randn(L, B, 3, generator=g, dtype=dtype)
    occ = torch.rand(L, L, B, generator=g, dtype=dtype)
    nz = 0.4 * (2 * torch.rand(K, 1, H, W, generator=g, dtype=dtype) - 1) if noise else None
    x = torch.rand(B, C, H, W, generator=g, dtype=dtype)
    return x, sprites, params, occ, nz


@pytest.mark.parametrize("L,K,B,n_iter,noise,bg", [(1, 1, 1, 1, False, True), (3, 4, 2, 2, True, True),
                                                   (2, 5, 3, 1, True, False), (3, 3, 2, 3, False, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_selection_equals_reference(L, K, B, n_iter, noise, bg, dtype):
    x, sprites, params, occ, nz = _candidates(L, K, B, noise=noise, dtype=dtype, seed=L + K)
    background = torch.rand_like(x) if bg else None
    penalty = torch.full((K,), 1e-3, dtype=dtype)
    penalty[-1] = 0
    ref = reference.greedy_select_sprites(x, sprites, params, occ, background, n_iter, penalty, nz)
    out = native.greedy_select_sprites(x, sprites, params, occ, background, n_iter, penalty, nz)
    assert out.dtype == ref.dtype and torch.equal(out, ref)


def test_penalty_can_make_the_empty_sprite_win():
    x, sprites, params, occ, nz = _candidates(2, 3, 2)
    penalty = torch.tensor([10.0, 10.0, 0.0])
    out = native.greedy_select_sprites(x, sprites, params, occ, None, 1, penalty, nz)
    assert torch.equal(out[:, 2], torch.ones(2, 2))
    assert torch.equal(out, reference.greedy_select_sprites(x, sprites, params, occ, None, 1, penalty, nz))


def test_expanded_candidates_are_read_in_place():
    # The model without sprite-level transforms passes one bank expanded over L and B (stride 0).
    x, sprites, params, occ, nz = _candidates(2, 3, 2, H=9, W=10, h=5, w=6)
    bank = sprites[0, :, 0]
    view = bank[None, :, None].expand(2, 3, 2, *bank.shape[1:])
    ref = reference.greedy_select_sprites(x, view.contiguous(), params, occ, None, 1, None, nz)
    assert torch.equal(native.greedy_select_sprites(x, view, params, occ, None, 1, None, nz), ref)


def test_non_contiguous_sprite_planes_and_params():
    x, sprites, params, occ, nz = _candidates(2, 3, 2, seed=3)
    sprites_nc = sprites.transpose(4, 5).contiguous().transpose(4, 5)
    params_nc = params.transpose(0, 1).contiguous().transpose(0, 1)
    ref = reference.greedy_select_sprites(x, sprites, params, occ, None, 2, None, nz)
    assert torch.equal(native.greedy_select_sprites(x, sprites_nc, params_nc, occ, None, 2, None, nz), ref)


def test_threads_one_and_two_give_identical_results():
    x, sprites, params, occ, nz = _candidates(3, 4, 4, seed=5)
    assert_bitwise_equal(*run_per_thread_count(
        lambda: native.greedy_select_sprites(x, sprites, params, occ, None, 2, None, nz)))


def test_public_op_defaults_to_native_on_cpu():
    assert ops.resolve("greedy_select_sprites", None, torch.device("cpu"))[0] == "cpu"


def test_bad_inputs_raise_clear_errors():
    x, sprites, params, occ, nz = _candidates(2, 3, 2)
    with pytest.raises(ValueError, match=r"sprites must have shape \(L, K, 2, 5, \*, \*\)"):
        native.greedy_select_sprites(x, sprites[:, :, :, :4], params, occ, None, 1, None, nz)
    with pytest.raises(ValueError, match="n_iter"):
        native.greedy_select_sprites(x, sprites, params, occ, None, 0, None, nz)
    with pytest.raises(ValueError, match=r"empty_penalty must have shape \(3\)"):
        native.greedy_select_sprites(x, sprites, params, occ, None, 1, torch.zeros(2), nz)
    with pytest.raises(ValueError, match=r"noise must have shape"):
        native.greedy_select_sprites(x, sprites, params, occ, None, 1, None, nz[:, :, :3])
    with pytest.raises(TypeError, match="share one dtype"):
        native.greedy_select_sprites(x, sprites.double(), params, occ, None, 1, None, nz)
    with pytest.raises(ValueError, match="NaN"):
        native.greedy_select_sprites(x, sprites, params * float("nan"), occ, None, 1, None, nz)
    with pytest.raises(RuntimeError, match="theta must have shape"):
        torch.ops.dtifast.greedy_select(x, sprites, params, occ, None, 1, None, nz)


# ---- image-space candidates (dtifast::greedy_select_layers) ----------------------------------------------

def _image_candidates(L, K, B, C=3, H=9, W=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = torch.rand(L, K, B, C, H, W, generator=g, dtype=dtype)
    masks = torch.rand(L, K, B, 1, H, W, generator=g, dtype=dtype)
    masks[:, -1] = 0                                   # an empty candidate
    if K > 2:
        layers[:, 1], masks[:, 1] = layers[:, 0], masks[:, 0]   # an exact tie: the lowest k wins
    occ = torch.rand(L, L, B, generator=g, dtype=dtype)
    x = torch.rand(B, C, H, W, generator=g, dtype=dtype)
    return x, layers, masks, occ


@pytest.mark.parametrize("L,K,B,n_iter,bg", [(1, 1, 1, 1, True), (3, 4, 2, 2, True), (2, 5, 3, 3, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_image_space_selection_equals_reference(L, K, B, n_iter, bg, dtype):
    x, layers, masks, occ = _image_candidates(L, K, B, dtype=dtype, seed=L * K)
    background = torch.rand_like(x) if bg else None
    penalty = torch.full((K,), 1e-3, dtype=dtype)
    penalty[-1] = 0
    ref = reference.greedy_select(x, layers, masks, occ, background, n_iter, penalty)
    out = native.greedy_select(x, layers, masks, occ, background, n_iter, penalty)
    assert out.dtype == ref.dtype and torch.equal(out, ref)


def test_image_space_non_contiguous_and_threads():
    x, layers, masks, occ = _image_candidates(3, 3, 4, seed=9)
    ref = reference.greedy_select(x, layers, masks, occ, None, 2)
    layers_nc = layers.transpose(4, 5).contiguous().transpose(4, 5)
    masks_nc = masks.transpose(0, 1).contiguous().transpose(0, 1)
    outs = run_per_thread_count(lambda: native.greedy_select(x, layers_nc, masks_nc, occ, None, 2))
    assert torch.equal(outs[0], ref) and torch.equal(outs[1], ref)


def test_image_space_bad_inputs():
    x, layers, masks, occ = _image_candidates(2, 3, 2)
    with pytest.raises(ValueError, match=r"masks must have shape \(2, 3, 2, 1, 9, 8\)"):
        native.greedy_select(x, layers, masks[..., :4], occ)
    with pytest.raises(ValueError, match=r"occlusion must have shape \(2, 2, 2\)"):
        native.greedy_select(x, layers, masks, occ[:1])
    with pytest.raises(ValueError, match="n_iter must be a positive int"):
        native.greedy_select(x, layers, masks, occ, None, 0)
    with pytest.raises(ValueError, match=r"empty_penalty must have shape \(3\), got \(2,\)"):
        native.greedy_select(x, layers, masks, occ, None, 1, torch.zeros(2))
    with pytest.raises(TypeError, match="share one dtype"):
        native.greedy_select(x, layers.double(), masks, occ)

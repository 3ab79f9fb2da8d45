"""The eager reference ops (the oracle every backend is held to) and the transform helpers of
dtifast.ops.geometry: known answers, conventions and gradients. Input checks are the public ops' and are
tested per family (tests/test_ops_*.py)."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from dtifast.ops import geometry as G
from dtifast.ops import reference as R

D = torch.float64


def _rand(*shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=D) * scale


def _randn(*shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D) * scale


# ---------------------------------------------------------------------------------------------------
# softclip
# ---------------------------------------------------------------------------------------------------

def test_softclip_values_and_subgradient():
    x = torch.tensor([-2.0, 0.0, 0.25, 1.0, 3.0], dtype=D, requires_grad=True)
    y = R.softclip(x)
    torch.testing.assert_close(y, torch.tensor([-0.02, 0.0, 0.25, 1.0, 1.02], dtype=D))
    y.sum().backward()
    # Upstream's subgradient: slope 1 inside, 0.01 outside, 1 + 0.005 at exactly 0 and 1.
    torch.testing.assert_close(x.grad, torch.tensor([0.01, 1.005, 1.0, 1.005, 0.01], dtype=D))


# ---------------------------------------------------------------------------------------------------
# Warps: identity, known shifts, conventions
# ---------------------------------------------------------------------------------------------------

IDENTITY_CASES = {
    "similarity": (R.warp_similarity, 4),
    "affine": (R.warp_affine, 6),
}


@pytest.mark.parametrize("kind", sorted(IDENTITY_CASES))
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_zero_params_are_identity(kind, padding):
    warp, n = IDENTITY_CASES[kind]
    x = _rand(2, 3, 7, 9)
    torch.testing.assert_close(warp(x, torch.zeros(2, n, dtype=D), (7, 9), padding), x)


def test_projective_identity_samples_the_linspace_grid():
    # kornia-0.3 semantics: output points on linspace(-1, 1) but sampled with align_corners=False, so
    # the identity homography is a slight resampling, exactly grid_sample on the linspace grid.
    x = _rand(2, 3, 7, 9)
    xs, ys = torch.linspace(-1, 1, 9, dtype=D), torch.linspace(-1, 1, 7, dtype=D)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)[None].expand(2, -1, -1, -1)
    for padding in ("zeros", "border"):
        expected = F.grid_sample(x, grid, padding_mode=padding, align_corners=False)
        torch.testing.assert_close(R.warp_projective(x, torch.zeros(2, 9, dtype=D), (7, 9), padding), expected)


def test_tps_zero_offsets_give_identity_grid_and_image():
    grid = R.tps_grid(torch.zeros(2, 16, 2, dtype=D), (5, 6))
    xs, ys = torch.linspace(-1, 1, 6, dtype=D), torch.linspace(-1, 1, 5, dtype=D)
    torch.testing.assert_close(grid[0, ..., 0], xs.expand(5, 6), atol=1e-6, rtol=0)
    torch.testing.assert_close(grid[1, ..., 1], ys[:, None].expand(5, 6), atol=1e-6, rtol=0)
    x = _rand(2, 3, 5, 6)
    # A linspace grid sampled with align_corners=False is a slight resampling, not the identity; compare
    # with grid_sample of the exact linspace grid.
    linspace_grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)[None].expand(2, -1, -1, -1)
    expected = F.grid_sample(x, linspace_grid, align_corners=False)
    torch.testing.assert_close(R.warp_tps(x, torch.zeros(2, 16, 2, dtype=D), (5, 6)), expected, atol=1e-6, rtol=0)


def test_position_zero_params_is_scale_two():
    # Upstream adds the identity to e^s·I: s = 0 gives A = 2·I, the sprite covers the central half.
    torch.testing.assert_close(G.position_matrix(torch.zeros(1, 3, dtype=D)),
                               torch.tensor([[[2.0, 0, 0], [0, 2.0, 0]]], dtype=D))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_position_and_similarity_matrices_are_their_formulas_bit_for_bit(dtype):
    # Built as one matrix product (geometry._LINEAR_MAPS); the entries and the gradients must be those of the
    # formulas in the docstrings, written out entry by entry here.
    def position(p):
        s, tx, ty = p.unbind(1)
        scale = torch.exp(s) + 1
        zero = torch.zeros_like(s)
        return torch.stack([scale, zero, tx, zero, scale, ty], 1).view(-1, 2, 3)

    def similarity(p):
        a, b, tx, ty = p.unbind(1)
        return torch.stack([a + 1, -b, tx, b, a + 1, ty], 1).view(-1, 2, 3)

    g = torch.Generator().manual_seed(3)
    for fn, formula, n in ((G.position_matrix, position, 3), (G.similarity_matrix, similarity, 4)):
        params = torch.randn(40, n, generator=g, dtype=dtype)
        cotangent = torch.randn(40, 2, 3, generator=g, dtype=dtype)
        results = []
        for f in (fn, formula):
            p = params.clone().requires_grad_()
            out = f(p)
            results.append((out.detach(), *torch.autograd.grad(out, p, cotangent)))
        for actual, expected in zip(*results):
            assert torch.equal(actual, expected), fn.__name__


def test_translation_moves_pattern_by_expected_pixels():
    x = torch.zeros(1, 1, 8, 8, dtype=D)
    x[0, 0, 3, 2] = 1.0
    # Affine with tx = 2·(2 px)/W: output (i, j) samples input (i, j + 2), so the dot moves 2 px left.
    params = torch.tensor([[0, 0, 2 * 2 / 8, 0, 0, 0]], dtype=D)
    out = R.warp_affine(x, params, (8, 8))
    assert out[0, 0, 3, 0] == pytest.approx(1.0) and out.sum() == pytest.approx(1.0)
    # Same shift through the similarity and position parameterisations.
    sim = R.warp_similarity(x, torch.tensor([[0, 0, 2 * 2 / 8, 0]], dtype=D), (8, 8))
    torch.testing.assert_close(sim, out)
    # Position: scale e^s + 1 is the identity only as s → -inf; s = -50 is 1 to double precision.
    pos = R.warp_position(x, torch.tensor([[-50.0, 2 * 2 / 8, 0]], dtype=D), (8, 8))
    torch.testing.assert_close(pos, out)


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_position_equals_affine_grid_and_grid_sample(padding):
    x, p = _rand(3, 4, 6, 5), _randn(3, 3, scale=0.5, seed=1)
    s, tx, ty = p.unbind(1)
    a = torch.exp(s) + 1
    theta = torch.stack([torch.stack([a, 0 * a, tx], 1), torch.stack([0 * a, a, ty], 1)], 1)
    grid = F.affine_grid(theta, [3, 4, 11, 13], align_corners=False)
    expected = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    torch.testing.assert_close(R.warp_position(x, p, (11, 13), padding), expected)


def test_projective_with_affine_last_row_equals_affine_map_on_linspace_grid():
    x = _rand(2, 3, 9, 7)
    a = _randn(2, 6, scale=0.3, seed=2)
    params = torch.cat([a, torch.zeros(2, 3, dtype=D)], 1)          # last row [0, 0, 1] after + I
    theta = G.affine_matrix(a)
    # The projective warp evaluates on linspace(-1, 1): the affine grid with align_corners=True.
    grid = F.affine_grid(theta, [2, 3, 9, 7], align_corners=True)
    expected = F.grid_sample(x, grid, align_corners=False)
    torch.testing.assert_close(R.warp_projective(x, params, (9, 7)), expected)


def test_projective_near_degenerate_w_uses_no_divide():
    # H maps every point to w = 0 exactly: kornia-0.3 semantics sample at (u, v) instead of dividing.
    params = torch.zeros(1, 9, dtype=D)
    params[0, 8] = -1.0                                              # H[2, 2] = 0 → w = 0
    grid = R.projective_grid(G.projective_matrix(params), (4, 4))
    base = R.projective_grid(torch.eye(3, dtype=D)[None], (4, 4))
    torch.testing.assert_close(grid, base)
    assert torch.isfinite(R.warp_projective(_rand(1, 2, 4, 4), params, (4, 4))).all()


def test_projective_perspective_divides_by_w():
    H = torch.eye(3, dtype=D)[None].clone()
    H[0, 2, 2] = 2.0                                                 # w = 2 everywhere: halves coordinates
    grid = R.projective_grid(H, (5, 5))
    torch.testing.assert_close(grid, R.projective_grid(torch.eye(3, dtype=D)[None], (5, 5)) / 2)


def test_color_transform_gain_bias_and_passthrough():
    x = _rand(2, 4, 3, 3)
    params = torch.tensor([[0.5, 0.1, 0, 0, -0.5, -0.2]] * 2, dtype=D)
    out = R.color_transform(x, params)
    torch.testing.assert_close(out[:, 0], R.softclip(1.5 * x[:, 0] + 0.1))
    torch.testing.assert_close(out[:, 1], x[:, 1])
    torch.testing.assert_close(out[:, 2], R.softclip(0.5 * x[:, 2] - 0.2))
    torch.testing.assert_close(out[:, 3], x[:, 3])                  # mask channel untouched
    gray = R.color_transform(x[:, :1], torch.zeros(2, 6, dtype=D))
    assert gray.shape == (2, 3, 3, 3) and torch.equal(gray[:, 2], x[:, 0])


# ---------------------------------------------------------------------------------------------------
# Compositing and greedy selection
# ---------------------------------------------------------------------------------------------------

def _loop_composite(layers, masks, occ, background=None):
    L, B = layers.shape[:2]
    out = torch.zeros_like(layers[0])
    for b in range(B):
        for k in range(L):
            vis = torch.ones_like(masks[0, b])
            for j in range(L):
                if j != k:
                    vis = vis * (1 - occ[j, k, b] * masks[j, b])
            out[b] += vis * masks[k, b] * layers[k, b]
        if background is not None:
            vis = torch.ones_like(masks[0, b])
            for j in range(L):
                vis = vis * (1 - masks[j, b])
            out[b] += vis * background[b]
    return out


@pytest.mark.parametrize("L,B", [(1, 1), (3, 2), (4, 3)])
@pytest.mark.parametrize("with_bkg", [False, True])
def test_composite_layers_equals_plain_loop(L, B, with_bkg):
    layers, masks, occ = _rand(L, B, 3, 5, 4, seed=1), _rand(L, B, 1, 5, 4, seed=2), _rand(L, L, B, seed=3)
    bkg = _rand(B, 3, 5, 4, seed=4) if with_bkg else None
    torch.testing.assert_close(R.composite_layers(layers, masks, occ, bkg), _loop_composite(layers, masks, occ, bkg))


def test_composite_candidates_order_is_background_major():
    layers, masks, bkgs = _rand(3, 2, 3, 4, 4, seed=1), _rand(3, 2, 1, 4, 4, seed=2), _rand(2, 2, 3, 4, 4, seed=3)
    out = R.composite_candidates(layers, masks, bkgs)
    assert out.shape == (2, 6, 3, 4, 4)
    m, k = 1, 2
    torch.testing.assert_close(out[:, m * 3 + k], (1 - masks[k]) * bkgs[m] + masks[k] * layers[k])


def test_greedy_recovers_true_sprites():
    L, K, B, H = 3, 4, 5, 16
    g = torch.Generator().manual_seed(0)
    colors = torch.rand(K, 3, 1, 1, generator=g, dtype=D).expand(K, 3, 6, 6)
    sprites = torch.cat([colors, torch.ones(K, 1, 6, 6, dtype=D)], 1)        # opaque squares
    truth = torch.stack([torch.randperm(K, generator=g)[:L] for _ in range(B)], 1)   # (L, B) distinct sprites
    pos = torch.zeros(L, B, 3, dtype=D)
    pos[..., 0] = torch.log(torch.tensor(16 / 6 - 1.0, dtype=D))             # scale so sprites are 6 px
    corners = torch.tensor([[-0.55, -0.55], [0.55, -0.55], [0.0, 0.55]], dtype=D)
    pos[..., 1:] = -corners[:, None] * (16 / 6)                                # three separate places
    occ = torch.tril(torch.ones(L, L, dtype=D), -1)[..., None].expand(L, L, B).contiguous()
    bkg = torch.zeros(B, 3, H, H, dtype=D)
    chosen = sprites[truth]                                                     # (L, B, 4, 6, 6)
    colors_img, masks_img = R.place_sprites(chosen.flatten(0, 1), pos.flatten(0, 1), (H, H))
    x = R.composite_layers(colors_img.view(L, B, 3, H, H), masks_img.view(L, B, 1, H, H), occ, bkg)
    cands = sprites[None, :, None].expand(L, K, B, 4, 6, 6)
    sel = R.greedy_select_sprites(x, cands, pos, occ, bkg, n_iter=2)
    assert torch.equal(sel.argmax(1), truth)


def test_greedy_empty_penalty_prefers_empty_on_ties():
    x = torch.zeros(1, 3, 4, 4, dtype=D)
    layers = torch.zeros(1, 2, 1, 3, 4, 4, dtype=D)
    masks = torch.zeros(1, 2, 1, 1, 4, 4, dtype=D)
    occ = torch.zeros(1, 1, 1, dtype=D)
    assert R.greedy_select(x, layers, masks, occ).argmax(1).item() == 0              # tie → lowest k
    penalty = torch.tensor([1e-4, 0.0], dtype=D)
    assert R.greedy_select(x, layers, masks, occ, empty_penalty=penalty).argmax(1).item() == 1


def test_render_loss_matches_composite_mse():
    L, B, H = 2, 2, 9
    sprites, pos = _rand(L, B, 5, 4, 4, seed=1), _randn(L, B, 3, scale=0.3, seed=2)
    occ, bkg, noise = _rand(L, L, B, seed=3), _rand(B, 3, H, H, seed=4), _rand(L, B, 1, H, H, seed=5) - 0.5
    x = _rand(B, 3, H, H, seed=6)
    colors, masks = R.place_sprites(sprites.flatten(0, 1), pos.flatten(0, 1), (H, H), noise.flatten(0, 1))
    expected = ((R.composite_layers(colors.view(L, B, 3, H, H), masks.view(L, B, 1, H, H), occ, bkg) - x) ** 2).mean()
    torch.testing.assert_close(R.render_loss(x, sprites, pos, occ, bkg, noise), expected)


# ---------------------------------------------------------------------------------------------------
# Gradients (float64 gradcheck, inputs nudged off the identity)
# ---------------------------------------------------------------------------------------------------

GRADCHECK = {
    "position": (R.warp_position, (2, 3), (5, 6)),
    "similarity": (R.warp_similarity, (2, 4), (4, 5)),
    "affine": (R.warp_affine, (2, 6), (5, 4)),
    "projective": (R.warp_projective, (2, 9), (5, 5)),
    "tps": (R.warp_tps, (2, 16, 2), (5, 5)),
}


@pytest.mark.parametrize("kind", sorted(GRADCHECK))
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_gradcheck(kind, padding):
    warp, pshape, out = GRADCHECK[kind]
    x = _rand(2, 2, 5, 5).requires_grad_()
    params = (_randn(*pshape, scale=0.1, seed=3)).requires_grad_()
    if kind == "projective":
        out = (5, 5)
    assert torch.autograd.gradcheck(lambda a, p: warp(a, p, out, padding), (x, params))


def test_compositing_and_color_gradcheck():
    layers, masks = _rand(3, 2, 2, 3, 3).requires_grad_(), _rand(3, 2, 1, 3, 3, seed=1).requires_grad_()
    occ, bkg = _rand(3, 3, 2, seed=2).requires_grad_(), _rand(2, 2, 3, 3, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(R.composite_layers, (layers, masks, occ, bkg))
    x, p = _rand(2, 4, 3, 3, seed=4).requires_grad_(), (_randn(2, 6, scale=0.1, seed=5)).requires_grad_()
    assert torch.autograd.gradcheck(R.color_transform, (x, p))
    s = (_rand(6, scale=1.4, seed=6) - 0.2).requires_grad_()
    assert torch.autograd.gradcheck(R.softclip, (s,))


def test_render_loss_gradcheck():
    L, B, H = 2, 1, 5
    args = [_rand(L, B, 5, 3, 3, seed=1), _randn(L, B, 3, scale=0.2, seed=2), _rand(L, L, B, seed=3),
            _rand(B, 3, H, H, seed=4)]
    x, noise = _rand(B, 3, H, H, seed=5), _rand(L, B, 1, H, H, seed=6) * 0.8 - 0.4
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda s, p, o, b: R.render_loss(x, s, p, o, b, noise), args)

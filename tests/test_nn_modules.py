"""nn.Module wrappers of the fused ops, and the runnable layered-model example from docs/."""
from __future__ import annotations

import importlib.util
import math
import pathlib

import pytest
import torch

from dtifast import nn as dnn
from dtifast.ops import reference

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "examples" / "layered_model.py"


@pytest.mark.parametrize("module,n_params,ref", [
    (dnn.PositionWarp, (3,), reference.warp_position), (dnn.SimilarityWarp, (4,), reference.warp_similarity),
    (dnn.AffineWarp, (6,), reference.warp_affine), (dnn.ProjectiveWarp, (9,), reference.warp_projective),
    (dnn.TPSWarp, (16, 2), reference.warp_tps)])
def test_warp_modules_call_the_fused_ops(module, n_params, ref, device):
    torch.manual_seed(0)
    warp = module((6, 7), "border", backend="triton")
    x, p = torch.rand(2, 3, 5, 5, device=device), 0.2 * torch.randn(2, *n_params, device=device)
    torch.testing.assert_close(warp(x, p), ref(x, p, (6, 7), "border"), atol=1e-5, rtol=1e-5)
    assert "backend='triton'" in repr(warp)
    index = torch.tensor([1, 0, 1], device=device)
    p3 = 0.2 * torch.randn(3, *n_params, device=device)
    torch.testing.assert_close(warp(x, p3, index), ref(x[index], p3, (6, 7), "border"), atol=1e-5, rtol=1e-5)


def test_compositor_selector_and_render_loss_modules(device):
    torch.manual_seed(0)
    L, K, B, C, H, W = 2, 3, 2, 3, 6, 6
    layers, masks = torch.rand(L, B, C, H, W, device=device), torch.rand(L, B, 1, H, W, device=device)
    occ = torch.rand(L, L, B, device=device)
    out = dnn.LayerCompositor(backend="triton")(layers, masks, occ)
    torch.testing.assert_close(out, reference.composite_layers(layers, masks, occ))
    x = torch.rand(B, C, H, W, device=device)
    sprites, params = torch.rand(L, K, B, C + 1, 4, 4, device=device), torch.randn(L, B, 3, device=device)
    sel = dnn.GreedySpriteSelector(2, backend="triton")(x, sprites, params, occ)
    assert torch.equal(sel, reference.greedy_select_sprites(x, sprites, params, occ, None, 2))
    chosen = sprites[:, 0]
    loss = dnn.SpriteRenderLoss(backend="triton")(x, chosen, params, occ)
    torch.testing.assert_close(loss, reference.render_loss(x, chosen, params, occ))
    with pytest.raises(ValueError, match="n_iter must be a positive int"):
        dnn.GreedySpriteSelector(0)
    with pytest.raises(ValueError, match="padding must be one of"):
        dnn.PositionWarp((4, 4), "mirror")


def test_docs_example_trains_a_layered_model_with_the_fused_ops(device):
    spec = importlib.util.spec_from_file_location("layered_model_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    losses = example.main(steps=4, backend="triton", device=str(device), size=12, n_images=4)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    torch.manual_seed(0)
    model = example.Stickers(img_size=12, backend="triton").to(device)
    x = example.toy_images(2, 12, torch.Generator().manual_seed(0)).to(device)
    ((model(x) - x) ** 2).mean().backward()
    assert model.sticker.grad.abs().sum() > 0 and model.net[-1].weight.grad.abs().sum() > 0

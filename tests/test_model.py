"""The DTI-Sprites model: every bundled config trains a step, freezing, curriculum, reassignment, inputs."""
from __future__ import annotations

import math

import pytest
import torch

from dtifast.config import load_config
from dtifast.model import BatchedMLP, build_model
from dtifast.compat import UPSTREAM_IMG_SIZES

CONFIGS = ["tetro", "dsprites", "clevr6", "gtsrb8", "svhn", "horse", "instagram"]


def _model(name, epoch=0, **overrides):
    cfg = load_config(name, [f"model.{k}={v}" for k, v in overrides.items()])
    size = UPSTREAM_IMG_SIZES[cfg["dataset"]["name"]]
    torch.manual_seed(0)
    model = build_model(cfg, size, 3, init_images=torch.rand(8, 3, *size))
    model.set_epoch(epoch)
    return model, size


@pytest.mark.parametrize("name", CONFIGS)
def test_forward_backward_every_config(name):
    model, size = _model(name)
    # The heads' last layers start at zero (upstream), which blocks gradients to the encoder and hidden
    # layers at the very first step; nudge them as one optimizer step would.
    with torch.no_grad():
        for tsf in model._transformers():
            for head in tsf.heads.values():
                head.weights[-1].normal_(0, 1e-3)
    x = torch.rand(2, 3, *size)
    out = model(x)
    assert out.loss.dim() == 0 and math.isfinite(out.loss.item())
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["encoder.encoder.0.weight"] is not None and grads["encoder.encoder.0.weight"].abs().sum() > 0
    frozen = model.freeze_milestone > 0
    for n in ("prototype_params", "mask_params"):
        if frozen:
            assert grads[n] is None, f"{n} got a gradient while sprites are frozen"
        else:
            assert grads[n] is not None and grads[n].abs().sum() > 0, n
    if model.n_backgrounds:
        assert grads["bkg_params"].abs().sum() > 0
    # Every active module's head learns (the last layer starts at zero, so its weight gets the gradient).
    for tsf in model._transformers():
        for i, _ in tsf.active_specs():
            w = tsf.heads[str(i)].weights[-1]
            assert w.grad is not None and w.grad.abs().sum() > 0, f"{tsf.name} module {i}"
    if out.selection is not None:
        L, K, B = out.selection.shape
        assert (L, K, B) == (model.n_objects, model.n_sprites, 2)
        assert torch.equal(out.selection.sum(1), torch.ones(L, B))
        assert out.distances.shape == (2, L * K)
    else:
        assert out.distances.shape == (2, model.n_sprites * model.n_backgrounds)


def test_frozen_sprites_unfreeze_at_milestone_and_curriculum_activates():
    model, size = _model("dsprites")
    assert model.are_sprites_frozen and model.sprite_tsf.activations.tolist() == [True, False]
    for _ in range(10):
        model.step_epoch()
    assert not model.are_sprites_frozen and model.sprite_tsf.activations.tolist() == [True, False]
    model.set_epoch(20)
    assert model.sprite_tsf.activations.tolist() == [True, True]
    state = model.state_dict()
    assert int(state["cur_epoch"]) == 20 and state["sprite_tsf.activations"].all()


def test_empty_sprite_is_not_a_candidate_while_frozen():
    model, size = _model("dsprites")
    x = torch.rand(1, 3, *size)
    assert model(x).selection[:, -1].sum() == 0
    model.set_epoch(50)
    model.eval()
    # An all-gray image: the empty sprite reconstructs the constant background best.
    with torch.no_grad():
        model.bkg_params.fill_(0.5)
        out = model(torch.full((1, 3, *size), 0.5))
    assert out.selection[:, -1].sum() == out.selection.shape[0]


def test_batched_heads_equal_separate_mlps():
    torch.manual_seed(0)
    heads = BatchedMLP(3, 5, 4, n_hidden_layers=2, hidden=7, zero_last=False)
    feats = torch.randn(6, 5)
    out = heads(feats)
    for g in range(3):
        h = feats
        for i, (w, b) in enumerate(zip(heads.weights, heads.biases)):
            h = h @ w[g].T + b[g]
            if i < heads.n_layers - 1:
                h = torch.relu(h)
        torch.testing.assert_close(out[g], h)


def test_reassignment_copies_sprite_and_heads():
    model, size = _model("tetro", epoch=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = model(torch.rand(2, 3, *size))
    out.loss.backward()
    opt.step()
    K = model.n_sprites
    proportions = torch.zeros(K)
    proportions[4] = 1.0
    proportions[:3] = 0.5
    reassigned, idx = model.reassign_empty_clusters(proportions, opt)
    assert idx == 4
    assert set(reassigned) == set(range(3, K)) - {4}
    i = reassigned[0]
    torch.testing.assert_close(model.prototype_params[i], model.prototype_params[4], atol=1e-3, rtol=0)
    assert torch.equal(model.mask_params[i], model.mask_params[4])
    for tsf_head in model.sprite_tsf.heads.values():
        for layer in range(model.n_objects):
            assert torch.equal(tsf_head.weights[0][layer * K + i], tsf_head.weights[0][layer * K + 4])
    state = opt.state[model.mask_params]
    assert torch.equal(state["exp_avg"][i], state["exp_avg"][4])


def test_eval_outputs_shapes_and_ranges():
    model, size = _model("tetro", epoch=5)
    model.eval()
    x = torch.rand(2, 3, *size)
    parts = model.decompose(x)
    assert parts["layers"].shape == (3, 2, 3, *size) and parts["masks"].shape == (3, 2, 1, *size)
    assert parts["layers"].min() >= 0 and parts["layers"].max() <= 1
    sem, inst = model.semantic_labels(x), model.instance_labels(x)
    assert sem.dtype == torch.long and sem.shape == (2, *size) and sem.max() <= model.n_sprites
    assert inst.max() <= model.n_objects
    assert model.reconstruct(x).shape == (2, 3, *size)


@pytest.mark.parametrize("bad,exc,match", [
    (lambda x: x[:, :, :-1], ValueError, r"x must have shape \(\*, 3, 35, 35\)"),
    (lambda x: x[:, :1], ValueError, r"x must have shape"),
    (lambda x: x.double(), TypeError, "dtype"),
    (lambda x: x.masked_fill(x > 0.5, float("nan")), ValueError, "NaN"),
    (lambda x: x[0], ValueError, "4-D"),
])
def test_bad_images_are_rejected(bad, exc, match):
    model, size = _model("tetro")
    with pytest.raises(exc, match=match):
        model(bad(torch.rand(2, 3, *size)))


def test_bad_mask_noise_is_rejected():
    model, size = _model("tetro")
    with pytest.raises(ValueError, match="mask_noise must have shape"):
        model(torch.rand(2, 3, *size), mask_noise=torch.rand(3, 1, *size))


@pytest.mark.parametrize("key,value,match", [
    ("transformation_sequence", "identity_morpho", "not supported"),
    ("transformation_sequence_layer", "position_color", "must be colour/identity modules then 'position'"),
    ("encoder_name", "vgg99", "unknown encoder"),
])
def test_unsupported_options_fail_clearly(key, value, match):
    with pytest.raises(ValueError, match=match):
        _model("tetro", **{key: value})


@pytest.mark.parametrize("name", CONFIGS)
def test_explicit_cpu_backend_runs_every_config_like_the_reference(name):
    # backend="cpu" names the C++ kernels for every op the model calls (no silent fallback): each config
    # must run on them and give the reference's loss and gradients (float64, so no near-tie flips).
    results = []
    for backend in ("torch", "cpu"):
        model, size = _model(name, epoch=1000, backend=backend)
        model = model.double()
        with torch.no_grad():
            for tsf in model._transformers():
                for head in tsf.heads.values():
                    head.weights[-1].copy_(1e-3 * torch.randn(head.weights[-1].shape,
                                                              generator=torch.Generator().manual_seed(1),
                                                              dtype=torch.float64))
        g = torch.Generator().manual_seed(2)
        x = torch.rand(2, 3, *size, generator=g, dtype=torch.float64)
        noise = torch.rand(model.n_sprites, 1, *size, generator=g, dtype=torch.float64)
        out = model(x, mask_noise=noise)
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss_ref, grads_ref), (loss, grads) = results
    torch.testing.assert_close(loss, loss_ref, rtol=1e-9, atol=0)
    assert grads.keys() == grads_ref.keys()
    for n in grads_ref:
        torch.testing.assert_close(grads[n], grads_ref[n], rtol=1e-6, atol=1e-12, msg=n)


@pytest.mark.parametrize("name, channels_last", [("resnet20", True), ("resnet32", True), ("resnet18", False)])
def test_encoder_cpu_float32_layout(name, channels_last):
    # The mini ResNets run faster on channels-last input on the CPU, ResNet-18 slower; the features must not
    # depend on the layout beyond float rounding.
    from dtifast.model import Encoder
    torch.manual_seed(0)
    enc = Encoder(3, (35, 35), name).train()
    seen = []
    enc.encoder[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(
        memory_format=torch.channels_last)))
    x = torch.rand(4, 3, 35, 35)
    features = enc(x)
    assert seen == [channels_last], f"expected channels_last={channels_last} at the first convolution of {name}"
    expected = enc.encoder(x).flatten(1)  # the trunk on the NCHW input, bypassing forward's layout choice
    assert features.is_contiguous() and features.shape == expected.shape
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    seen.clear()
    enc.double()(x.double())
    assert seen == [False], "float64 keeps the input's layout (no oneDNN kernel for it)"

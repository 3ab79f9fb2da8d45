"""Upstream checkpoints and configs: format handling and clear errors (no fixtures needed)."""
from __future__ import annotations

import pytest
import torch

from dtifast.compat import (UpstreamFormatError, from_upstream_config, load_upstream_checkpoint,
                            upstream_parameter_map)
from dtifast.config import ConfigError, load_config
from dtifast.model import build_model

TETRO_KWARGS = dict(load_config("tetro")["model"])


def _tetro_upstream_state(model):
    """An upstream-format state dict for our tetro model (their key layout, their encoder prefixes)."""
    state = {"prototype_params": model.prototype_params.detach(), "mask_params": model.mask_params.detach(),
             "occ_grid": model.occ_grid}
    for prefix in ("layer_transformer.encoder.", "encoder."):
        for k, v in model.encoder.state_dict().items():
            state[prefix + k] = v
    for l in range(model.n_objects):
        for i, head in model.layer_tsf.heads.items():
            for depth, reg in enumerate((0, 3, 5)):
                base = f"layer_transformer.tsf_sequences.{l}.tsf_modules.{i}.regressor.{reg}"
                state[base + ".weight"] = head.weights[depth][l].detach()
                state[base + ".bias"] = head.biases[depth][l].detach()
        state[f"layer_transformer.tsf_sequences.{l}.activations"] = torch.tensor([True, True])
    return state


def _tetro():
    torch.manual_seed(0)
    return build_model(load_config("tetro"), (35, 35), 3)


def test_round_trip_through_upstream_format():
    model = _tetro()
    with torch.no_grad():
        model.prototype_params.uniform_()
        model.layer_tsf.heads["1"].weights[-1].normal_()
    ckpt = {"model_name": "dti_sprites", "model_kwargs": TETRO_KWARGS, "model_state": _tetro_upstream_state(model),
            "epoch": 7}
    loaded = load_upstream_checkpoint(ckpt, img_size=(35, 35))
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        if n != "cur_epoch":
            assert torch.equal(a, b), n
    assert int(loaded.cur_epoch) == 7 and not loaded.training
    # DataParallel-prefixed state dicts load too.
    dp = {**ckpt, "model_state": {"module." + k: v for k, v in ckpt["model_state"].items()}}
    assert torch.equal(load_upstream_checkpoint(dp, img_size=(35, 35)).prototype_params, loaded.prototype_params)


def test_unknown_and_missing_keys_are_listed():
    model = _tetro()
    state = _tetro_upstream_state(model)
    ckpt = {"model_kwargs": TETRO_KWARGS, "model_state": {**state, "fancy_head.weight": torch.zeros(2)}}
    with pytest.raises(UpstreamFormatError, match=r"no place in this model: \['fancy_head.weight'\]"):
        load_upstream_checkpoint(ckpt, img_size=(35, 35))
    del state["layer_transformer.tsf_sequences.2.tsf_modules.1.regressor.5.bias"]
    missing = r"missing from the upstream checkpoint: \['layer_tsf.heads.1.biases.2\[2\]'\]"
    with pytest.raises(UpstreamFormatError, match=missing):
        load_upstream_checkpoint({"model_kwargs": TETRO_KWARGS, "model_state": state}, img_size=(35, 35))


def test_checkpoint_errors():
    with pytest.raises(UpstreamFormatError, match="missing"):
        load_upstream_checkpoint({"model_state": {}})
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_upstream_checkpoint("nope.pkl")
    state = _tetro_upstream_state(_tetro())
    with pytest.raises(UpstreamFormatError, match="pass img_size"):
        load_upstream_checkpoint({"model_kwargs": TETRO_KWARGS, "model_state": state})
    with pytest.raises(UpstreamFormatError, match="does not fit"):
        wrong_size = {**state, "prototype_params": torch.zeros(19, 3, 20, 20)}
        load_upstream_checkpoint({"model_kwargs": TETRO_KWARGS, "model_state": wrong_size}, img_size=(35, 35))
    with pytest.raises(UpstreamFormatError, match="model_kwargs"):
        load_upstream_checkpoint({"model_kwargs": {**TETRO_KWARGS, "n_sprits": 3}, "model_state": state},
                                 img_size=(35, 35))


def test_parameter_map_slots():
    model = _tetro()
    slots = upstream_parameter_map(model, ["layer_transformer.tsf_sequences.2.tsf_modules.0.regressor.3.weight",
                                           "layer_transformer.encoder.encoder.3.0.bn1.running_var",
                                           "layer_transformer.tsf_sequences.0.tsf_modules.0.identity"])
    head = slots["layer_transformer.tsf_sequences.2.tsf_modules.0.regressor.3.weight"]
    assert head.name == "layer_tsf.heads.0.weights.1"
    assert head.index == 2
    assert slots["layer_transformer.encoder.encoder.3.0.bn1.running_var"].name == "encoder.encoder.3.0.bn1.running_var"
    assert slots["layer_transformer.tsf_sequences.0.tsf_modules.0.identity"] is None


def test_from_upstream_config(tmp_path):
    text = (
        "dataset:\n  name: tetrominoes\nmodel:\n  name: dti_sprites\n  n_sprites: 19\n  n_objects: 3\n"
        "  estimate_minimum: True\n  lambda_empty_sprite: 1e-4\ntraining:\n  batch_size: 32\n"
        "  optimizer:\n    name: adam\n    lr: 1.0e-4\n  visualizer_port: 8888\n  pretrained:\n  resume:\n")
    path = tmp_path / "tetro.yml"
    path.write_text(text)
    cfg = from_upstream_config(path)
    assert cfg["model"]["lambda_empty_sprite"] == pytest.approx(1e-4) and cfg["training"]["batch_size"] == 32
    path.write_text(text.replace("n_objects", "n_object"))
    with pytest.raises(ConfigError, match=r"model\.n_object"):
        from_upstream_config(path)

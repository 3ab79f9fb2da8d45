"""Atomic checkpoint writes, corrupt / foreign files, and RNG state round trips."""
import os
import random

import numpy as np
import pytest
import torch

from dtifast import checkpoint as ckpt
from dtifast import runs
from dtifast.checkpoint import (CheckpointError, capture_rng_state, load_checkpoint, restore_rng_state,
                                save_checkpoint)


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "cfg": {"a": [1, 2.5, "x", None]}}
    path = save_checkpoint(tmp_path / "run" / "checkpoint.pt", state)
    out = load_checkpoint(tmp_path / "run")  # a run folder resolves to its checkpoint.pt
    assert path == tmp_path / "run" / "checkpoint.pt"
    assert torch.equal(out["model"]["w"], state["model"]["w"])
    assert out["epoch"] == 3 and out["cfg"] == state["cfg"]
    assert out["format_version"] == ckpt.FORMAT_VERSION
    # Nothing but the checkpoint is left in the folder (no temp files).
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint.pt"]


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]


def test_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "truncated.pt"
    save_checkpoint(bad, {"w": torch.ones(1000)})
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model_state": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a dtifast checkpoint"):
        load_checkpoint(foreign)
    future = tmp_path / "future.pt"
    torch.save({"format_version": ckpt.FORMAT_VERSION + 1}, future)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(future)
    with pytest.raises(TypeError, match="mapping"):
        save_checkpoint(tmp_path / "x.pt", [1, 2])


def test_rng_round_trip(tmp_path):
    random.random(), np.random.rand(), torch.rand(1)
    save_checkpoint(tmp_path / "c.pt", {"rng": capture_rng_state()})
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    second = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])
    with pytest.raises(CheckpointError, match="numpy"):
        restore_rng_state({"python": random.getstate(), "torch": torch.get_rng_state()})


def test_save_run_from_model(tmp_path):
    from dtifast.config import load_config
    from dtifast.model import build_model
    cfg = load_config("tetro", ["model.encoder_name=resnet20"])
    model = build_model(cfg, (35, 35), 3)
    runs.save_run_from_model(tmp_path / "run", cfg, model, epoch=7)
    state = load_checkpoint(tmp_path / "run")
    assert state["kind"] == "model" and state["progress"]["epoch"] == 7
    assert state["meta"] == {"img_size": [35, 35], "n_channels": 3, "n_classes": None}
    assert state["config"] == cfg
    assert (tmp_path / "run" / runs.CONFIG_NAME).is_file()
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v), k

"""Every bundled config's model at a small image size, for tests whose subject does not depend on the size
(host reads, graph breaks): the model's structure, modules and ops are the config's own."""
from __future__ import annotations

import torch

from dtifast.bench.ops import ALL_CONFIGS
from dtifast.config import load_config
from dtifast.model import build_model

__all__ = ["ALL_CONFIGS", "small_model"]


def small_model(name: str, backend: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The config's model on 16×16 images (8×8 sprites for multi-object configs), in training mode at the
    end of its curriculum (every transformation module on), and a batch of 2 images for it."""
    cfg = load_config(name)
    model_cfg = dict(cfg["model"], backend=backend)
    multi = int(model_cfg.get("n_objects", 1)) > 1
    size = (16, 16)
    model_cfg["sprite_size"] = [8, 8] if multi else list(size)
    C = 1 if name == "dsprites" and cfg["dataset"].get("n_channels") == 1 else 3
    init = torch.rand(4, C, *size)  # dataset images for the "mean"/"sample" inits
    model = build_model({"model": model_cfg}, size, C, init)
    model.set_epoch(10_000)
    return model.train(), torch.rand(2, C, *size)

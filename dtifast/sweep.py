"""The number-of-sprites sweep (the paper's Fig. 1): one run per K, the final loss against K, the elbow."""
from __future__ import annotations

import copy
import csv
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence

import torch

from . import checkpoint as ckpt
from .evaluate import evaluate_run
from .train import Trainer
from .visualize import find_elbow, save_figure, sweep_figure

__all__ = ["parse_k_range", "sweep_k"]


def parse_k_range(spec: str) -> list[int]:
    """``"10:25"`` (inclusive), ``"10:25:5"`` (with a step) or ``"4,8,12"`` → sorted distinct K values."""
    try:
        if ":" in spec:
            parts = [int(p) for p in spec.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            lo, hi, step = parts[0], parts[1], parts[2] if len(parts) == 3 else 1
            if step < 1 or hi < lo:
                raise ValueError
            ks = list(range(lo, hi + 1, step))
        else:
            ks = [int(p) for p in spec.split(",")]
    except ValueError:
        raise ValueError(f"--k must look like LO:HI, LO:HI:STEP or K1,K2,... with LO <= HI, got {spec!r}") from None
    if not ks or min(ks) < 1:
        raise ValueError(f"K values must be >= 1, got {spec!r}")
    return sorted(set(ks))


def sweep_k(cfg: Mapping[str, Any], ks: Sequence[int], out_dir: str | os.PathLike, *,
            data_root: Optional[str | os.PathLike] = None, device: Optional[str | torch.device] = None,
            progress: Optional[bool] = None) -> dict[str, Any]:
    """Train one run per number of sprites K and plot the final loss against K (the paper's Fig. 1).

    Each run lives in ``out_dir/k{K}``; a run folder that already holds a checkpoint is resumed (and a
    finished one only re-evaluated), so an interrupted sweep continues where it stopped. The final loss
    is the evaluation loss (no mask noise) on the first 320 images. Writes ``sweep_k.csv`` and
    ``sweep_k.png`` (elbow marked) in ``out_dir``.

    Returns:
        dict with ``k`` (list), ``loss`` (list), ``elbow`` (the K at the elbow), ``csv`` and ``figure`` paths.
    """
    if not ks:
        raise ValueError("sweep_k needs at least one K")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    losses = []
    for k in ks:
        run_cfg = copy.deepcopy(dict(cfg))
        run_cfg["model"] = {**run_cfg["model"], "n_sprites": int(k)}
        run_dir = out_dir / f"k{k}"
        resume = (run_dir / ckpt.CHECKPOINT_NAME).exists()
        trainer = Trainer(run_cfg, run_dir, data_root=data_root, device=device, resume=resume, progress=progress)
        try:
            trainer.run()
        finally:
            trainer.close()
        losses.append(float(evaluate_run(run_dir, data_root=data_root, device=device)["loss"]))
    elbow = find_elbow(ks, losses)
    csv_path = out_dir / "sweep_k.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["k", "loss", "run", "elbow"])
        for i, (k, loss) in enumerate(zip(ks, losses)):
            w.writerow([k, loss, str(out_dir / f"k{k}"), int(i == elbow)])
    fig_path = save_figure(sweep_figure(list(ks), losses, elbow), out_dir / "sweep_k.png")
    return {"k": list(ks), "loss": losses, "elbow": int(ks[elbow]), "csv": csv_path, "figure": fig_path}

"""``python -m dtifast.demo --out DIR`` (``make demo``): DTI-Sprites learning Tetrominoes on a CPU.

Generates a small Tetrominoes set, trains ``configs/tetro-tiny.yml`` on it, evaluates with the paper's
protocol (first 320 images) and draws the pictures. Everything lands in ``DIR``:

* ``data/tetrominoes/`` — the generated images and masks (reused when already there);
* ``run/`` — config, checkpoint, CSV and TensorBoard logs, ``eval.json``;
* ``run/pictures/`` — ``sprites.png``, ``decomposition.png``, ``curves.png``;
* ``demo.json`` — the metrics and the time each stage took.

Running it again continues the run from its checkpoint (and only re-evaluates a finished one).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Optional, Sequence

CONFIG = "tetro-tiny"
N_IMAGES = 2000


def run_demo(out: str | os.PathLike, n_images: int = N_IMAGES, overrides: Sequence[str] = (),
             device: str = "cpu", progress: Optional[bool] = None) -> dict:
    """Generate, train, evaluate and draw; returns the summary also written to ``out/demo.json``."""
    import torch

    from .checkpoint import CHECKPOINT_NAME
    from .config import load_config
    from .data import make_dataset
    from .evaluate import evaluate_run
    from .train import Trainer
    from .visualize import make_pictures

    if n_images < 320:
        raise ValueError(f"the demo needs at least 320 images (the evaluation set), got {n_images}")
    out = pathlib.Path(out)
    data_root = out / "data"
    run_dir = out / "run"
    times: dict[str, float] = {}

    t = time.perf_counter()
    images_dir = data_root / "tetrominoes" / "images"
    if not images_dir.is_dir() or len(list(images_dir.glob("*.png"))) != n_images:
        make_dataset("tetrominoes", data_root / "tetrominoes", n=n_images, seed=0)
    times["data"] = time.perf_counter() - t

    t = time.perf_counter()
    cfg = load_config(CONFIG, list(overrides))
    resume = (run_dir / CHECKPOINT_NAME).exists()
    trainer = Trainer(None if resume and not overrides else cfg, run_dir, data_root=data_root, device=device,
                      resume=resume, progress=progress)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    times["train"] = time.perf_counter() - t

    t = time.perf_counter()
    metrics = evaluate_run(run_dir, data_root=data_root, device=device)
    times["eval"] = time.perf_counter() - t

    t = time.perf_counter()
    pictures = make_pictures(run_dir, data_root=data_root, device=device)
    times["pictures"] = time.perf_counter() - t

    result = {
        "config": CONFIG, "n_images": n_images, "iterations": summary["iteration"], "device": device,
        "threads": torch.get_num_threads(),
        "ari_fg": metrics.get("ari_fg"), "ari": metrics.get("ari"), "miou": metrics.get("miou"),
        "macc": metrics.get("macc"), "eval_loss": metrics["loss"],
        "seconds": times, "total_seconds": sum(times.values()),
        "pictures": {k: str(v) for k, v in pictures.items()}, "run": str(run_dir),
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtifast.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("demo_out"), help="output folder")
    parser.add_argument("--n-images", type=int, default=N_IMAGES, help="images to generate")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of configs/tetro-tiny.yml")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from .allocator import retain_freed_memory
    retain_freed_memory()  # the training steps reuse their freed tensors without page faults
    res = run_demo(args.out, args.n_images, args.overrides, args.device)
    print(f"\nTetrominoes demo ({res['iterations']} iterations on {res['device']}, {res['threads']} threads):")
    print(f"  ARI-FG {100 * res['ari_fg']:.1f}  ARI {100 * res['ari']:.1f}  mIoU {100 * res['miou']:.1f}  "
          f"mACC {100 * res['macc']:.1f}  (first 320 images)")
    print("  time: " + ", ".join(f"{k} {v:.0f}s" for k, v in res["seconds"].items())
          + f", total {res['total_seconds']:.0f}s")
    for name, path in res["pictures"].items():
        print(f"  {name}: {path}")
    print(f"  metrics: {args.out / 'demo.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time to quality: train on generated Tetrominoes until ARI-FG reaches a target or time runs out.

    python benchmarks/time_to_quality.py --device cuda --out ttq        # the GPU run: batch 128, fused path
    python benchmarks/time_to_quality.py --device cpu --out /tmp/ttq --n-images 2000 --max-seconds 60 \
        --batch 16 --eval-images 64                                    # a check of the script on a CPU

What it does: generates ``--n-images`` Tetrominoes scenes (upstream's set has 60,000; reused when the
folder already holds them), builds the ``tetro`` config at ``--batch`` with the default backend of the
device (Triton on CUDA: the fused path) unless ``--backend`` names one, and trains with
:class:`dtifast.train.Trainer` in slices of about ``--eval-every`` seconds. After each slice it
evaluates ARI-FG on the first ``--eval-images`` images of the set (the paper's evaluation split is the
first 320). It stops once ARI-FG ≥ ``--target`` or ``--max-seconds`` of training have passed.

Time is training time: the wall clock of the training slices (data loading, steps, cluster
reassignment and the slice-end checkpoint included), without the evaluations, which are also
reported. Output in ``--out``: ``ttq.csv`` (one row per evaluation), ``ttq.json`` (summary, settings,
machine), ``ttq.png`` (ARI-FG against training time) and the run folder ``run/``.
"""
from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys
import time
from typing import Any, Optional, Sequence

import torch

from dtifast.bench.machine import machine_info
from dtifast.bench.train_step import default_mix
from dtifast.config import load_config
from dtifast.data import build_dataset, dataset_folder, make_dataset
from dtifast.evaluate import evaluate_model
from dtifast.train import Trainer

NEVER = 10 ** 9  # an interval that never comes: evaluations, logs and checkpoints are driven from here


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", type=pathlib.Path, required=True, help="output folder")
    p.add_argument("--data-root", type=pathlib.Path, default=None, help="where the set goes (default OUT/data)")
    p.add_argument("--n-images", type=int, default=60000, help="scenes to generate (upstream: 60,000)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--backend", default=None, help="ops backend (default: the device's; Triton on CUDA)")
    p.add_argument("--target", type=float, default=0.99, help="ARI-FG to reach")
    p.add_argument("--max-seconds", type=float, default=600.0, help="training-time limit")
    p.add_argument("--eval-every", type=float, default=20.0, help="seconds of training between evaluations")
    p.add_argument("--eval-images", type=int, default=320, help="first N images evaluated (the paper: 320)")
    p.add_argument("--lr-scaling", choices=["none", "linear", "sqrt"], default="none",
                   help="scale the config's learning rates from its batch 32 to --batch")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated set")
    args = p.parse_args(argv)
    for name in ("n_images", "batch", "eval_images"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("max_seconds", "eval_every"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not 0 < args.target <= 1:
        raise SystemExit(f"--target must be in (0, 1], got {args.target}")
    return args


def _dataset(root: pathlib.Path, n: int, seed: int) -> None:
    folder = dataset_folder("tetrominoes", root)
    meta = folder / "meta.json"
    if meta.exists():
        have = json.loads(meta.read_text())
        if have.get("n") == n and have.get("seed") == seed:
            return
        raise SystemExit(f"{folder} holds another set (n={have.get('n')}, seed={have.get('seed')}); "
                         "remove it or pass another --data-root")
    make_dataset("tetrominoes", root, n, seed, progress=False)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_config("tetro")
    cfg["model"]["backend"] = args.backend
    training = cfg["training"]
    training.update(batch_size=args.batch, lr_scaling=args.lr_scaling, lr_reference_batch_size=32,
                    val_stat_interval=NEVER, checkpoint_interval=NEVER, train_stat_interval=50,
                    tensorboard=False)
    if args.workers is not None:
        training["n_workers"] = args.workers
    return cfg


def _plot(path: pathlib.Path, rows: list[dict[str, Any]], target: float, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["train_seconds"] for r in rows], [100 * r["ari_fg"] for r in rows], marker="o")
    ax.axhline(100 * target, color="gray", linestyle="--", label=f"target {100 * target:g}%")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("ARI-FG (%)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.out.mkdir(parents=True, exist_ok=True)
    root = args.data_root or args.out / "data"
    start = time.perf_counter()
    _dataset(root, args.n_images, args.seed)
    generation_s = time.perf_counter() - start
    cfg = _config(args)
    eval_set = build_dataset(cfg["dataset"], "eval", root, target="both")
    trainer = Trainer(cfg, args.out / "run", data_root=root, device=device, progress=False)
    rows: list[dict[str, Any]] = []
    train_s = eval_s = 0.0
    chunk = 20  # iterations of the first slice; later slices aim at --eval-every seconds
    reached = None
    with (args.out / "ttq.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["iteration", "epoch", "train_seconds", "eval_seconds", "loss",
                                               "ari", "ari_fg"])
        writer.writeheader()
        while train_s < args.max_seconds and trainer.iteration < trainer.total_iterations:
            chunk = max(1, min(chunk, trainer.total_iterations - trainer.iteration))
            t0 = time.perf_counter()
            result = trainer.run(stop_at=trainer.iteration + chunk)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            slice_s = time.perf_counter() - t0
            train_s += slice_s
            chunk = max(1, int(chunk * args.eval_every / max(slice_s, 1e-3)))
            t0 = time.perf_counter()
            scores = evaluate_model(trainer.model, eval_set, batch_size=min(args.batch, 256), device=device,
                                    n_images=args.eval_images)
            eval_s += time.perf_counter() - t0
            row = {"iteration": trainer.iteration, "epoch": trainer.epoch, "train_seconds": round(train_s, 3),
                   "eval_seconds": round(eval_s, 3), "loss": result["loss"], "ari": scores["ari"],
                   "ari_fg": scores["ari_fg"]}
            writer.writerow(row)
            f.flush()
            rows.append(row)
            print(f"[ttq] {train_s:7.1f} s  iteration {trainer.iteration}  ARI-FG {100 * scores['ari_fg']:.2f}%",
                  file=sys.stderr, flush=True)
            if scores["ari_fg"] >= args.target:
                reached = row
                break
    trainer.close()
    machine = machine_info(device)
    title = (f"Tetrominoes, batch {args.batch}, {machine['device_name']}: "
             + (f"ARI-FG {100 * args.target:g}% at {reached['train_seconds']:.0f} s" if reached
                else f"target not reached in {train_s:.0f} s"))
    if rows:
        _plot(args.out / "ttq.png", rows, args.target, title)
    summary = {"reached": reached is not None, "time_to_target_s": reached["train_seconds"] if reached else None,
               "iterations": trainer.iteration, "best_ari_fg": max((r["ari_fg"] for r in rows), default=None),
               "train_seconds": train_s, "eval_seconds": eval_s, "generation_seconds": generation_s,
               "settings": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()},
               "backend": args.backend or "default",
               "backends_per_op": {op: name for op, name in default_mix(device).items()} if args.backend is None
               else args.backend, "device": str(device), "machine": machine, "evaluations": rows}
    (args.out / "ttq.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(title)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``dtifast`` command line.

Subcommands::

    dtifast train CONFIG --out RUN_DIR [--set key=value ...]   train (or --resume) a model
    dtifast eval RUN_DIR                                       paper metrics -> RUN_DIR/eval.json
    dtifast report RUN_DIR [RUN_DIR ...]                       mean ± std over seeds, outlier shown
    dtifast pictures RUN_DIR                                   sprites, decomposition, curves (PNG)
    dtifast sweep-k CONFIG --k 10:25 --out DIR                 final loss against K, elbow marked
    dtifast data ...                                           generate / inspect datasets
    dtifast import-upstream MODEL_PKL --out RUN_DIR            the authors' checkpoints
    dtifast decompose RUN_DIR INPUT --out DIR                  layers of new images (PNG/NPZ + JSON)

Multi-GPU: ``torchrun --nproc_per_node=N -m dtifast.cli train CONFIG --out RUN_DIR`` (DDP, one process
per GPU; ``training.batch_size`` is the global batch). Errors in the input (config, data, checkpoint)
print one line and exit with status 2; a diverged run exits with 3; ``--debug`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
from typing import Optional, Sequence

EXIT_INPUT_ERROR = 2
EXIT_DIVERGED = 3


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.batch_size=64 (repeatable)")
    p.add_argument("--data-root", type=pathlib.Path, default=None, help="folder holding the datasets")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--amp", choices=["bf16"], default=None,
                   help="run the encoder under bf16 autocast (the rest stays float32)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the model (optionally naming the backend; default inductor)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (all processes together)")
    p.add_argument("--lr-scaling", choices=["none", "linear", "sqrt"], default=None,
                   help="scale learning rates from the config's batch size to --batch-size")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers per process")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtifast", description="Fast DTI-Sprites: train, evaluate, draw.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a model from a config", description=(
        "Train DTI-Sprites with upstream's schedule; checkpoints go to RUN_DIR/checkpoint.pt and "
        "--resume continues bit-exactly. Run under torchrun for DDP."))
    p.add_argument("config", nargs="?", default=None,
                   help="YAML config or bundled name (tetro, tetro-tiny, …); optional with --resume")
    p.add_argument("--out", type=pathlib.Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--stop-at", type=int, default=None, metavar="ITER",
                   help="save and stop after this many iterations (continue later with --resume)")
    _add_train_options(p)
    p.set_defaults(func=_train_main)

    p = sub.add_parser("eval", help="evaluate a run (paper metrics, JSON)")
    p.add_argument("run", type=pathlib.Path, help="run folder")
    p.add_argument("--data-root", type=pathlib.Path, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--n-images", type=int, default=320, help="first N images (the paper: 320)")
    p.add_argument("--all", action="store_true", help="evaluate every image of the set")
    p.add_argument("--out", type=pathlib.Path, default=None, help="JSON file (default RUN/eval.json)")
    p.set_defaults(func=_eval_main)

    p = sub.add_parser("report", help="aggregate evaluated runs (seeds): mean ± std, outlier flagged")
    p.add_argument("runs", nargs="+", type=pathlib.Path, help="run folders (with eval.json)")
    p.add_argument("--metrics", nargs="+", default=None, help="metrics to aggregate (default: all present)")
    p.add_argument("--json", type=pathlib.Path, default=None, help="also write the report as JSON")
    p.set_defaults(func=_report_main)

    p = sub.add_parser("pictures", help="draw sprites, decompositions and training curves")
    p.add_argument("run", type=pathlib.Path, help="run folder")
    p.add_argument("--out", type=pathlib.Path, default=None, help="folder (default RUN/pictures)")
    p.add_argument("--n-images", type=int, default=8, help="images in the decomposition figure")
    p.add_argument("--data-root", type=pathlib.Path, default=None)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_pictures_main)

    p = sub.add_parser("sweep-k", help="train over K and plot final loss against K (elbow marked)")
    p.add_argument("config", help="YAML config or bundled name")
    p.add_argument("--k", required=True, help="K values: LO:HI (inclusive), LO:HI:STEP or K1,K2,…")
    p.add_argument("--out", type=pathlib.Path, required=True, help="folder for the runs and the plot")
    _add_train_options(p)
    p.set_defaults(func=_sweep_main)

    # Subcommands owned by other modules.
    from . import bench, compat
    from .data import cli as data_cli
    from . import decomposition
    data_cli.add_parser(sub)
    compat.add_parser(sub)
    decomposition.add_parser(sub)
    bench.add_parser(sub)
    return parser


def _config_overrides(args: argparse.Namespace, base_batch: Optional[int]) -> list[str]:
    """The --set overrides plus those the dedicated flags imply (the flags win)."""
    out = list(args.overrides)
    if args.amp is not None:
        out.append(f"training.amp={args.amp}")
    if args.compile is not None:
        out.append("training.compile=true" if args.compile == "inductor" else f"training.compile={args.compile}")
    if args.workers is not None:
        out.append(f"training.n_workers={args.workers}")
    if args.seed is not None:
        out.append(f"training.seed={args.seed}")
    if args.lr_scaling is not None:
        out.append(f"training.lr_scaling={args.lr_scaling}")
        if base_batch is not None and not any(o.startswith("training.lr_reference_batch_size=") for o in out):
            out.append(f"training.lr_reference_batch_size={base_batch}")
    if args.batch_size is not None:
        out.append(f"training.batch_size={args.batch_size}")
    return out


def _load_train_config(args: argparse.Namespace, config: Optional[str]) -> Optional[dict]:
    from .config import load_config
    if config is None:
        return None
    base = load_config(config, args.overrides)
    return load_config(config, _config_overrides(args, base["training"]["batch_size"]))


def _train_main(args: argparse.Namespace) -> int:
    from .allocator import retain_freed_memory
    from .train import Trainer
    retain_freed_memory()  # a process that trains: steps reuse their freed tensors without page faults
    if args.config is None and not args.resume:
        raise ValueError("give a CONFIG (or --resume to continue the run in --out)")
    cfg = _load_train_config(args, args.config)
    if cfg is None and (args.overrides or args.amp or args.compile or args.batch_size or args.seed is not None):
        # Resuming without a config: apply the flags to the checkpoint's config.
        from .checkpoint import load_checkpoint
        from .config import apply_overrides, validate_config
        saved = load_checkpoint(args.out)["config"]
        cfg = validate_config(apply_overrides(saved, _config_overrides(args, saved["training"]["batch_size"])))
    trainer = Trainer(cfg, args.out, data_root=args.data_root, device=args.device, resume=args.resume,
                      progress=False if args.no_progress else None)
    try:
        summary = trainer.run(stop_at=args.stop_at)
    finally:
        trainer.close()
    if trainer.dist.is_main:
        print(json.dumps({k: v for k, v in summary.items()}, default=str))
    return 0


def _eval_main(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run
    result = evaluate_run(args.run, data_root=args.data_root, device=args.device, batch_size=args.batch_size,
                          n_images=None if args.all else args.n_images, out=args.out)
    shown = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) or v is None}
    print(json.dumps(shown, indent=2))
    return 0


def _report_main(args: argparse.Namespace) -> int:
    from .report import aggregate, format_report, load_results
    rep = aggregate(load_results(args.runs), args.metrics)
    print(format_report(rep))
    if args.json is not None:
        args.json.write_text(json.dumps(rep.to_dict(), indent=2))
    return 0


def _pictures_main(args: argparse.Namespace) -> int:
    from .visualize import make_pictures
    for name, path in make_pictures(args.run, args.out, args.n_images, args.data_root, args.device).items():
        print(f"{name}: {path}")
    return 0


def _sweep_main(args: argparse.Namespace) -> int:
    from .allocator import retain_freed_memory
    from .sweep import parse_k_range, sweep_k
    retain_freed_memory()
    ks = parse_k_range(args.k)
    cfg = _load_train_config(args, args.config)
    result = sweep_k(cfg, ks, args.out, data_root=args.data_root, device=args.device,
                     progress=False if args.no_progress else None)
    print(json.dumps(result, default=str))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``dtifast`` console script; returns the exit status."""
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .runs import DatasetMismatchError
    from .train import TrainingDivergedError
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except TrainingDivergedError as err:
        if args.debug:
            raise
        print(f"dtifast: training diverged: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except (ConfigError, DatasetMismatchError, CheckpointError, FileNotFoundError, FileExistsError, ValueError,
            TypeError) as err:
        if args.debug or os.environ.get("DTIFAST_DEBUG") == "1":
            raise
        print(f"dtifast {args.command}: error: {err}", file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())

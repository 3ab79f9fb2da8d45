"""The ``dtifast data`` subcommands: ``make`` (generate a dataset) and ``preview`` (PNG grid).

Wired into the main command line by :func:`add_parser`; ``python -m dtifast.data ...`` runs them alone.
"""
from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import time
from typing import Optional, Sequence

from .generators import GENERATORS


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data`` (with ``make`` and ``preview``) to ``subparsers``; each sets ``func(args) -> int``."""
    parser = subparsers.add_parser("data", help="generate / inspect datasets",
                                   description="Generate look-alike multi-object datasets with exact ground "
                                               "truth in upstream's folder format, or draw a preview grid.")
    sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    p = sub.add_parser("make", help="generate a dataset: DIR/<name>/{images,masks,sem_masks}/{i}.png",
                       description="Generate N scenes into DIR/<name>/ (tetrominoes -> tetrominoes, "
                                   "multi-dsprites -> dsprites_gray, clevr6 -> clevr6).")
    p.add_argument("kind", choices=sorted(GENERATORS), help="which dataset")
    p.add_argument("--out", type=pathlib.Path, required=True, help="data root (or the dataset folder itself)")
    p.add_argument("--n", type=int, required=True, help="number of scenes")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all usable CPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_make_main)
    p = sub.add_parser("preview", help="write a PNG grid of images and masks")
    p.add_argument("folder", type=pathlib.Path, help="dataset folder (e.g. DIR/tetrominoes)")
    p.add_argument("--out", type=pathlib.Path, default=None, help="PNG file (default FOLDER/preview.png)")
    p.add_argument("--n", type=int, default=8, help="items to show (default 8)")
    p.add_argument("--cell", type=int, default=96, help="cell size in pixels (default 96)")
    p.set_defaults(func=_preview_main)
    return parser


def _make_main(args: argparse.Namespace) -> int:
    from .make import make_dataset
    start = time.perf_counter()
    folder = make_dataset(args.kind, args.out, args.n, seed=args.seed, workers=args.workers,
                          progress=not args.no_progress)
    seconds = time.perf_counter() - start
    print(f"wrote {args.n} {args.kind} scenes to {folder} in {seconds:.1f} s ({args.n / seconds:.0f} scenes/s)")
    return 0


def _preview_main(args: argparse.Namespace) -> int:
    from .preview import preview
    print(preview(args.folder, args.out, n=args.n, cell=args.cell))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dtifast.data {make,preview} ...``; input errors print one line and exit with 2."""
    parser = argparse.ArgumentParser(prog="python -m dtifast.data")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

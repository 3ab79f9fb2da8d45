"""``make_dataset``: generate a multi-object dataset into upstream's folder format.

Layout written (upstream's, so that a real download can replace it unchanged)::

    <folder>/images/{i}.png      RGB
    <folder>/masks/{i}.png       instance ids, 8-bit gray (0 = background)
    <folder>/sem_masks/{i}.png   class ids, 8-bit gray (0 = background)
    <folder>/meta.json           kind, n, seed, generation parameters, class names

Scenes are generated in chunks of :data:`CHUNK` scenes; chunk ``c`` draws from
``numpy.random.default_rng([seed, c])``, so the output depends on ``seed`` and ``n`` only, not on the
number of worker processes.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import pathlib
import sys
import time
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from .generators import get_generator
from .io import write_png

log = logging.getLogger(__name__)

CHUNK = {"tetrominoes": 500, "multi-dsprites": 250, "clevr6": 16}
SUBFOLDERS = ("images", "masks", "sem_masks")
META_NAME = "meta.json"
FORMAT_VERSION = 1


def dataset_folder(kind: str, out: str | os.PathLike) -> pathlib.Path:
    """Where :func:`make_dataset` writes: ``out`` itself when its name is upstream's folder name for
    ``kind`` (``tetrominoes``, ``dsprites_gray``, ``clevr6``), else ``out/<that name>``."""
    name = get_generator(kind).NAME
    out = pathlib.Path(out)
    return out if out.name == name else out / name


def _chunk_job(args: tuple[str, str, int, int, int, int]) -> int:
    kind, folder, seed, chunk, start, count = args
    gen = get_generator(kind)
    scenes = gen.generate(np.random.default_rng([seed, chunk]), count)
    for j in range(count):
        name = f"{start + j}.png"
        write_png(os.path.join(folder, "images", name), scenes.images[j])
        write_png(os.path.join(folder, "masks", name), scenes.instance[j])
        write_png(os.path.join(folder, "sem_masks", name), scenes.semantic[j])
    return count


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def make_dataset(kind: str, out: str | os.PathLike, n: int, seed: int = 0, workers: Optional[int] = None,
                 progress: bool = True) -> pathlib.Path:
    """Generate ``n`` scenes of ``kind`` with exact ground truth, in upstream's folder format.

    Args:
        kind: "tetrominoes", "multi-dsprites" or "clevr6" (see :mod:`dtifast.data.generators`).
        out: the dataset folder, or a data root (see :func:`dataset_folder`): both
            ``make_dataset("tetrominoes", "data/tetrominoes", ...)`` and ``make_dataset("tetrominoes",
            "data", ...)`` write ``data/tetrominoes/images/0.png`` …
        n: number of scenes (indices ``0 .. n-1``).
        seed: the output is a function of ``(kind, n, seed)``.
        workers: processes (default: the usable CPUs; 1 = in this process).
        progress: show a tqdm bar.

    Returns:
        The dataset folder. PNGs of an earlier generation in its three sub-folders are removed first,
        so that the folder holds exactly ``n`` scenes.

    Example:
        >>> folder = make_dataset("tetrominoes", tmp / "data", n=8, progress=False)  # doctest: +SKIP
        >>> sorted(p.name for p in folder.iterdir())  # doctest: +SKIP
        ['images', 'masks', 'meta.json', 'sem_masks']
    """
    gen = get_generator(kind)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    folder = dataset_folder(kind, out)
    for sub in SUBFOLDERS:
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for old in (folder / sub).glob("*.png"):
            old.unlink()
    for stale in folder.glob(".dtifast_cache*"):
        stale.unlink()
    chunk = CHUNK[kind]
    jobs = [(kind, str(folder), int(seed), c, s, min(chunk, n - s)) for c, s in enumerate(range(0, n, chunk))]
    workers = min(workers, len(jobs))
    start = time.perf_counter()
    bar = tqdm(total=n, desc=f"{kind} -> {folder}", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        if workers == 1:
            for job in jobs:
                bar.update(_chunk_job(job))
        else:
            # fork where available: children only run numpy and file writes (no torch, no threads).
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            with mp.get_context(method).Pool(workers) as pool:
                for done in pool.imap_unordered(_chunk_job, jobs):
                    bar.update(done)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    meta = {
        "format_version": FORMAT_VERSION, "generator": "dtifast", "kind": kind, "name": gen.NAME, "n": int(n),
        "seed": int(seed), "chunk": chunk, "rng": "numpy.random.default_rng([seed, chunk_index])",
        "img_size": list(gen.IMG_SIZE), "n_channels": 3, "n_classes": gen.N_CLASSES,
        "class_names": list(gen.CLASS_NAMES), "params": gen.params(),
    }
    (folder / META_NAME).write_text(json.dumps(meta, indent=2))
    log.info("generated %d %s scenes in %.1f s (%.0f scenes/s, %d workers) into %s", n, kind, seconds,
             n / seconds, workers, folder)
    return folder

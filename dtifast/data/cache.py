"""Decoded-image caches: ``uint8`` arrays in memory, or memory-mapped ``.npy`` files beside the data.

A dataset folder may hold ``.dtifast_cache/<key>_<H>x<W>.npy`` (the whole set decoded, ``(N, H, W[, 3])``)
with a ``.json`` fingerprint (number of files and the image folder's modification time); a stale or
unreadable cache is ignored and rewritten. Writing is best effort: a read-only dataset folder just
means decoding into memory on every start.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)

CACHE_DIR = ".dtifast_cache"
CACHE_MODES = ("auto", "memory", "npy", "none")
DEFAULT_LIMIT_BYTES = int(float(os.environ.get("DTIFAST_CACHE_GB", "8")) * 2**30)


def check_mode(cache: str) -> str:
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    return cache


def fingerprint(folder: pathlib.Path, n: int) -> dict[str, Any]:
    """What a cache must match: the file count and the modification time of the image folder."""
    return {"n": int(n), "mtime_ns": (folder / "images").stat().st_mtime_ns if (folder / "images").is_dir()
            else folder.stat().st_mtime_ns}


def cache_path(folder: pathlib.Path, key: str, size: tuple[int, int]) -> pathlib.Path:
    return folder / CACHE_DIR / f"{key}_{size[0]}x{size[1]}.npy"


def open_npy(path: pathlib.Path, fp: dict[str, Any]) -> Optional[np.ndarray]:
    """The memory-mapped cache at ``path`` when its fingerprint matches ``fp``, else None."""
    meta = path.with_suffix(".json")
    try:
        if json.loads(meta.read_text()) != fp:
            return None
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return arr if arr.shape[0] == fp["n"] and arr.dtype == np.uint8 else None


def save_npy(path: pathlib.Path, array: np.ndarray, fp: dict[str, Any]) -> bool:
    """Write ``array`` and its fingerprint atomically; False (and a log line) when the folder is read-only."""
    try:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps(fp))
        return True
    except OSError as e:
        log.warning("could not write the decoded-image cache %s (%s); decoding in memory each time", path, e)
        return False

"""Checkpoints that survive crashes: atomic writes, versioned contents, RNG state capture.

A checkpoint is a dict saved with :func:`torch.save`. :func:`save_checkpoint` writes it to a temporary
file in the target's folder, flushes it to disk and renames it over the target with :func:`os.replace`,
so the file on disk is always either the previous complete checkpoint or the new complete one, never a
torn write (a crash, a full disk or a NaN stop mid-run leave the last good one in place).

Everything is stored as tensors, numbers, strings, lists, tuples and dicts, so :func:`load_checkpoint`
reads it with ``weights_only=True``: loading a checkpoint never runs code from the file.
"""
from __future__ import annotations

import os
import pathlib
import random
import tempfile
from typing import Any, Mapping

import numpy as np
import torch

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"  # its name in a run folder (see dtifast.runs for the whole layout)

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "capture_rng_state", "restore_rng_state",
           "FORMAT_VERSION", "CHECKPOINT_NAME"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or not a dtifast checkpoint of a known version."""


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> pathlib.Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    Args:
        path: the checkpoint file; its folder is created if needed.
        state: a mapping of tensors / numbers / strings / lists / dicts; ``format_version`` is added.

    Returns:
        The path written.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping, got {type(state).__name__}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(state)
    payload["format_version"] = FORMAT_VERSION
    # The temp file must sit in the same folder: os.replace is atomic only within one file system.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Leave no half-written temp file behind; the previous checkpoint is untouched.
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: pathlib.Path) -> None:
    # Makes the rename itself durable; not every platform allows opening a folder, which is harmless.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file, or a run folder holding ``checkpoint.pt``.
        map_location: where tensors are loaded.

    Raises:
        CheckpointError: the file is missing, truncated/corrupt, or of an unknown format version.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is not a dtifast checkpoint (no format_version)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state['format_version']}, this dtifast reads "
                              f"format {FORMAT_VERSION}")
    return state


def capture_rng_state() -> dict[str, Any]:
    """The state of every global random generator training touches: Python, NumPy, torch CPU and CUDA."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # NumPy's state holds an ndarray; stored as a tensor so that weights_only loading accepts it.
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generators captured by :func:`capture_rng_state`."""
    for key in ("python", "numpy", "torch"):
        if key not in state:
            raise CheckpointError(f"RNG state lacks the {key!r} generator; cannot resume bit-exactly")
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        if not torch.cuda.is_available():
            raise CheckpointError("the checkpoint holds CUDA RNG state but CUDA is not available; resume on a "
                                  "GPU machine or start a new run")
        torch.cuda.set_rng_state_all(state["cuda"])

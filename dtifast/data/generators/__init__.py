"""Procedural look-alikes of upstream's multi-object datasets, with exact ground truth.

Each module exposes ``NAME`` (upstream's folder name), ``IMG_SIZE``, ``N_CLASSES``, ``CLASS_NAMES``,
``generate(rng, n) -> Scenes`` and ``params()`` (what ``meta.json`` records).
"""
from __future__ import annotations

from types import ModuleType

from . import clevr, dsprites, tetrominoes
from .base import Scenes

GENERATORS: dict[str, ModuleType] = {"tetrominoes": tetrominoes, "multi-dsprites": dsprites, "clevr6": clevr}

__all__ = ["GENERATORS", "Scenes", "get_generator"]


def get_generator(kind: str) -> ModuleType:
    """The generator module of ``kind`` (one of :data:`GENERATORS`); ``ValueError`` naming the choices."""
    try:
        return GENERATORS[kind]
    except KeyError:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {sorted(GENERATORS)}") from None

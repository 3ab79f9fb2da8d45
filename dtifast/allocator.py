"""Keep freed host memory in the process, so that a training loop does not page-fault its tensors in again.

A CPU training step allocates the same large tensors every iteration (the sprite bank expanded over the
batch, the candidates, their gradients). glibc's ``malloc`` hands such blocks back to the system when they
are freed (``munmap`` above its mmap threshold, or trimming the top of the heap), so the next step's tensor
of the same size page-faults on its first write: about 0.25 ms per MB on a 2-core AMD EPYC, 10–30 % of a
Tetrominoes ResNet-20 step at batch 32 (docs/benchmarks.md). Raising both thresholds keeps the blocks in
the process for the next step, as PyTorch's CPU tuning guide gets from jemalloc or tcmalloc.

This changes the whole process's allocator, so the library never does it on its own: the command-line
entry points that train (``dtifast train``, ``dtifast sweep-k``, ``python -m dtifast.demo``) call
:func:`retain_freed_memory` once at start.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform
from typing import Optional

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and stay there once freed; the heap's top is given back only
# past the same size. 1 GiB is above any tensor of a step at the bundled configs' batch sizes.
THRESHOLD_BYTES = 1 << 30


@functools.lru_cache(maxsize=None)
def c_library() -> Optional[ctypes.CDLL]:
    """The process's C library (for ``mallopt``, ``malloc_trim``), or None where ctypes cannot find it."""
    name = ctypes.util.find_library("c")
    return None if name is None else ctypes.CDLL(name)


def retain_freed_memory(threshold_bytes: int = THRESHOLD_BYTES) -> bool:
    """Ask glibc to serve blocks up to ``threshold_bytes`` from the heap and to keep freed ones.

    Args:
        threshold_bytes: the mmap threshold and the trim threshold, in bytes (positive, below 2**31).

    Returns:
        True when glibc accepted both settings; False on other C libraries and systems (nothing changed).

    Raises:
        ValueError: ``threshold_bytes`` is not a positive int below 2**31 (mallopt takes a C int).
    """
    if not isinstance(threshold_bytes, int) or not 0 < threshold_bytes < 2 ** 31:
        raise ValueError(f"threshold_bytes must be an int in (0, 2**31), got {threshold_bytes!r}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        logger.debug("retain_freed_memory: not glibc (%s), allocator left as it is", platform.libc_ver())
        return False
    libc = c_library()
    if libc is None:
        logger.debug("retain_freed_memory: no C library found, allocator left as it is")
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, threshold_bytes)) and bool(mallopt(M_TRIM_THRESHOLD, threshold_bytes))
    logger.debug("retain_freed_memory(%d): %s", threshold_bytes, "set" if ok else "refused by glibc")
    return ok

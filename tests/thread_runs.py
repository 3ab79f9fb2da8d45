"""Running a test body under several torch CPU thread counts (the native kernels' determinism tests)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch


def run_per_thread_count(fn: Callable[[], Any], counts: Sequence[int] = (1, 2)) -> list[Any]:
    """``fn()`` under each of ``counts`` torch threads, in order; the thread setting is restored after."""
    before = torch.get_num_threads()
    try:
        results = []
        for n in counts:
            torch.set_num_threads(n)
            results.append(fn())
        return results
    finally:
        torch.set_num_threads(before)


def assert_bitwise_equal(a: Any, b: Any) -> None:
    """Tensors (or nested tuples/lists of them, None allowed) are bit-for-bit equal."""
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_bitwise_equal(x, y)
    elif a is None:
        assert b is None
    else:
        assert torch.equal(a, b)

"""The GPU script's verdict: pass/fail and the headline ratios, from the files its steps wrote.

``benchmarks/gpu_check.sh`` runs the GPU tests (JUnit XML), the kernels as built
(:mod:`dtifast.bench.device_kernels`) and the performance report (``dtifast bench --device cuda``), each
into one folder. This reads them back and prints a few lines, the last of which says everything at once::

    GPU CHECK PASS | tests 412 passed, 0 failed | kernels 57, 0 spilling | ops fused/eager x6.1 ...

Ratios are geometric means over the cases both sides ran (``x2.0``: twice as fast); the measured peak
memory of a training step is set against the fake-tensor estimate of the same config, batch and backend.
A step whose file is missing counts as failed (it did not finish).

Usage: ``python -m dtifast.bench.headline OUT [--tests-exit N] [--config clevr6] [--batch 128]``; exits 1
unless everything passed.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import xml.etree.ElementTree as ET
from typing import Any, Iterable, Optional, Sequence

__all__ = ["junit_counts", "geomean", "op_speedups", "train_speedup", "memory_against_estimate", "headline", "main"]

FUSED = "triton"  # the backend CUDA tensors get by default, the one the project is judged by
EAGER = "torch"
COMPILED = "torch.compile"


def junit_counts(junit: pathlib.Path) -> dict[str, int]:
    """``tests``, ``passed``, ``failed`` (failures + errors) and ``skipped`` of a pytest ``--junitxml`` file."""
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = count["failures"] + count["errors"]
    return {"tests": count["tests"], "passed": count["tests"] - failed - count["skipped"], "failed": failed,
            "skipped": count["skipped"]}


def geomean(values: Iterable[float]) -> Optional[float]:
    """Geometric mean of positive values; None for none."""
    values = [v for v in values if v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _ok(rows: Sequence[dict[str, Any]], section: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["section"] == section and r["status"] == "ok"]


def op_speedups(rows: Sequence[dict[str, Any]], baseline: str, provider: str = FUSED) -> list[float]:
    """``baseline`` time / ``provider`` time for each (op, config, batch, mode) both ran."""
    times: dict[tuple, dict[str, float]] = {}
    for r in _ok(rows, "op"):
        times.setdefault((r["op"], r["config"], r["batch"], r["mode"]), {})[r["provider"]] = r["median_s"]
    return [t[baseline] / t[provider] for t in times.values() if baseline in t and provider in t]


def _train_row(rows: Sequence[dict[str, Any]], config: str, batch: int, provider: str) -> Optional[dict[str, Any]]:
    found = [r for r in _ok(rows, "train") if (r["config"], r["batch"], r["provider"]) == (config, batch, provider)]
    return found[0] if found else None


def train_speedup(rows: Sequence[dict[str, Any]], config: str, batch: int, baseline: str = EAGER,
                  provider: str = FUSED) -> Optional[float]:
    """Images/s of ``provider`` over ``baseline`` for one config and batch (None unless both ran)."""
    fused, base = _train_row(rows, config, batch, provider), _train_row(rows, config, batch, baseline)
    return fused["images_per_s"] / base["images_per_s"] if fused and base else None


def memory_against_estimate(rows: Sequence[dict[str, Any]], config: str, batch: int,
                            provider: str = FUSED) -> Optional[dict[str, Any]]:
    """The measured peak of a training step and the estimate for the same config, batch and backend."""
    measured = _train_row(rows, config, batch, provider)
    estimates = [r for r in _ok(rows, "memory_estimate")
                 if (r["config"], r["batch"], r["provider"]) == (config, batch, provider)]
    if measured is None or "peak_bytes" not in measured or not estimates:
        return None
    estimate = estimates[0]
    return {"measured_bytes": measured["peak_bytes"], "estimated_bytes": estimate["peak_bytes"],
            "ratio": measured["peak_bytes"] / estimate["peak_bytes"],
            "same_epoch": measured.get("epoch") == estimate.get("epoch")}


def _ratio(value: Optional[float]) -> str:
    return "n/a" if value is None else f"x{value:.2f}"


def headline(out: pathlib.Path, config: str = "clevr6", batch: int = 128,
             tests_exit: Optional[int] = None) -> tuple[bool, list[str]]:
    """Pass/fail and the lines to print, the last one the summary of everything.

    Args:
        tests_exit: pytest's exit status, where the caller has it (124: stopped at the time limit, so the
            XML holds only the tests that ran; any non-zero status fails the check).
    """
    parts, lines, passed = [], [], True
    junit = out / "gpu_tests.xml"
    if junit.is_file():
        t = junit_counts(junit)
        passed &= t["failed"] == 0 and t["passed"] > 0 and tests_exit in (None, 0)
        stopped = {None: "", 0: "", 124: " (stopped at the time limit)"}.get(tests_exit, f" (pytest exit {tests_exit})")
        parts.append(f"tests {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped{stopped}")
    else:
        passed = False
        parts.append("tests: no result")
    kernels_json = out / "device_kernels.json"
    if kernels_json.is_file():
        s = json.loads(kernels_json.read_text())["meta"]["summary"]
        passed &= not s["errors"] and not s["spilling"]
        most = s["max_registers"]
        parts.append(f"kernels {s['variants']}, {len(s['spilling'])} spilling, max {most['registers'] if most else 0} "
                     f"regs, {s['errors']} failed")
    else:
        passed = False
        parts.append("kernels: no result")
    report = out / "cuda.json"
    if report.is_file():
        rows = json.loads(report.read_text())["rows"]
        errors = [r for r in rows if r["status"] == "error"]
        passed &= not errors
        eager, compiled = op_speedups(rows, EAGER), op_speedups(rows, COMPILED)
        lines.append(f"ops: {FUSED} over eager {_ratio(geomean(eager))} ({len(eager)} cases, min "
                     f"{_ratio(min(eager, default=None))}), over torch.compile {_ratio(geomean(compiled))} "
                     f"({len(compiled)} cases)")
        configs = sorted({r["config"] for r in _ok(rows, "train") if r["batch"] == batch})
        speedups = {c: train_speedup(rows, c, batch) for c in configs}
        lines.append(f"train B={batch}, images/s {FUSED} over eager: "
                     + (", ".join(f"{c} {_ratio(v)}" for c, v in speedups.items()) or "none ran"))
        memory = memory_against_estimate(rows, config, batch)
        if memory:
            lines.append(f"memory {config} B={batch} ({FUSED}): measured {memory['measured_bytes'] / 2**20:.0f} MiB, "
                         f"estimated {memory['estimated_bytes'] / 2**20:.0f} MiB (x{memory['ratio']:.2f}"
                         + ("" if memory["same_epoch"] else ", at different epochs") + ")")
        parts += [f"ops fused/eager {_ratio(geomean(eager))}, fused/compile {_ratio(geomean(compiled))}",
                  f"train {config} B={batch} {_ratio(speedups.get(config))} vs eager",
                  f"memory {_ratio(memory['ratio']) if memory else 'n/a'} of estimate",
                  f"{len(errors)} report errors"]
    else:
        passed = False
        parts.append("report: no result")
    lines.append(f"GPU CHECK {'PASS' if passed else 'FAIL'} | " + " | ".join(parts))
    return passed, lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dtifast.bench.headline", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=pathlib.Path, help="the GPU script's output folder")
    p.add_argument("--config", default="clevr6", help="config of the training and memory headline")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--tests-exit", type=int, default=None, help="pytest's exit status (124: timed out)")
    args = p.parse_args(argv)
    if not args.out.is_dir():
        p.error(f"{args.out} is not a folder")
    passed, lines = headline(args.out, args.config, args.batch, args.tests_exit)
    print("\n".join(lines))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""C++ CPU kernels (``cpu`` backend) vs the eager reference (``torch``) on the CPU: every native op at the
shapes of a config, a full training step, and the training step's peak-RSS growth per image.

Reported, never asserted (DESIGN.md targets: C++ ops and step >= 3x eager; RSS growth per image <= 1/8 of
eager). Op cases, training step and timers are :mod:`dtifast.bench`'s, so these numbers agree with
``dtifast bench``. Peak RSS is measured in a fresh subprocess per (config, provider, batch): the growth of
``VmHWM`` over the resident size before one step, at batch B and 2B; per image = difference / B. The steps
are timed a second time, each config in a fresh subprocess that first keeps freed memory in the process
(:func:`dtifast.allocator.retain_freed_memory`) as ``dtifast train`` does: glibc's default gives large freed
blocks back, and the next tensor of that size page-faults, which costs the eager step far more than the C++
one. Last, each provider's step is profiled (:mod:`dtifast.bench.step_profile`): its time split between the
encoder, dtifast's ops, the optimizer and the rest, which says what bounds a step's speed-up.

Usage::

    python benchmarks/bench_native_cpu.py [--configs tetro dsprites ...] [--batch 8] [--repeats 5]
        [--ops warp_position warp_tps ...] [--no-step] [--out benchmarks/results/native_cpu.md]

``--ops`` and ``--no-step`` measure a subset (e.g. while tuning one kernel); write such a partial run to
another ``--out`` than the results file.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
from typing import Any, Optional

import torch

from dtifast.allocator import retain_freed_memory
from dtifast.bench.machine import machine_info, peak_memory, time_interleaved
from dtifast.bench.ops import ALL_CONFIGS, OP_CASES, Skip, prepare, shapes_for
from dtifast.bench.step_profile import PARTS, profile_step
from dtifast.bench.train_step import TrainStep
from dtifast.ops._backend import implements

# The eager reference and the C++ kernels; the training step names its backend, so every op of the model
# runs on one of them (the C++ one is also what a CPU run picks when no backend is named).
PROVIDERS = ("torch", "cpu")
CPU = torch.device("cpu")
NATIVE_OPS = [op for op in OP_CASES if implements("cpu", op, CPU)]
DEFAULT_CONFIGS = list(ALL_CONFIGS)


def _speedup(base: Optional[float], new: Optional[float]) -> str:
    if not (base and new):
        return "–"
    ratio = base / new
    return f"{ratio:.1f}×" if ratio >= 0.1 else f"{ratio:.2g}×"


def _ms(t: Optional[float]) -> str:
    """Milliseconds to three significant digits (at least one decimal), fixed-point."""
    if t is None:
        return "–"
    ms = t * 1e3
    decimals = max(1, 2 - math.floor(math.log10(ms))) if ms > 0 else 1
    return f"{ms:.{decimals}f}"


# Each op is timed for at least this long (many calls of a fast op): the eager column of a single op varied by
# up to 1.5x between runs of three calls on the shared machine, and the median of many calls does not.
OP_MIN_TIME_S = 0.3


def bench_ops(config: str, batch: int, repeats: int, ops: list[str]) -> list[str]:
    """Markdown rows ``| config | op | mode | torch ms | cpu ms | speedup |`` for the native ops in ``ops``."""
    shapes = shapes_for(config, batch)
    rows = []
    for op in ops:
        case = OP_CASES[op]
        if not case.applies(shapes):
            continue
        for mode in case.modes:
            runners = {}
            for provider in PROVIDERS:
                try:
                    runners[provider], _ = prepare(case, shapes, provider, CPU, mode)
                except Skip:
                    pass
            timed = time_interleaved(runners, CPU, warmup=1, repeats=repeats, min_time_s=OP_MIN_TIME_S) \
                if runners else {}
            times = {provider: timed[provider].median if provider in timed else None for provider in PROVIDERS}
            rows.append(f"| {config} | {op} | {mode} | {_ms(times['torch'])} | {_ms(times['cpu'])} | "
                        f"{_speedup(times['torch'], times['cpu'])} |")
            print(rows[-1], flush=True)
    return rows


def bench_step(config: str, batch: int, repeats: int) -> dict[str, float]:
    """Median seconds of one training step per provider, and of its encoder's forward and backward alone
    (``"encoder"``: the same torch code on every provider, so the step cannot beat eager by more than
    eager / encoder). The three are timed in turn, one call each per round."""
    steps = {provider: TrainStep(config, provider, batch, CPU) for provider in PROVIDERS}
    step = steps[PROVIDERS[-1]]
    calls = {**steps, "encoder": lambda: step.model.encoder(step.x).sum().backward()}
    return {name: timing.median for name, timing in time_interleaved(calls, CPU, warmup=1, repeats=repeats).items()}


def _run_probe(flag: str, *values: object) -> dict[str, Any]:
    """This script run as ``flag values...`` in a fresh interpreter; the JSON object of its last line."""
    cmd = [sys.executable, __file__, flag, *map(str, values)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def retained_step(config: str, batch: int, repeats: int) -> dict[str, Any]:
    """:func:`bench_step` in a fresh interpreter that keeps freed memory in the process, as ``dtifast train``
    does; ``"retained"``: whether the C library took the setting (False off glibc: then the default)."""
    return _run_probe("--retained-step-probe", config, batch, repeats)


def _retained_step_probe(config: str, batch: int, repeats: int) -> None:
    retained = retain_freed_memory()
    print(json.dumps({"retained": retained, **bench_step(config, batch, repeats)}))


def rss_growth(config: str, provider: str, batch: int) -> Optional[int]:
    """Peak-RSS growth (bytes) of one training step, measured in a fresh interpreter."""
    return _run_probe("--rss-probe", config, provider, batch)["growth_bytes"]


def _rss_probe(config: str, provider: str, batch: int) -> None:
    step = TrainStep(config, provider, batch, CPU)
    step()  # first step: lazy allocations (optimizer state, caches) are not the per-step cost
    peak = peak_memory(step, CPU)
    print(json.dumps({"growth_bytes": None if peak is None else peak["growth_bytes"]}))


def _step_time_cells(config: str, t: dict[str, Any]) -> str:
    """``| config | eager ms | C++ ms | speedup | encoder ms | bound |`` of :func:`bench_step`'s times."""
    return (f"| {config} | {_ms(t['torch'])} | {_ms(t['cpu'])} | {_speedup(t['torch'], t['cpu'])} | "
            f"{_ms(t['encoder'])} | {_speedup(t['torch'], t['encoder'])} |")


def _step_rows(configs: list[str], batch: int, repeats: int) -> list[str]:
    """The training-step section: time and peak-RSS growth per image of both providers per config."""
    lines = ["", f"## Training step (forward, backward, Adam) at batch {batch}", "",
             "`encoder ms`: the encoder's forward and backward alone, the same torch code in both steps; "
             "`bound`: eager ms / encoder ms, the speed-up of a step whose every other part took no time.", "",
             "| config | eager ms | C++ ms | speedup | encoder ms | bound | eager RSS growth / image | "
             "C++ RSS growth / image | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for config in configs:
        t = bench_step(config, batch, repeats)
        per_image = {}
        for provider in PROVIDERS:
            small, large = rss_growth(config, provider, batch), rss_growth(config, provider, 2 * batch)
            per_image[provider] = None if small is None or large is None else (large - small) / batch
        mib = {p: "–" if v is None else f"{v / 2**20:.2f} MiB" for p, v in per_image.items()}
        ratio = (f"1/{per_image['torch'] / per_image['cpu']:.1f}"
                 if per_image["torch"] and per_image["cpu"] and per_image["cpu"] > 0 else "–")
        lines.append(f"{_step_time_cells(config, t)} {mib['torch']} | {mib['cpu']} | {ratio} |")
        print(lines[-1], flush=True)
    return lines


def _retained_step_rows(configs: list[str], batch: int, repeats: int) -> list[str]:
    """The training-step section again, each config timed in a process that keeps freed memory."""
    lines = ["", f"## Training step at batch {batch}, freed memory kept in the process (as `dtifast train`)", "",
             "Each config in a fresh process after `dtifast.allocator.retain_freed_memory()` (glibc's mmap and "
             "trim thresholds at 1 GiB), which `dtifast train`, `dtifast sweep-k` and `make demo` call at start "
             "whatever the backend. Columns as above.", "",
             "| config | eager ms | C++ ms | speedup | encoder ms | bound | setting taken |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for config in configs:
        t = retained_step(config, batch, repeats)
        lines.append(f"{_step_time_cells(config, t)} {'yes' if t['retained'] else 'no (not glibc)'} |")
        print(lines[-1], flush=True)
    return lines


PROFILED_STEPS = 3


def _part_cell(seconds: float, total: float) -> str:
    return f"{_ms(seconds)} ({100 * seconds / total:.0f} %)"


def _profile_rows(configs: list[str], batch: int) -> list[str]:
    """The training step's time per part (:mod:`dtifast.bench.step_profile`), both providers per config."""
    names = {"torch": "eager", "cpu": "C++"}
    lines = ["", f"## Where the training step's time goes, batch {batch} (torch profiler)", "",
             f"The mean of {PROFILED_STEPS} steps under `torch.profiler` (`dtifast.bench.step_profile`): each "
             "recorded op's self CPU time goes to the part of the step that ran it. `encoder`: the encoder's "
             "forward and backward, the same torch code in both steps; `dtifast ops`: the public ops the model "
             "calls (the eager reference's ATen ops, or the C++ kernels); `optimizer`: zeroing the gradients and "
             "Adam; `other`: the rest of the step's wall time (transformation heads, sprite bank, autograd "
             "bookkeeping, Python between ops, and most of the profiler's own cost). `ops speed-up`: eager "
             "dtifast ops / C++ dtifast ops; `bound`: eager step / (C++ step - C++ dtifast ops), the speed-up of "
             "a C++ step whose dtifast ops took no time. The profiler slows every step a little; the shares are "
             "what this table is for, the step times are those above.", "",
             "| config | step | step ms | encoder | dtifast ops | optimizer | other | ops speed-up | bound |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for config in configs:
        parts = {provider: profile_step(TrainStep(config, provider, batch, CPU), PROFILED_STEPS)
                 for provider in PROVIDERS}
        for provider in PROVIDERS:
            p = parts[provider]
            cells = " | ".join(_part_cell(p[part], p["step"]) for part in PARTS)
            speedup = bound = ""
            if provider == "cpu":
                speedup = _speedup(parts["torch"]["ops"], p["ops"])
                bound = _speedup(parts["torch"]["step"], p["step"] - p["ops"])
            lines.append(f"| {config} | {names[provider]} | {_ms(p['step'])} | {cells} | {speedup} | {bound} |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ops", nargs="+", default=NATIVE_OPS, choices=NATIVE_OPS, metavar="OP",
                        help="native ops to measure (default: all)")
    parser.add_argument("--no-step", action="store_true",
                        help="skip the training steps (both allocator settings), their peak RSS and profile")
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path(__file__).resolve().parent / "results" / "native_cpu.md")
    parser.add_argument("--rss-probe", nargs=3, metavar=("CONFIG", "PROVIDER", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--retained-step-probe", nargs=3, metavar=("CONFIG", "BATCH", "REPEATS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_probe:
        _rss_probe(args.rss_probe[0], args.rss_probe[1], int(args.rss_probe[2]))
        return
    if args.retained_step_probe:
        config, batch, repeats = args.retained_step_probe
        _retained_step_probe(config, int(batch), int(repeats))
        return

    info = machine_info(CPU)
    lines = ["# C++ CPU kernels vs eager PyTorch", "",
             f"Machine: {info.get('cpu', '?')}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"commit {info.get('commit', '?')}, load average at start {info.get('load_average')} (the machine is "
             f"shared: a high load inflates every figure). Float32, after one warm-up: ops the median of at least "
             f"{args.repeats} calls and {OP_MIN_TIME_S} s of calls, steps the median of {args.repeats}; eager and "
             "C++ (and a step's encoder) are timed in turn, call by call, so that load from other jobs falls on "
             "both. `fwd+bwd` is forward and backward of every differentiable input.", "",
             f"## Ops at batch {args.batch}", "",
             "| config | op | mode | eager ms | C++ ms | speedup |", "|---|---|---|---:|---:|---:|"]
    for config in args.configs:
        lines += bench_ops(config, args.batch, args.repeats, args.ops)
    if not args.no_step:
        lines += _step_rows(args.configs, args.batch, args.repeats)
        lines += _retained_step_rows(args.configs, args.batch, args.repeats)
        lines += _profile_rows(args.configs, args.batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

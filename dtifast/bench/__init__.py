"""``dtifast bench``: the performance report (ops, training step, peak memory, largest batch, and the
memory estimate of a training step on fake CUDA tensors).

Usage::

    dtifast bench [--device cuda|cpu] [--out DIR] [--sections ops train max-batch memory-estimate] [--time-budget S]
    dtifast bench compile [--subset ci|full] [--archs 75,80,90] [--out DIR] …   (see dtifast.bench.compile)

writes ``DIR/<dev>.json`` (one row per measurement, each with the machine), ``DIR/<dev>.md`` (tables)
and ``DIR/<dev>_ops.png`` / ``DIR/<dev>_train.png``. Every table has the baselines: ``torch`` (the
eager reference ops, i.e. upstream's semantics and memory behaviour) and ``torch.compile`` of it.
Backends are discovered (:data:`dtifast.ops.BACKENDS` through :func:`dtifast.ops.resolve`), so new
Triton / C++ / CUDA ops appear without changes here. See ``docs/benchmarks.md``.

Defaults follow the device: on CUDA the upstream batch sizes 32, 128 and 512 and the 16 GiB budget of
the GPU upstream was trained on; on the CPU batches small enough for a 2-core machine (the CPU figures
say how the reference and C++ paths compare, not what a GPU does).
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shlex
import sys
import time
from typing import Any, Optional, Sequence

import torch

from .ops import ALL_CONFIGS

__all__ = ["add_parser", "main", "run_report", "DEVICE_DEFAULTS"]

SECTIONS = ("ops", "train", "max-batch", "memory-estimate")
# The memory estimate's backends: the one CUDA tensors get by default, and the eager reference (upstream's memory).
MEMORY_ESTIMATE_BACKENDS = ("triton", "torch")

# Per device: op shape sets and batch; training configs and batches (listed in the order they run:
# the headline batch first, so that a time budget cuts the others); the cases that get the
# torch.compile baseline (compiling takes 10 s per op and minutes per model, so not every shape
# set); max-batch configs and (CPU) the two batches the memory line goes through.
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cuda": {
        "op_configs": ["clevr6", "tetro", "dsprites", "gtsrb8"], "op_batch": 128,
        "train_configs": list(ALL_CONFIGS), "train_batches": [128, 32, 512],
        "compile_op_configs": ["clevr6"], "compile_train": [("clevr6", 128), ("tetro", 128)],
        "max_batch_configs": ["clevr6", "tetro", "dsprites"],
        "memory_configs": list(ALL_CONFIGS), "memory_batch": 128,
        "repeats": 5, "warmup": 2, "min_time_s": {"ops": 0.2, "train": 1.0}, "threads": None,
    },
    "cpu": {
        "op_configs": ["tetro", "gtsrb8"], "op_batch": 8,
        # A CLEVR6 / Multi-dSprites / Instagram step at batch 8 takes 6-15 s on 2 cores: smaller there.
        "train_configs": list(ALL_CONFIGS),
        "train_batches": {"tetro": [8], "gtsrb8": [8], "svhn": [8], "horse": [8], "dsprites": [4],
                          "instagram": [2], "clevr6": [2]},
        "compile_op_configs": ["tetro"], "compile_train": [("tetro", 8)],
        "max_batch_configs": ["tetro", "clevr6"], "cpu_batches": [1, 4],
        # The estimate traces fake CUDA tensors: the same cases on every machine.
        "memory_configs": list(ALL_CONFIGS), "memory_batch": 128,
        # More samples on the shared 2-core box: medians of many calls shrug off preemption.
        "repeats": 3, "warmup": 1, "min_time_s": {"ops": 0.5, "train": 3.0},
        # One thread: on a CPU shared with other jobs, OpenMP barriers across threads that the OS
        # deschedules make steps 5-300x slower and the figures meaningless (measured on the 2-core
        # CI box under load: a GTSRB-8 step at batch 8 takes 0.08-0.15 s on 1 thread, 0.7-13 s on 2).
        "threads": 1,
    },
}
# Shares of --time-budget at which each section must have finished (time left over carries on).
SECTION_DEADLINES = {"ops": 0.35, "train": 0.8, "max-batch": 1.0, "memory-estimate": 1.0}


def _batches_per_config(configs: Sequence[str], spec: Any) -> dict[str, list[int]]:
    if isinstance(spec, dict):
        return {c: list(spec.get(c, [min(min(v) for v in spec.values())])) for c in configs}
    return {c: list(spec) for c in configs}


def run_report(device: torch.device, out: pathlib.Path, sections: Sequence[str] = SECTIONS, *,
               op_configs: Optional[Sequence[str]] = None, op_batch: Optional[int] = None,
               train_configs: Optional[Sequence[str]] = None, train_batches: Optional[Sequence[int]] = None,
               compile_models: bool = True, compile_ops: bool = True,
               max_batch_configs: Optional[Sequence[str]] = None, memory_budget_gib: float = 16.0,
               memory_configs: Optional[Sequence[str]] = None, memory_batch: Optional[int] = None,
               repeats: Optional[int] = None, time_budget_s: Optional[float] = None, value_checks: bool = False,
               ops_filter: Optional[Sequence[str]] = None, threads: Optional[int] = None, command: str = "",
               quiet: bool = False) -> dict[str, Any]:
    """Run the report's sections on ``device`` and write its files into ``out``.

    Args:
        device: ``cpu`` or a CUDA device.
        out: output folder (created).
        sections: any of ``ops``, ``train``, ``max-batch``, ``memory-estimate``.
        op_configs, op_batch: shape sets for the ops (default: :data:`DEVICE_DEFAULTS`).
        train_configs, train_batches: training-step cases (default: :data:`DEVICE_DEFAULTS`).
        compile_models, compile_ops: include the ``torch.compile`` baseline (for the default cases,
            only on the subset :data:`DEVICE_DEFAULTS` names; for cases given here, on all of them).
        max_batch_configs: configs for the largest-batch search.
        memory_budget_gib: the budget of that search (and of the memory estimate's).
        memory_configs, memory_batch: configs and batch of the memory estimate (default:
            :data:`DEVICE_DEFAULTS`), traced on fake CUDA tensors for :data:`MEMORY_ESTIMATE_BACKENDS`.
        repeats: least number of timed repeats per case (more while a case's total time is under the
            device's ``min_time_s``).
        time_budget_s: wall-clock allowance, shared among sections (:data:`SECTION_DEADLINES`); cases
            past a section's deadline are reported as skipped.
        value_checks: turn the ops' value checks on (off by default, as in training: they read every
            input, a validation pass that a training loop makes once, not part of an op's cost).
        ops_filter: only these ops.
        threads: ``torch.set_num_threads`` for the run (default: the device's entry in
            :data:`DEVICE_DEFAULTS`; None there leaves torch's default).
        command: the command line, recorded in the report.
        quiet: no progress lines on stderr.

    Returns:
        dict with ``rows``, ``files`` and ``errors`` (rows whose status is ``error``).
    """
    # Imported here: `dtifast --help` should not load the model and trainer.
    from .machine import bench_settings

    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"sections must be among {SECTIONS}, got {unknown}")
    if device.type not in DEVICE_DEFAULTS:
        raise ValueError(f"device must be cpu or cuda, got {device}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch sees no CUDA device")
    defaults = DEVICE_DEFAULTS[device.type]
    repeats = repeats or defaults["repeats"]
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if memory_budget_gib <= 0:
        raise ValueError(f"memory_budget_gib must be > 0, got {memory_budget_gib}")
    if memory_batch is not None and memory_batch < 1:
        raise ValueError(f"memory_batch must be >= 1, got {memory_batch}")
    threads = threads if threads is not None else defaults["threads"]
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with bench_settings(threads, value_checks):
        return _run_sections(device, out, sections, defaults, op_configs=op_configs, op_batch=op_batch,
                             train_configs=train_configs, train_batches=train_batches,
                             compile_models=compile_models, compile_ops=compile_ops,
                             max_batch_configs=max_batch_configs, memory_budget_gib=memory_budget_gib,
                             memory_configs=memory_configs, memory_batch=memory_batch, repeats=repeats,
                             time_budget_s=time_budget_s, ops_filter=ops_filter,
                             command=command, quiet=quiet)


def _run_sections(device: torch.device, out: pathlib.Path, sections: Sequence[str], defaults: dict[str, Any], *,
                  op_configs: Optional[Sequence[str]], op_batch: Optional[int],
                  train_configs: Optional[Sequence[str]], train_batches: Optional[Sequence[int]],
                  compile_models: bool, compile_ops: bool, max_batch_configs: Optional[Sequence[str]],
                  memory_budget_gib: float, memory_configs: Optional[Sequence[str]], memory_batch: Optional[int],
                  repeats: int, time_budget_s: Optional[float],
                  ops_filter: Optional[Sequence[str]], command: str, quiet: bool) -> dict[str, Any]:
    from .machine import machine_info
    from .ops import COMPILE, providers as op_providers
    from .report import write_json, write_markdown, write_plots
    from .run import Budget, run_max_batch, run_memory_estimate, run_ops, run_train
    from .train_step import default_mix, train_providers

    machine = machine_info(device)
    budget = Budget(time_budget_s)
    log = (lambda msg: None) if quiet else (lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True))
    start = time.perf_counter()
    op_prov = op_providers(device, with_compile=compile_ops)
    tr_prov = train_providers(device, with_compile=compile_models)
    explicit = op_configs is not None or train_configs is not None
    rows: list[dict[str, Any]] = []
    if "ops" in sections:
        budget.until(SECTION_DEADLINES["ops"])
        rows += run_ops(op_configs or defaults["op_configs"], op_batch or defaults["op_batch"], op_prov, device,
                        machine, budget, repeats, defaults["warmup"], log, ops_filter,
                        min_time_s=defaults["min_time_s"]["ops"],
                        compile_configs=None if explicit else defaults["compile_op_configs"])
    if "train" in sections:
        budget.until(SECTION_DEADLINES["train"])
        configs = train_configs or defaults["train_configs"]
        batches = _batches_per_config(configs, train_batches or defaults["train_batches"])
        rows += run_train(configs, batches, tr_prov, device, machine, budget, repeats, log,
                          compile_cases=None if explicit else defaults["compile_train"],
                          min_time_s=defaults["min_time_s"]["train"])
    if "max-batch" in sections:
        budget.until(SECTION_DEADLINES["max-batch"])
        eager = ["torch"] + [p for p in tr_prov if p not in ("torch", COMPILE)]
        rows += run_max_batch(max_batch_configs or defaults["max_batch_configs"], eager, device, machine, budget,
                              int(memory_budget_gib * 2**30), log, cpu_batches=defaults.get("cpu_batches", (1, 4)))
    if "memory-estimate" in sections:
        budget.until(SECTION_DEADLINES["memory-estimate"])
        rows += run_memory_estimate(memory_configs or defaults["memory_configs"],
                                    memory_batch or defaults["memory_batch"], MEMORY_ESTIMATE_BACKENDS, machine,
                                    budget, int(memory_budget_gib * 2**30), log)
    meta = {"machine": machine, "command": command, "repeats": repeats, "min_time_s": defaults["min_time_s"],
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": time.perf_counter() - start, "op_providers": op_prov, "train_providers": tr_prov,
            "default_backends": default_mix(device), "sections": list(sections),
            "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    prefix = device.type
    files = [str(out / f"{prefix}.json"), str(out / f"{prefix}.md")]
    write_json(out / f"{prefix}.json", rows, meta)
    write_markdown(out / f"{prefix}.md", rows, meta)
    files += write_plots(out, prefix, rows, [*op_prov, *(p for p in tr_prov if p not in op_prov)])
    return {"rows": rows, "files": files, "errors": [r for r in rows if r["status"] == "error"]}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``dtifast bench`` subcommand."""
    p = subparsers.add_parser(
        "bench", help="benchmark ops and training steps (JSON, Markdown, PNG)",
        description="Time every op and backend at upstream's shapes, training steps per config and backend "
                    "(images/s, peak memory) and the largest batch under a memory budget; the eager reference "
                    "(`torch`) and torch.compile of it are the baselines. See docs/benchmarks.md.")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"), help="output folder")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--op-configs", nargs="+", default=None, metavar="CONFIG", help="shape sets for the op timings")
    p.add_argument("--op-batch", type=int, default=None, help="batch of the op shape sets")
    p.add_argument("--ops", nargs="+", default=None, metavar="OP", help="only these ops")
    p.add_argument("--configs", nargs="+", default=None, metavar="CONFIG", help="training-step configs")
    p.add_argument("--batches", nargs="+", type=int, default=None, help="training-step batch sizes")
    p.add_argument("--max-batch-configs", nargs="+", default=None, metavar="CONFIG")
    p.add_argument("--memory-budget-gib", type=float, default=16.0,
                   help="budget of the largest-batch search and of the memory estimate's")
    p.add_argument("--memory-configs", nargs="+", default=None, metavar="CONFIG",
                   help="configs of the memory estimate (fake CUDA tensors; default: all seven)")
    p.add_argument("--memory-batch", type=int, default=None, help="batch of the memory estimate (default 128)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per case (median reported)")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="stop starting new cases after S seconds (they are reported as skipped)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile baseline")
    p.add_argument("--value-checks", action="store_true",
                   help="turn the ops' value checks (NaN/inf inputs, index range) on, as a debugging run would")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 with --device cpu, see docs/benchmarks.md; torch's on CUDA)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_bench_main)
    _add_compile_parser(p)
    return p


def _add_compile_parser(bench: argparse.ArgumentParser) -> None:
    """``dtifast bench compile``: the Triton compile check (:mod:`dtifast.bench.compile`)."""
    from .compile import add_arguments

    sub = bench.add_subparsers(dest="bench_command", metavar="{compile}",
                               description="without a subcommand: the performance report")
    p = sub.add_parser("compile", help="compile every Triton launch for sm_75/80/90 without a GPU "
                                       "(registers, spills, shared memory, occupancy, compile time)",
                       description="Compile every Triton kernel launch of the ops for real NVIDIA targets without "
                                   "a GPU and report registers, spills, shared memory, occupancy and compile time "
                                   "per kernel variant (compile.md, compile.json). See docs/benchmarks.md.")
    add_arguments(p)
    p.set_defaults(func=_compile_main)


def _compile_main(args: argparse.Namespace) -> int:
    # A fresh process: the check replaces Triton's driver, and this one may have imported the kernels.
    from .compile import command_argv, fresh_process

    try:
        argv = command_argv(args)
    except ValueError as err:
        print(f"dtifast bench compile: {err}", file=sys.stderr)
        return 2
    return fresh_process(argv).returncode


def _bench_main(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # The command as typed, for the report; when called from Python there is no such line.
    argv = sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else None
    command = "dtifast bench" + "".join(" " + shlex.quote(a) for a in argv) if argv is not None \
        else "dtifast.bench.run_report (from Python)"
    result = run_report(device, args.out, args.sections, op_configs=args.op_configs, op_batch=args.op_batch,
                        train_configs=args.configs, train_batches=args.batches,
                        compile_models=not args.no_compile, compile_ops=not args.no_compile,
                        max_batch_configs=args.max_batch_configs, memory_budget_gib=args.memory_budget_gib,
                        memory_configs=args.memory_configs, memory_batch=args.memory_batch, repeats=args.repeats,
                        time_budget_s=args.time_budget, value_checks=args.value_checks,
                        ops_filter=args.ops, threads=args.threads, command=command, quiet=args.quiet)
    for f in result["files"]:
        print(f)
    if result["errors"]:
        print(f"dtifast bench: {len(result['errors'])} case(s) failed; see 'reason' in the JSON", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dtifast.bench …``: the same as ``dtifast bench …``."""
    parser = argparse.ArgumentParser(prog="dtifast")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv if argv[:1] == ["bench"] else ["bench", *argv])
    return args.func(args)

"""Registers as built: every Triton kernel variant that the ops launch on a real GPU, read from the driver.

The compile check (:mod:`dtifast.bench.compile`) predicts registers and spills on a CPU, with ptxas and
nothing launched. This runs the same jobs (:func:`dtifast.bench.compile.plan`: each op forward and
backward at upstream's shapes, deterministic mode, the partial batch) on the GPU and reads what the CUDA
driver reports for each kernel Triton loaded: ``CompiledKernel.n_regs`` (``CU_FUNC_ATTRIBUTE_NUM_REGS``)
and ``n_spills`` (``CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES`` / 4: local memory per thread, i.e. spills),
with the occupancy they allow. Given the CPU report's ``compile.json``, each kernel's largest register
count as built is set beside the prediction for the same arch (Triton versions may differ).

Usage::

    python -m dtifast.bench.device_kernels --out DIR [--configs clevr6 tetro] [--dtypes float32,bfloat16]
        [--subset ci|full] [--batch 128] [--partial-batch 37] [--predicted benchmarks/results/compile.json]

Writes ``device_kernels.md`` and ``device_kernels.json``; exits with 1 when a job fails or a kernel spills.
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Optional, Sequence

import torch

from .compile import (ARCH_LIMITS, DTYPES, OP_CASES, WARP_SIZE, CheckOptions, Job, deterministic_algorithms,
                      jit_functions, occupancy, plan, run_op, shapes_for)

__all__ = ["BuiltKernel", "loaded_kernels", "measure", "predicted_registers", "summary", "write_markdown", "main"]

log = logging.getLogger(__name__)


@dataclass
class BuiltKernel:
    """One compiled variant as the driver loaded it, and the job that first launched it."""
    kernel: str
    config: str
    batch: int
    dtype: str
    op: str
    deterministic: bool
    num_warps: int
    registers: int
    local_bytes: int
    smem_bytes: int
    occupancy: Optional[float]
    limiter: str


def loaded_kernels() -> Iterator[tuple[str, Any]]:
    """``(kernel name, CompiledKernel)`` for every variant in the kernel caches of ``dtifast.kernels``."""
    for fn in jit_functions():
        for cache in fn.device_caches.values():
            for compiled in cache[0].values():  # (kernel_cache, key_cache, target, backend, binder) in 3.x
                yield fn.__name__, compiled


def device_arch(device: torch.device) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def measure(jobs: Sequence[Job], device: torch.device, progress: bool = True
            ) -> tuple[list[BuiltKernel], list[dict[str, Any]], list[str]]:
    """Run every job on ``device`` and read each newly loaded kernel's figures from the driver.

    Returns:
        the kernels (first job that loaded each), one ``{job fields, "seconds"}`` per job (its first
        call's wall time, compiles included) and one message per failed job.
    """
    from tqdm import tqdm

    from dtifast.ops._checks import value_checks

    arch = device_arch(device)
    seen = {id(k) for _, k in loaded_kernels()}
    kernels, timings, errors = [], [], []
    with value_checks(False):
        for job in tqdm(jobs, desc="kernels on the device", unit="op", disable=not progress):
            start = time.perf_counter()
            try:
                with deterministic_algorithms(job.deterministic):
                    run_op(OP_CASES[job.op], shapes_for(job.config, job.batch), DTYPES[job.dtype], device)
                torch.cuda.synchronize(device)
            except Exception as err:  # noqa: BLE001 - report every failing job, not just the first
                errors.append(f"{job.op} ({job.dtype}, config {job.config} B={job.batch}): {type(err).__name__}: {err}")
                log.error("%s", errors[-1])
                continue
            timings.append({**asdict(job), "seconds": time.perf_counter() - start})
            for name, k in loaded_kernels():
                if id(k) in seen:
                    continue
                seen.add(id(k))
                k._init_handles()  # loaded by its launch already; a no-op then
                threads, smem = k.metadata.num_warps * WARP_SIZE, k.metadata.shared
                occ = occupancy(arch, k.n_regs, threads, smem) if arch in ARCH_LIMITS else \
                    {"occupancy": None, "limiter": f"sm_{arch} not in the occupancy table"}
                kernels.append(BuiltKernel(name, job.config, job.batch, job.dtype, job.op, job.deterministic,
                                           k.metadata.num_warps, k.n_regs, 4 * k.n_spills, smem, occ["occupancy"],
                                           occ["limiter"]))
    return kernels, timings, errors


def predicted_registers(path: pathlib.Path, arch: int) -> dict[str, int]:
    """Largest register count per kernel that the CPU compile check (its ``compile.json``) found for ``arch``."""
    data = json.loads(path.read_text())
    found: dict[str, int] = {}
    for v in data["variants"]:
        result = v["results"].get(str(arch))
        if result:
            found[v["kernel"]] = max(found.get(v["kernel"], 0), result["registers"])
    return found


def summary(kernels: Sequence[BuiltKernel], timings: Sequence[dict[str, Any]], errors: Sequence[str],
            batch: int) -> dict[str, Any]:
    """Headline figures: variants, spilling ones, most registers, slowest first call, partial-batch variants."""
    most = max(kernels, key=lambda k: k.registers, default=None)
    slowest = max(timings, key=lambda t: t["seconds"], default=None)
    return {"variants": len(kernels), "errors": len(errors),
            "spilling": sorted({k.kernel for k in kernels if k.local_bytes}),
            "max_registers": None if most is None else {"kernel": most.kernel, "registers": most.registers,
                                                        "dtype": most.dtype, "config": most.config},
            "slowest_first_call": slowest,
            "partial_batch_variants": sum(k.batch != batch for k in kernels)}


def _comparison_rows(kernels: Sequence[BuiltKernel], predicted: dict[str, int]) -> list[str]:
    built: dict[str, int] = {}
    for k in kernels:
        built[k.kernel] = max(built.get(k.kernel, 0), k.registers)
    lines = ["| kernel | max regs as built | max regs predicted (CPU check) |", "|---|---|---|"]
    lines += [f"| `{name}` | {regs} | {predicted.get(name, 'not in the CPU report')} |"
              for name, regs in sorted(built.items())]
    return lines


def write_markdown(path: pathlib.Path, kernels: Sequence[BuiltKernel], meta: dict[str, Any],
                   predicted: Optional[dict[str, int]]) -> None:
    """The report: summary, the comparison with the CPU prediction, then every variant."""
    s = meta["summary"]
    most = s["max_registers"]
    lines = ["# Triton kernels as built on the device", "",
             f"{meta['device']} (sm_{meta['arch']}); Triton {meta['triton']}, torch {meta['torch']}; "
             f"{meta['seconds']:.0f} s.", "",
             f"- variants: {s['variants']}; failed jobs: {s['errors']}",
             f"- kernels with local memory (spills): {', '.join(s['spilling']) or 'none'}",
             f"- most registers: {most['registers']} (`{most['kernel']}`, {most['dtype']}, {most['config']})"
             if most else "- most registers: no kernel loaded",
             f"- variants first loaded by the partial batch: {s['partial_batch_variants']}", ""]
    if meta["errors"]:
        lines += ["## Failed jobs", ""] + [f"```\n{e}\n```\n" for e in meta["errors"]]
    if predicted is not None:
        lines += ["## Against the CPU compile check", ""] + _comparison_rows(kernels, predicted) + [""]
    lines += ["## Every variant", "",
              "| kernel | dtype | config B | op | det. | warps | regs | local B/thread | smem B | occupancy |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(kernels, key=lambda k: (k.kernel, k.dtype, k.config, k.batch)):
        occ = "n/a" if k.occupancy is None else f"{k.occupancy:.0%} ({k.limiter})"
        local = f"**{k.local_bytes}**" if k.local_bytes else "0"
        lines.append(f"| `{k.kernel}` | {k.dtype} | {k.config} {k.batch} | {k.op} | {int(k.deterministic)} "
                     f"| {k.num_warps} | {k.registers} | {local} | {k.smem_bytes} | {occ} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dtifast.bench.device_kernels …``; returns 1 when a job failed or a kernel spills."""
    p = argparse.ArgumentParser(prog="python -m dtifast.bench.device_kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
    p.add_argument("--configs", nargs="+", default=["clevr6", "tetro"], metavar="CONFIG")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default float32,bfloat16)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--partial-batch", type=int, default=37, help="0: no partial-batch pass")
    p.add_argument("--subset", choices=["ci", "full"], default="full")
    p.add_argument("--predicted", type=pathlib.Path, default=pathlib.Path("benchmarks/results/compile.json"),
                   help="the CPU compile check's JSON to compare with (skipped when absent)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device (the CPU-only prediction is `dtifast bench compile`)")
    device = torch.device("cuda")
    arch = device_arch(device)
    opts = CheckOptions(archs=(90,), dtypes=tuple(d for d in args.dtypes.split(",") if d),
                        configs=tuple(args.configs), batch=args.batch, subset=args.subset,
                        partial_batch=args.partial_batch)
    try:
        opts.validate()
    except ValueError as err:
        p.error(str(err))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="[device kernels] %(message)s")
    import triton

    start = time.perf_counter()
    kernels, timings, errors = measure(plan(opts), device, progress=not args.quiet)
    s = summary(kernels, timings, errors, args.batch)
    meta = {"device": torch.cuda.get_device_name(device), "arch": arch, "triton": triton.__version__,
            "torch": torch.__version__, "options": asdict(opts), "seconds": time.perf_counter() - start,
            "summary": s, "errors": errors}
    predicted = predicted_registers(args.predicted, arch) if args.predicted.is_file() else None
    args.out.mkdir(parents=True, exist_ok=True)
    write_markdown(args.out / "device_kernels.md", kernels, meta, predicted)
    (args.out / "device_kernels.json").write_text(json.dumps(
        {"meta": meta, "kernels": [asdict(k) for k in kernels], "timings": timings, "predicted": predicted},
        indent=1, default=str) + "\n")
    most = s["max_registers"]
    print(f"device kernels: {s['variants']} variants, {len(s['spilling'])} spilling, {s['errors']} failed jobs, "
          f"max {most['registers'] if most else 0} registers, {s['partial_batch_variants']} new at the partial batch")
    return 1 if errors or s["spilling"] else 0


if __name__ == "__main__":
    sys.exit(main())

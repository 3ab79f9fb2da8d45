"""Compile check: every Triton kernel launch of dtifast, compiled for real NVIDIA targets without a GPU.

What it proves: each ``kernel[grid](...)`` call that the public ops make at upstream's shapes compiles
with the real Triton compiler (and ptxas) for ``sm_75``, ``sm_80`` and ``sm_90``, and what each
compiled variant costs there: registers, spill bytes, shared memory, theoretical occupancy and
compile time. It runs on a CPU-only machine; nothing is launched.

How:

1. The process runs without ``TRITON_INTERPRET`` and with ``DTIFAST_TRITON_COMPILE_ONLY=1``
   (:func:`prepare_process`), so that ``backend="triton"`` accepts CPU tensors while the launchers in
   ``dtifast.kernels`` take their GPU branch (GPU block sizes, real ``triton.jit`` functions).
2. :class:`StandInDriver` replaces Triton's driver: device ``i`` is a CUDA target of the ``i``-th
   requested arch, with stream 0. Triton keeps one kernel cache per device, so each arch has its own.
3. ``JITFunction.run`` is patched (:func:`intercept_launches`): a launch is compiled with
   ``warmup=True`` for every arch instead of being run, and recorded (:class:`CompileRecorder`) with
   its specialisation (constexprs, pointer dtypes, int arguments Triton folded to 1 or marked divisible
   by 16), grid, warps and stages. The op's Python code then carries on with uninitialised outputs;
   backward kernels are reached through ``.backward()`` on the op's outputs.
4. Per compiled variant and arch, the ptxas that Triton uses for that arch (bundled with the triton
   package) runs with ``-v`` on the kernel's PTX (:func:`ptxas_stats`), and the occupancy follows from
   the registers, threads and shared memory (:func:`occupancy`).

A *partial batch* pass (default B=37, for one config) then lists every variant that a training run's
smaller last batch compiles on top of the full batch's (:func:`find_recompiles`).

Usage::

    python -m dtifast.bench.compile --out benchmarks/results [--archs 75,80,90] [--dtypes float32,bfloat16]
        [--configs clevr6 tetro ...] [--batch 128] [--partial-batch 37] [--subset ci|full] [--jobs N]

or ``dtifast bench compile …`` (the same, in a fresh process). Writes ``compile.md`` and ``compile.json``
(``--json PATH`` elsewhere); exits with 1 when a launch fails to compile. Needs Triton with its NVIDIA
backend (tested with 3.9); see ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import pathlib
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from .ops import ALL_CONFIGS, OP_CASES, OpCase, Shapes, make_inputs, shapes_for

__all__ = ["ARCH_LIMITS", "CI_OPS", "CheckOptions", "CheckResult", "CompileRecorder", "StandInDriver", "ArchResult",
           "Variant", "prepare_process", "intercept_launches", "ptxas_stats", "occupancy", "run_check", "jit_functions",
           "run_check_parallel", "find_recompiles", "write_markdown", "write_json", "fresh_process", "main"]

log = logging.getLogger(__name__)

COMPILE_ONLY_ENV = "DTIFAST_TRITON_COMPILE_ONLY"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
# The CI subset: at CLEVR6's L = 6 (the largest), these ops launch every kernel of dtifast.kernels.
CI_OPS = ("render_loss", "composite_layers", "greedy_select_sprites", "place_sprites", "color_transform")
# Ops whose Triton backward records its input gradient instead of using atomics in deterministic mode
# (torch.use_deterministic_algorithms): compiled once more in that mode.
RECORDED_BACKWARD_OPS = ("render_loss", "place_sprites", "warp_theta", "warp_position", "warp_similarity",
                         "warp_affine", "warp_projective", "warp_tps")
CI_CONFIG = "clevr6"
WARP_SIZE = 32
CPU = torch.device("cpu")
KIB = 1024


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM limits of one compute capability (CUDA C Programming Guide, "Compute Capabilities")."""
    max_threads: int
    max_blocks: int
    smem_per_sm: int
    smem_per_block: int
    smem_reserved_per_block: int
    registers: int = 65536
    register_granularity: int = 256  # registers are allocated per warp, in units of this many
    max_registers_per_thread: int = 255


ARCH_LIMITS: dict[int, ArchLimits] = {
    75: ArchLimits(max_threads=1024, max_blocks=16, smem_per_sm=64 * KIB, smem_per_block=64 * KIB,
                   smem_reserved_per_block=0),
    # From 8.0 on, the CUDA runtime reserves 1 KB of shared memory per block.
    80: ArchLimits(max_threads=2048, max_blocks=32, smem_per_sm=164 * KIB, smem_per_block=163 * KIB,
                   smem_reserved_per_block=KIB),
    90: ArchLimits(max_threads=2048, max_blocks=32, smem_per_sm=228 * KIB, smem_per_block=227 * KIB,
                   smem_reserved_per_block=KIB),
}


@dataclass(frozen=True)
class CheckOptions:
    """What a compile check covers.

    Attributes:
        archs: compute capabilities (keys of :data:`ARCH_LIMITS`).
        dtypes: op dtypes (keys of :data:`DTYPES`).
        configs: bundled configs whose shapes (:func:`dtifast.bench.ops.shapes_for`) the ops run at.
        batch: their batch.
        subset: ``ci`` (the ops of :data:`CI_OPS`) or ``full`` (every op of each config's training step).
        partial_batch: batch of the partial-batch pass (0: none); it runs for :attr:`partial_config`.
        partial_compile: compile the partial pass's new variants too (False: only detect them).
    """
    archs: tuple[int, ...] = (75, 80, 90)
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    configs: tuple[str, ...] = ALL_CONFIGS
    batch: int = 128
    subset: str = "full"
    partial_batch: int = 37
    partial_compile: bool = True

    @property
    def partial_config(self) -> str:
        """CLEVR6 (the largest L) when checked, else the first config."""
        return CI_CONFIG if CI_CONFIG in self.configs else self.configs[0]

    def validate(self) -> None:
        """Raise ValueError naming the first option out of range (or config that does not load)."""
        if self.batch < 1 or self.partial_batch < 0:
            raise ValueError(f"batch must be >= 1 and partial_batch >= 0, got {self.batch} and {self.partial_batch}")
        if self.subset not in ("ci", "full"):
            raise ValueError(f"subset must be ci or full, got {self.subset!r}")
        for name, values, allowed in (("archs", self.archs, ARCH_LIMITS), ("dtypes", self.dtypes, DTYPES)):
            if not values or any(v not in allowed for v in values):
                raise ValueError(f"{name} must be among {list(allowed)}, got {list(values)}")
        if not self.configs:
            raise ValueError("configs must name at least one config")
        for config in self.configs:
            try:
                shapes_for(config, self.batch)
            except FileNotFoundError as err:
                raise ValueError(str(err)) from None

    def argv(self) -> list[str]:
        """These options as ``python -m dtifast.bench.compile`` arguments."""
        return ["--archs", ",".join(map(str, self.archs)), "--dtypes", ",".join(self.dtypes),
                "--configs", *self.configs, "--batch", str(self.batch), "--subset", self.subset,
                "--partial-batch", str(self.partial_batch),
                *([] if self.partial_compile else ["--partial-detect-only"])]


# ----------------------------------------------------------------------------------------------------
# The process, the driver and the launch interception
# ----------------------------------------------------------------------------------------------------

def prepare_process() -> None:
    """Set up this process for compile-only launches (``TRITON_INTERPRET`` unset, ``COMPILE_ONLY_ENV=1``).

    Raises:
        RuntimeError: a ``dtifast.kernels`` module is already imported: its ``triton.jit`` functions
            were built under the environment of that time (the interpreter, say). Run the check in a
            fresh process (``python -m dtifast.bench.compile``).
    """
    loaded = sorted(m for m in sys.modules if m.startswith("dtifast.kernels."))
    if loaded:
        raise RuntimeError(f"the compile check needs a fresh process, but {', '.join(loaded)} is already imported; "
                           "run `python -m dtifast.bench.compile` instead")
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ[COMPILE_ONLY_ENV] = "1"


class StandInDriver:
    """A Triton driver with no GPU behind it: device ``i`` is a CUDA target of compute capability
    ``archs[i]``; the stream is always 0. It can compile, never launch.

    It has the methods of ``triton.backends.driver.DriverBase`` (duck-typed, so that this module
    imports without Triton).
    """

    def __init__(self, archs: Sequence[int]) -> None:
        self.archs = tuple(archs)
        self.device = 0

    @classmethod
    def is_active(cls) -> bool:
        return True

    def select(self, arch: int) -> int:
        """Make ``arch``'s device current; returns its device id."""
        self.device = self.archs.index(arch)
        return self.device

    def get_current_device(self) -> int:
        return self.device

    def get_current_stream(self, device: Optional[int] = None) -> int:
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", self.archs[self.device], WARP_SIZE)

    def get_active_torch_device(self) -> torch.device:
        return CPU

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise NotImplementedError("the compile check's stand-in driver builds no launchers")

    def get_benchmarker(self):
        raise NotImplementedError("the compile check's stand-in driver runs nothing")


@dataclass(frozen=True)
class LaunchContext:
    """What the launches being recorded belong to."""
    config: str
    batch: int
    dtype: str
    op: str


@dataclass
class ArchResult:
    """One variant compiled for one arch: ptxas' figures, the occupancy they allow and the compile time
    (``compile_s`` wall; ``compile_cpu_s`` CPU of this process and of the ptxas it ran: what the compile
    costs whatever else the machine is doing)."""
    arch: int
    ptx_target: str
    ptx_version: str
    registers: int
    spill_stores: int
    spill_loads: int
    smem_static: int
    smem_dynamic: int
    occupancy: float
    blocks_per_sm: int
    limiter: str
    compile_s: float
    compile_cpu_s: float

    @property
    def spill_bytes(self) -> int:
        return self.spill_stores + self.spill_loads


@dataclass
class Variant:
    """One specialisation of a kernel (the same for every arch), its per-arch results and its launches.

    ``key`` identifies it as Triton's kernel cache does (name, the binder's specialisation, options);
    ``results`` is empty for a variant only detected (see :attr:`CheckOptions.partial_compile`).
    """
    key: str
    kernel: str
    args: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int = 0
    num_stages: int = 0
    results: dict[int, ArchResult] = field(default_factory=dict)
    uses: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        """Short form of the specialisation: constexprs, pointer dtypes, ints folded to 1 and ints ÷16."""
        parts = [" ".join(f"{k}={_short(v)}" for k, v in self.constexprs.items())]
        parts.append("ptr " + ",".join(sorted({d.split()[0][1:] for d in self.args.values() if d.startswith("*")})))
        for label, suffix in (("=1", " =1"), ("÷16", " ÷16"), ("unaligned", " unaligned")):
            names = [k for k, d in self.args.items() if d.endswith(suffix)]
            if names:
                parts.append(f"{label}: {','.join(names)}")
        return " · ".join(p for p in parts if p)

    def dtypes(self) -> list[str]:
        """The op dtypes this variant was launched for."""
        return sorted({u["dtype"] for u in self.uses})

    def as_dict(self) -> dict[str, Any]:
        """JSON form, with the short specialisation and each arch's spill bytes."""
        d = dataclasses.asdict(self)
        d["specialisation"] = self.describe()
        d["results"] = {str(a): {**dataclasses.asdict(r), "spill_bytes": r.spill_bytes}
                        for a, r in self.results.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Variant":
        """The inverse of :meth:`as_dict`."""
        names = {f.name for f in dataclasses.fields(ArchResult)}
        results = {int(a): ArchResult(**{k: v for k, v in r.items() if k in names}) for a, r in d["results"].items()}
        return cls(d["key"], d["kernel"], d["args"], d["constexprs"], d["num_warps"], d["num_stages"], results,
                   d["uses"])


def _short(value: Any) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


def _plain(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def describe_args(fn: Any, specialization: Sequence[tuple[str, Any]]) -> tuple[dict[str, str], dict[str, Any]]:
    """Per-argument descriptors of one launch from the JIT binder's ``specialization``, and the constexprs.

    Descriptors: ``constexpr`` (value in the second dict), ``*fp32`` (pointer; `` unaligned`` when not
    16-byte aligned), ``i32 ÷16`` / ``i32`` (int, divisible by 16 or not), ``int =1`` (an int Triton
    folded into a constant), ``fp32`` (float, never specialised).
    """
    args: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    for param, (kind, value) in zip(fn.params, specialization):
        if param.is_constexpr:
            args[param.name] = "constexpr"
            constexprs[param.name] = _plain(value)
        elif kind == "constexpr":
            args[param.name] = f"int ={value}"
        elif kind.startswith("*"):
            args[param.name] = kind + ("" if value == "D" else " unaligned")
        else:
            args[param.name] = kind + (" ÷16" if value == "D" else "")
    return args, constexprs


class CompileFailure(RuntimeError):
    """A launch that did not compile; the message names the kernel, arch, dtype, config and specialisation."""


class CompileRecorder:
    """Compiles every intercepted launch for each arch (once per variant) and records the variants."""

    def __init__(self, archs: Sequence[int], original_run: Callable[..., Any]) -> None:
        self.archs = tuple(archs)
        self.driver = StandInDriver(self.archs)
        self.original_run = original_run
        self.variants: dict[str, Variant] = {}
        self.context: Optional[LaunchContext] = None
        self.compile_new = True

    @contextlib.contextmanager
    def recording(self, context: LaunchContext, compile_new: bool = True) -> Iterator[None]:
        """Attribute the launches inside the block to ``context``; with ``compile_new`` False, variants
        not compiled yet are recorded but not compiled."""
        self.context, self.compile_new = context, compile_new
        try:
            yield
        finally:
            self.context, self.compile_new = None, True

    def launch(self, fn: Any, args: tuple, kwargs: dict[str, Any], grid: Any) -> None:
        """Record one ``fn[grid](*args, **kwargs)`` and compile it for every arch it is new on.

        Raises:
            CompileFailure: it does not compile for some arch (every arch is tried; one message each).
        """
        if self.context is None:
            raise RuntimeError(f"{fn.__name__} launched outside CompileRecorder.recording()")
        binder = fn.device_caches[self.driver.select(self.archs[0])][4]
        _, specialization, options = binder(*args, **kwargs)
        key = repr((fn.__name__, specialization, sorted(options.items())))
        variant = self.variants.get(key)
        if variant is None:
            variant = self.variants[key] = Variant(key, fn.__name__, *describe_args(fn, specialization))
        use = {**dataclasses.asdict(self.context), "grid": list(grid) if isinstance(grid, tuple) else repr(grid)}
        if use not in variant.uses:
            variant.uses.append(use)
        if not (self.compile_new or variant.results):
            return
        failures = []
        for arch in self.archs:
            if arch not in variant.results:
                try:
                    variant.results[arch] = self._compile(fn, args, kwargs, grid, arch, variant)
                except CompileFailure as err:
                    failures.append(str(err))
        if failures:
            raise CompileFailure("\n".join(failures))

    def _compile(self, fn: Any, args: tuple, kwargs: dict[str, Any], grid: Any, arch: int,
                 variant: Variant) -> ArchResult:
        """Compile one launch for ``arch`` (Triton's warmup) and measure the result."""
        self.driver.select(arch)
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        try:
            kernel = self.original_run(fn, *args, grid=grid, warmup=True, **kwargs)
        except Exception as err:  # noqa: BLE001 - Triton reports compile errors as many exception types
            c = self.context
            raise CompileFailure(f"{variant.kernel} does not compile for sm_{arch} ({c.dtype}, config {c.config} "
                                 f"B={c.batch}, op {c.op}; {variant.describe()}): {type(err).__name__}: {err}") from err
        seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
        variant.num_warps, variant.num_stages = kernel.metadata.num_warps, kernel.metadata.num_stages
        stats = ptxas_stats(kernel.asm["ptx"], arch)
        occ = occupancy(arch, stats["registers"], kernel.metadata.num_warps * WARP_SIZE,
                        stats["smem_static"] + kernel.metadata.shared)
        log.debug("compiled %s for sm_%d in %.2f s: %s", variant.kernel, arch, seconds, stats)
        return ArchResult(arch=arch, smem_dynamic=kernel.metadata.shared, compile_s=seconds,
                          compile_cpu_s=cpu_seconds, **stats, **occ)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (Triton's ptxas)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def intercept_launches(archs: Sequence[int]) -> Iterator[CompileRecorder]:
    """Install the stand-in driver, a fresh Triton cache folder and the launch interception.

    Yields the :class:`CompileRecorder` that every ``kernel[grid](...)`` call inside the block goes to;
    ``warmup=True`` calls pass through. Everything is restored on exit.
    """
    from triton import knobs
    from triton.runtime.driver import driver as triton_driver
    from triton.runtime.jit import JITFunction

    original_run = JITFunction.run
    # The driver set before (None until Triton first needs one: without a GPU there is no default).
    previous_driver = triton_driver._active
    recorder = CompileRecorder(archs, original_run)

    def run(self, *args, grid, warmup, **kwargs):
        if warmup:
            return original_run(self, *args, grid=grid, warmup=warmup, **kwargs)
        return recorder.launch(self, args, kwargs, grid)

    # A fresh cache: every compile is a real one (timed), and nothing lands in ~/.triton.
    with tempfile.TemporaryDirectory(prefix="dtifast-compile-") as cache, knobs.cache.scope():
        knobs.cache.dir = cache
        triton_driver.set_active(recorder.driver)
        JITFunction.run = run
        try:
            yield recorder
        finally:
            JITFunction.run = original_run
            triton_driver.set_active(previous_driver)


# ----------------------------------------------------------------------------------------------------
# ptxas and occupancy
# ----------------------------------------------------------------------------------------------------

_PTXAS_PATTERNS = {
    "registers": r"Used (\d+) registers",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
    "smem_static": r"(\d+) bytes smem",
}


def ptxas_tool(arch: int) -> tuple[str, str]:
    """Path and CUDA release of the ptxas that Triton itself uses for ``arch`` (shipped in the triton
    package: ``ptxas`` below sm_90, ``ptxas-blackwell`` from sm_90 on)."""
    from triton.backends.nvidia.compiler import get_ptxas
    tool = get_ptxas(arch)
    return tool.path, tool.version


def ptx_header(ptx: str) -> tuple[str, str]:
    """The ``.target`` (e.g. ``sm_90a``) and ``.version`` (e.g. ``8.8``) of a PTX module."""
    target = re.search(r"^\.target\s+(\w+)", ptx, re.MULTILINE)
    version = re.search(r"^\.version\s+([\d.]+)", ptx, re.MULTILINE)
    if target is None or version is None:
        raise ValueError("PTX without .target/.version lines")
    return target.group(1), version.group(1)


def ptxas_stats(ptx: str, arch: int) -> dict[str, Any]:
    """Assemble ``ptx`` with ``ptxas -v`` for the PTX's own target (``sm_90a`` for 90: Triton emits
    arch-specific PTX there) and return ``ptx_target``, ``ptx_version``, ``registers``,
    ``spill_stores``, ``spill_loads`` (bytes) and ``smem_static`` (bytes) of its one entry function.

    Raises:
        RuntimeError: ptxas failed (its output is in the message).
    """
    target, version = ptx_header(ptx)
    with tempfile.TemporaryDirectory(prefix="dtifast-ptxas-") as tmp:
        src = pathlib.Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        # --regAllocOptLevel=2 as Triton passes it (a ptxas 13 workaround), so the figures are Triton's.
        cmd = [ptxas_tool(arch)[0], "-v", "--regAllocOptLevel=2", f"--gpu-name={target}", str(src),
               "-o", str(src.with_suffix(".cubin"))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed ({' '.join(cmd)}):\n{proc.stderr}")
    stats: dict[str, Any] = {"ptx_target": target, "ptx_version": version}
    for name, pattern in _PTXAS_PATTERNS.items():
        found = re.search(pattern, proc.stderr)
        stats[name] = int(found.group(1)) if found else 0
    return stats


def occupancy(arch: int, registers: int, threads: int, smem: int) -> dict[str, Any]:
    """Theoretical occupancy of a kernel on one SM of ``arch``.

    Args:
        registers: per thread (ptxas); threads: per block; smem: bytes per block (static + dynamic).

    Returns:
        ``occupancy`` (resident warps / the SM's maximum; 0 when a block does not fit),
        ``blocks_per_sm`` and ``limiter`` (``threads``, ``blocks``, ``registers``, ``shared memory`` or
        ``does not fit``).
    """
    lim = ARCH_LIMITS[arch]
    max_warps = lim.max_threads // WARP_SIZE
    warps = -(-threads // WARP_SIZE)
    per_warp = -(-registers * WARP_SIZE // lim.register_granularity) * lim.register_granularity
    if threads > lim.max_threads or registers > lim.max_registers_per_thread or smem > lim.smem_per_block:
        return {"occupancy": 0.0, "blocks_per_sm": 0, "limiter": "does not fit"}
    bounds = {
        "threads": max_warps // warps,
        "blocks": lim.max_blocks,
        "registers": (lim.registers // per_warp) // warps if per_warp else lim.max_blocks,
        "shared memory": lim.smem_per_sm // (smem + lim.smem_reserved_per_block) if smem else lim.max_blocks,
    }
    limiter = min(bounds, key=bounds.get)
    return {"occupancy": bounds[limiter] * warps / max_warps, "blocks_per_sm": bounds[limiter], "limiter": limiter}


# ----------------------------------------------------------------------------------------------------
# Driving the ops
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One op called at one shape set and dtype; ``compile_new`` False: new variants only detected;
    ``deterministic``: under ``torch.use_deterministic_algorithms(True)`` (the recorded backward variants)."""
    config: str
    batch: int
    dtype: str
    op: str
    compile_new: bool = True
    deterministic: bool = False


def ops_for(shapes: Shapes, subset: str) -> list[OpCase]:
    """The op cases of ``subset`` (``ci``: :data:`CI_OPS`; ``full``: every op) in a config's training step."""
    names = CI_OPS if subset == "ci" else tuple(OP_CASES)
    return [OP_CASES[n] for n in names if OP_CASES[n].applies(shapes)]


def plan(opts: CheckOptions) -> list[Job]:
    """Every job: each config × dtype × op at the batch, the ops whose backward has a deterministic
    variant again in deterministic mode, then the partial-batch pass."""
    passes = [(c, opts.batch, True) for c in opts.configs]
    if opts.partial_batch:
        passes.append((opts.partial_config, opts.partial_batch, opts.partial_compile))
    jobs = [Job(c, b, d, case.op, compile_new) for c, b, compile_new in passes for d in opts.dtypes
            for case in ops_for(shapes_for(c, b), opts.subset)]
    jobs += [Job(c, opts.batch, d, case.op, deterministic=True) for c in opts.configs for d in opts.dtypes
             for case in ops_for(shapes_for(c, opts.batch), opts.subset) if case.op in RECORDED_BACKWARD_OPS]
    return jobs


def run_op(case: OpCase, shapes: Shapes, dtype: torch.dtype, device: torch.device = CPU) -> None:
    """Call ``case.op`` with ``backend="triton"`` on ``device`` inputs, then its backward when it has one."""
    from dtifast import ops
    mode = case.modes[-1]
    args = make_inputs(case, shapes, device, mode, dtype=dtype)
    out = getattr(ops, case.op)(*args, backend="triton")
    if mode == "fwd+bwd":
        outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.requires_grad]
        torch.autograd.backward([o.sum() for o in outs])


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(enabled)`` inside the block, restored after."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def run_jobs(recorder: CompileRecorder, jobs: Sequence[Job], progress: bool = True) -> list[str]:
    """Run every job under ``recorder``; returns one message per job that failed (the rest carry on)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from dtifast.ops._checks import value_checks

    errors = []
    # Value checks stay off: later kernels read earlier ones' uninitialised outputs.
    with value_checks(False), logging_redirect_tqdm():
        for job in tqdm(jobs, desc="compile check", unit="op", disable=not progress):
            log.info("%s B=%d %s %s", job.config, job.batch, job.dtype, job.op)
            try:
                with recorder.recording(LaunchContext(job.config, job.batch, job.dtype, job.op), job.compile_new), \
                        deterministic_algorithms(job.deterministic):
                    run_op(OP_CASES[job.op], shapes_for(job.config, job.batch), DTYPES[job.dtype])
            except Exception as err:  # noqa: BLE001 - report every failing job, not just the first
                message = str(err) if isinstance(err, CompileFailure) else \
                    f"{job.op} ({job.dtype}, config {job.config} B={job.batch}): {type(err).__name__}: {err}"
                log.error("%s", message)
                errors.append(message)
    return errors


def jit_functions() -> list[Any]:
    """The kernels (``triton.jit`` functions named ``*_kernel``) defined in ``dtifast.kernels``."""
    import importlib
    import pkgutil

    import dtifast.kernels
    from triton.runtime.jit import JITFunction

    found = []
    for info in pkgutil.iter_modules(dtifast.kernels.__path__):
        module = importlib.import_module(f"dtifast.kernels.{info.name}")
        found += [v for v in vars(module).values()
                  if isinstance(v, JITFunction) and v.__name__.endswith("_kernel") and v.module == module.__name__]
    return found


def kernels_defined() -> list[str]:
    """Names of the kernels of :func:`jit_functions`."""
    return sorted({fn.__name__ for fn in jit_functions()})


# ----------------------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------------------

def _spec_diff(new: Variant, old: Variant) -> list[str]:
    return [f"{k}: {_arg(old, k)} → {_arg(new, k)}" for k in new.args if _arg(new, k) != _arg(old, k)]


def _arg(v: Variant, name: str) -> str:
    return f"constexpr {v.constexprs[name]}" if name in v.constexprs else v.args.get(name, "absent")


def find_recompiles(variants: Sequence[Variant], config: str, batch: int, partial_batch: int) -> list[dict[str, Any]]:
    """Variants that ``config`` launches at ``partial_batch`` but never at ``batch``: what a training run's
    smaller last batch compiles on top of the full batch's.

    Returns:
        ``{"variant": Variant, "changed": [...]}`` per such variant; ``changed`` lists the arguments whose
        specialisation differs from the closest full-batch variant of the same kernel and dtype.
    """
    def used(v: Variant, b: int) -> bool:
        return any(u["config"] == config and u["batch"] == b for u in v.uses)

    full = [v for v in variants if used(v, batch)]
    found = []
    for v in variants:
        if used(v, partial_batch) and not used(v, batch):
            diffs = [_spec_diff(v, f) for f in full if f.kernel == v.kernel and f.dtypes() == v.dtypes()]
            found.append({"variant": v, "changed": min(diffs, key=len) if diffs else ["no full-batch variant"]})
    return found


@dataclass
class CheckResult:
    """Everything a compile check found; ``meta`` holds the options, versions, command and wall time."""
    variants: list[Variant]
    errors: list[str]
    kernels: list[str]
    meta: dict[str, Any]

    @property
    def launched(self) -> list[str]:
        """Kernels that some job launched."""
        return sorted({v.kernel for v in self.variants})

    @property
    def recompiles(self) -> list[dict[str, Any]]:
        """The partial batch's new variants (:func:`find_recompiles`); empty without a partial pass."""
        partial = self.meta["partial"]
        return find_recompiles(self.variants, partial[0], self.meta["batch"], partial[1]) if partial else []


def _meta(opts: CheckOptions, seconds: float, command: str, workers: int) -> dict[str, Any]:
    import triton

    return {"archs": list(opts.archs), "dtypes": list(opts.dtypes), "configs": list(opts.configs),
            "batch": opts.batch, "subset": opts.subset,
            "partial": [opts.partial_config, opts.partial_batch] if opts.partial_batch else None,
            "partial_compile": opts.partial_compile, "jobs": len(plan(opts)), "workers": workers,
            "seconds": seconds, "load_average": list(os.getloadavg()), "command": command,
            "triton": triton.__version__, "torch": torch.__version__,
            "ptxas": {str(a): f"{pathlib.Path(ptxas_tool(a)[0]).name} {ptxas_tool(a)[1]}" for a in opts.archs},
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def run_check(opts: CheckOptions, progress: bool = True, command: str = "") -> CheckResult:
    """Run every job of :func:`plan` in this process under a compile-only Triton.

    :func:`prepare_process` must have run (before any ``dtifast.kernels`` import).

    Returns:
        the variants with their per-arch results, the failed jobs, the kernels defined and ``meta``.
    """
    opts.validate()
    if os.environ.get(COMPILE_ONLY_ENV) != "1" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("call prepare_process() first, in a fresh process")
    start = time.perf_counter()
    with intercept_launches(opts.archs) as recorder:
        errors = run_jobs(recorder, plan(opts), progress)
    return CheckResult(list(recorder.variants.values()), errors, kernels_defined(),
                       _meta(opts, time.perf_counter() - start, command, 1))


def fresh_process(argv: Sequence[str], **run_kwargs: Any) -> subprocess.CompletedProcess:
    """Run ``python -m dtifast.bench.compile argv`` in a new process that does not inherit ``TRITON_INTERPRET``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "dtifast.bench.compile", *argv], env=env, **run_kwargs)


def _run_worker(opts: CheckOptions, folder: pathlib.Path) -> dict[str, Any]:
    """One worker process for ``opts``; returns its JSON report."""
    proc = fresh_process([*opts.argv(), "--out", str(folder), "--quiet"], capture_output=True, text=True)
    path = folder / "compile.json"
    if not path.exists():
        raise RuntimeError(f"the compile-check worker for {' '.join(opts.argv())} exited with {proc.returncode} "
                           f"and no report:\n{proc.stderr[-3000:]}")
    return json.loads(path.read_text())


def merge_variants(parts: Sequence[Sequence[Variant]]) -> list[Variant]:
    """Variants of several runs, one per key: per-arch results and launches united."""
    merged: dict[str, Variant] = {}
    for variants in parts:
        for v in variants:
            into = merged.setdefault(v.key, v)
            if into is not v:
                into.results = {**v.results, **into.results}
                into.uses += [u for u in v.uses if u not in into.uses]
    return list(merged.values())


def run_check_parallel(opts: CheckOptions, workers: int, progress: bool = True, command: str = "") -> CheckResult:
    """:func:`run_check` split by (config, dtype) over ``workers`` processes at a time, merged.

    A variant that two splits launch is compiled in both (the first's figures are kept). The partial
    pass runs with its config's splits. Needs no :func:`prepare_process` here (each worker does it).
    """
    from tqdm import tqdm

    opts.validate()
    units = [dataclasses.replace(opts, configs=(c,), dtypes=(d,),
                                 partial_batch=opts.partial_batch if c == opts.partial_config else 0)
             for c in opts.configs for d in opts.dtypes]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dtifast-compile-workers-") as tmp, \
            concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_run_worker, u, pathlib.Path(tmp) / str(i)) for i, u in enumerate(units)]
        for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="compile check",
                           unit="split", disable=not progress):
            future.result()
        reports = [f.result() for f in futures]
    variants = merge_variants([[Variant.from_dict(v) for v in r["variants"]] for r in reports])
    errors = [e for r in reports for e in r["errors"]]
    return CheckResult(variants, errors, reports[0]["kernels"]["defined"],
                       _meta(opts, time.perf_counter() - start, command, workers))


# ----------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------

def spilling(variants: Sequence[Variant], arch: Optional[int] = None) -> list[tuple[Variant, ArchResult]]:
    """(variant, result) pairs with spill bytes, on ``arch`` or on any arch."""
    return [(v, r) for v in variants for a, r in sorted(v.results.items()) if r.spill_bytes and arch in (None, a)]


def summary(result: CheckResult) -> dict[str, Any]:
    """Headline figures: variants, rows, failures, kernels never launched, spills, slowest compile, recompiles."""
    pairs = [(v, r) for v in result.variants for r in v.results.values()]
    slowest = max(pairs, key=lambda p: p[1].compile_s, default=None)
    return {
        "variants": len(result.variants), "variants_not_compiled": sum(not v.results for v in result.variants),
        "rows": len(pairs), "errors": len(result.errors),
        "kernels_not_launched": sorted(set(result.kernels) - set(result.launched)),
        "variants_spilling_sm90": len({v.key for v, _ in spilling(result.variants, 90)}),
        "variants_spilling_any_arch": len({v.key for v, _ in spilling(result.variants)}),
        "slowest_compile": None if slowest is None else {
            "kernel": slowest[0].kernel, "arch": slowest[1].arch, "seconds": slowest[1].compile_s,
            "cpu_seconds": slowest[1].compile_cpu_s, "specialisation": slowest[0].describe()},
        "compile_seconds_total": sum(r.compile_s for _, r in pairs),
        "compile_cpu_seconds_total": sum(r.compile_cpu_s for _, r in pairs),
        "recompiles_partial_batch": len(result.recompiles),
    }


def _uses(v: Variant) -> str:
    return ", ".join(sorted({f"{u['config']} B={u['batch']}" for u in v.uses}))


def _row_order(v: Variant) -> tuple:
    return v.kernel, v.dtypes(), v.describe()


def _variant_rows(variants: Sequence[Variant]) -> list[str]:
    lines = ["| kernel | specialisation | dtype | configs | warps | arch | regs | spill st/ld B | smem B static+dyn "
             "| occupancy | compile s wall/CPU |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in sorted(variants, key=_row_order):
        for arch, r in sorted(v.results.items()):
            spill = f"**{r.spill_stores}/{r.spill_loads}**" if r.spill_bytes else "0/0"
            lines.append(f"| `{v.kernel}` | {v.describe()} | {','.join(v.dtypes())} | {_uses(v)} | {v.num_warps} "
                         f"| sm_{arch} | {r.registers} | {spill} | {r.smem_static}+{r.smem_dynamic} "
                         f"| {r.occupancy:.0%} ({r.limiter}) | {r.compile_s:.2f}/{r.compile_cpu_s:.2f} |")
    return lines


def _spill_rows(pairs: Sequence[tuple[Variant, ArchResult]]) -> list[str]:
    lines = ["| kernel | configs | dtype | arch | regs | spill stores/loads B | specialisation |",
             "|---|---|---|---|---|---|---|"]
    for v, r in sorted(pairs, key=lambda p: (_row_order(p[0]), p[1].arch)):
        lines.append(f"| `{v.kernel}` | {_uses(v)} | {','.join(v.dtypes())} | sm_{r.arch} | {r.registers} "
                     f"| {r.spill_stores}/{r.spill_loads} | {v.describe()} |")
    return lines


def _recompile_rows(recompiles: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| kernel | dtype | changed against the full batch | regs per arch | spill B per arch | specialisation |",
             "|---|---|---|---|---|---|"]
    for item in sorted(recompiles, key=lambda i: _row_order(i["variant"])):
        v = item["variant"]
        regs = ", ".join(f"sm_{a}: {r.registers}" for a, r in sorted(v.results.items())) or "not compiled"
        spills = ", ".join(f"sm_{a}: {r.spill_bytes}" for a, r in sorted(v.results.items())) or "not compiled"
        lines.append(f"| `{v.kernel}` | {','.join(v.dtypes())} | {'; '.join(item['changed'])} | {regs} | {spills} "
                     f"| {v.describe()} |")
    return lines


def write_markdown(path: pathlib.Path, result: CheckResult) -> None:
    """The report: summary, failures, spilling variants, partial-batch recompiles, then every variant × arch."""
    s, m = summary(result), result.meta
    slow = s["slowest_compile"]
    partial = f"{m['partial'][0]} at B={m['partial'][1]}" if m["partial"] else "not run"
    lines = [
        "# Triton compile check", "",
        f"`{m['command']}` — {m['date']}; Triton {m['triton']}, "
        + ", ".join(f"sm_{a}: {v}" for a, v in m["ptxas"].items())
        + f"; {m['seconds']:.0f} s wall ({m['workers']} worker process(es)).", "",
        f"Every Triton launch of the ops ({m['subset']} subset) at the shapes of {', '.join(m['configs'])}, batch "
        f"{m['batch']}, in {', '.join(m['dtypes'])}, compiled for {', '.join(f'sm_{a}' for a in m['archs'])} "
        "with the real Triton compiler and ptxas, without a GPU (see docs/benchmarks.md).", "",
        "## Summary", "",
        f"- kernel variants: {s['variants']} ({s['rows']} variant × arch rows"
        + (f"; {s['variants_not_compiled']} detected only" if s["variants_not_compiled"] else "")
        + f"); compile errors: {s['errors']}",
        f"- kernels never launched: {', '.join(s['kernels_not_launched']) or 'none'}",
        f"- variants that spill on sm_90: "
        f"{s['variants_spilling_sm90'] if 90 in m['archs'] else 'sm_90 not checked'} "
        f"(on any arch: {s['variants_spilling_any_arch']})",
        f"- slowest compile: {slow['seconds']:.2f} s wall, {slow['cpu_seconds']:.2f} s CPU, `{slow['kernel']}` for "
        f"sm_{slow['arch']} ({slow['specialisation']})" if slow else "- slowest compile: none",
        f"- compile time, all variants and archs: {s['compile_seconds_total']:.0f} s wall, "
        f"{s['compile_cpu_seconds_total']:.0f} s CPU; load average at the end "
        + "/".join(f"{x:.1f}" for x in m["load_average"]),
        f"- partial batch ({partial}): {s['recompiles_partial_batch']} new variant(s)", ""]
    if result.errors:
        lines += ["## Compile errors", ""] + [f"```\n{e}\n```\n" for e in result.errors]
    if s["variants_spilling_any_arch"]:
        lines += ["## Variants that spill", ""] + _spill_rows(spilling(result.variants)) + [""]
    if result.recompiles:
        lines += [f"## New variants for the partial batch ({partial})", "",
                  "A training run whose last batch is smaller compiles these on top of the full batch's.", ""] \
            + _recompile_rows(result.recompiles) + [""]
    lines += ["## Every variant", "",
              "Registers per thread and spill bytes from `ptxas -v`; shared memory per block (ptxas' static plus "
              "Triton's dynamic); theoretical occupancy (resident warps / the SM's maximum) and what limits it; "
              "wall and CPU time of Triton's compile (a process's first compile includes Triton's start-up; wall "
              "time grows with the machine's load, CPU time does not).", ""] \
        + _variant_rows(result.variants) + [""]
    path.write_text("\n".join(lines))


def write_json(path: pathlib.Path, result: CheckResult) -> None:
    """The JSON twin of :func:`write_markdown`: meta, summary, variants, recompiles, errors, kernels."""
    data = {"meta": result.meta, "summary": summary(result), "variants": [v.as_dict() for v in result.variants],
            "recompiles": [{"key": i["variant"].key, "kernel": i["variant"].kernel, "dtypes": i["variant"].dtypes(),
                            "specialisation": i["variant"].describe(), "changed": i["changed"]}
                           for i in result.recompiles],
            "errors": result.errors, "kernels": {"defined": result.kernels, "launched": result.launched}}
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def _name_list(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The compile check's options (``python -m dtifast.bench.compile`` and ``dtifast bench compile``)."""
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"),
                   help="folder for compile.md and compile.json")
    p.add_argument("--json", type=pathlib.Path, default=None, metavar="PATH",
                   help="write the JSON here instead of OUT/compile.json")
    p.add_argument("--archs", type=_int_list, default=[75, 80, 90], help="compute capabilities (default 75,80,90)")
    p.add_argument("--dtypes", type=_name_list, default=["float32", "bfloat16"],
                   help="op dtypes (default float32,bfloat16)")
    p.add_argument("--configs", nargs="+", default=None, metavar="CONFIG",
                   help=f"shape sets (default: {CI_CONFIG} for --subset ci, every bundled config for full)")
    p.add_argument("--batch", type=int, default=128, help="batch of the shape sets (default 128)")
    p.add_argument("--partial-batch", type=int, default=37,
                   help=f"batch of the partial-batch pass (default 37; 0: none), for {CI_CONFIG} or the first config")
    p.add_argument("--partial-detect-only", action="store_true",
                   help="list the partial batch's new variants without compiling them (faster)")
    p.add_argument("--subset", choices=["ci", "full"], default="full",
                   help=f"ci: {', '.join(CI_OPS)}; full (default): every op of each config's training step")
    p.add_argument("--jobs", type=int, default=1, help="worker processes, one (config, dtype) each at a time")
    p.add_argument("--quiet", action="store_true", help="no progress bar; warnings and errors only")
    return p


def options_from_args(args: argparse.Namespace) -> CheckOptions:
    """The :class:`CheckOptions` of parsed arguments (validated)."""
    configs = args.configs or ([CI_CONFIG] if args.subset == "ci" else list(ALL_CONFIGS))
    opts = CheckOptions(tuple(args.archs), tuple(args.dtypes), tuple(configs), args.batch, args.subset,
                        args.partial_batch, not args.partial_detect_only)
    opts.validate()
    return opts


def command_argv(args: argparse.Namespace) -> list[str]:
    """Arguments parsed by :func:`add_arguments`, back as ``python -m dtifast.bench.compile`` arguments.

    Raises:
        ValueError: an option is out of range (:meth:`CheckOptions.validate`).
    """
    return [*options_from_args(args).argv(), "--out", str(args.out), *(["--json", str(args.json)] if args.json else []),
            "--jobs", str(args.jobs), *(["--quiet"] if args.quiet else [])]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dtifast.bench.compile …``: run the check from this (fresh) process and write the report.

    Returns:
        0, or 1 when a launch failed to compile (the failures are in the report and on stderr).
    """
    parser = add_arguments(argparse.ArgumentParser(prog="python -m dtifast.bench.compile",
                                                   description=__doc__.split("\n\n")[0]))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        opts = options_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="[compile] %(message)s")
    command = "python -m dtifast.bench.compile" + "".join(" " + shlex.quote(a) for a in argv)
    torch.set_num_threads(1)  # the compiler is the work; the op inputs need no more on a shared CPU
    if args.jobs > 1:
        result = run_check_parallel(opts, args.jobs, progress=not args.quiet, command=command)
    else:
        prepare_process()
        result = run_check(opts, progress=not args.quiet, command=command)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.json or args.out / "compile.json"
    write_markdown(args.out / "compile.md", result)
    write_json(json_path, result)
    print(args.out / "compile.md")
    print(json_path)
    for message in result.errors:
        print(f"compile check: {message}", file=sys.stderr)
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())

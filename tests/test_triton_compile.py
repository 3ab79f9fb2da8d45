"""Every Triton kernel compiles for real NVIDIA targets, without a GPU (the compile check's CI subset).

``python -m dtifast.bench.compile --subset ci`` runs in a fresh process (this suite sets
``TRITON_INTERPRET=1``, under which nothing is compiled): the CLEVR6 shapes (L = 6, the largest of the
bundled configs) at batch 128 in float32 and bfloat16, compiled for sm_75, sm_80 and sm_90, then a
partial batch of 37 whose new variants are detected without being compiled. About 4 CPU-minutes in two
worker processes: 2-2.5 minutes on the 2-core CI box when it is otherwise idle; see docs/benchmarks.md.
"""
from __future__ import annotations

import json
import pathlib

import pytest

pytest.importorskip("triton")

from dtifast.bench import ALL_CONFIGS  # noqa: E402
from dtifast.bench.compile import CI_CONFIG, fresh_process, occupancy  # noqa: E402
from dtifast.bench.ops import shapes_for  # noqa: E402

# One worker runs the whole module under `pytest -n 2 --dist loadgroup`, so the check runs once.
pytestmark = pytest.mark.xdist_group("triton_compile")

ARCHS = ("75", "80", "90")
DTYPES = ("float32", "bfloat16")
BATCH, PARTIAL_BATCH = 128, 37
MAX_COMPILE_CPU_S = 30.0


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("compile")
    proc = fresh_process(["--subset", "ci", "--archs", ",".join(ARCHS), "--dtypes", ",".join(DTYPES),
                          "--batch", str(BATCH), "--partial-batch", str(PARTIAL_BATCH), "--partial-detect-only",
                          "--jobs", "2", "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=1800)
    path = pathlib.Path(out) / "compile.json"
    assert path.exists(), f"the compile check wrote no report (exit {proc.returncode}):\n{proc.stderr[-5000:]}"
    return {"returncode": proc.returncode, "stderr": proc.stderr, **json.loads(path.read_text())}


def _full_batch(variant: dict) -> bool:
    return any(u["batch"] == BATCH for u in variant["uses"])


def _label(variant: dict) -> str:
    return f"{variant['kernel']} ({', '.join(sorted({u['dtype'] for u in variant['uses']}))}; " \
           f"{variant['specialisation']})"


@pytest.mark.parametrize("arch, registers, threads, smem, expected", [
    (90, 32, 128, 0, (1.0, 16, "threads")),  # 16 blocks of 4 warps fill the 64 warp slots
    (80, 255, 128, 2048, (0.125, 2, "registers")),  # 255 → 256 per thread: 2 blocks of 4 warps in 64K
    (75, 64, 256, 48 * 1024, (0.25, 1, "shared memory")),
    (75, 32, 128, 70 * 1024, (0.0, 0, "does not fit")),  # over sm_75's 64 KB per block
])
def test_occupancy_follows_the_published_limits(arch, registers, threads, smem, expected):
    got = occupancy(arch, registers, threads, smem)
    assert (got["occupancy"], got["blocks_per_sm"], got["limiter"]) == expected


def test_the_subset_runs_at_the_largest_number_of_layers():
    assert shapes_for(CI_CONFIG, BATCH).L == max(shapes_for(c, BATCH).L for c in ALL_CONFIGS)


def test_every_launch_compiles_for_every_arch(report):
    assert report["errors"] == [] and report["returncode"] == 0, "\n".join(report["errors"]) or report["stderr"]
    missing = [f"{_label(v)}: compiled for sm_{', sm_'.join(sorted(v['results']))}"
               for v in report["variants"] if _full_batch(v) and tuple(sorted(v["results"])) != ARCHS]
    assert not missing, "\n".join(missing)


def test_every_kernel_is_compiled_in_both_dtypes(report):
    compiled = {(v["kernel"], u["dtype"]) for v in report["variants"] if _full_batch(v) and v["results"]
                for u in v["uses"]}
    kernels = report["kernels"]["defined"]
    assert len(kernels) >= 10, kernels
    missing = [f"{k} {d}" for k in kernels for d in DTYPES if (k, d) not in compiled]
    assert not missing, f"kernels of dtifast.kernels that the CI subset does not compile: {missing}"


def test_no_variant_spills_on_sm90(report):
    spilling = [f"{_label(v)}: {r['registers']} registers, {r['spill_stores']} B spill stores, "
                f"{r['spill_loads']} B spill loads"
                for v in report["variants"] for a, r in v["results"].items() if a == "90" and r["spill_bytes"]]
    assert not spilling, "variants that spill on sm_90:\n" + "\n".join(spilling)


def test_every_variant_compiles_in_under_30_s(report):
    # CPU seconds (this process and its ptxas): wall time on the shared CI box mostly measures its load.
    slow = [f"{_label(v)} on sm_{a}: {r['compile_cpu_s']:.1f} s CPU ({r['compile_s']:.1f} s wall)"
            for v in report["variants"] for a, r in v["results"].items() if r["compile_cpu_s"] >= MAX_COMPILE_CPU_S]
    assert not slow, "\n".join(slow)


def test_a_partial_batch_compiles_no_new_variant(report):
    assert report["meta"]["partial"] == [CI_CONFIG, PARTIAL_BATCH]
    new = [f"{r['kernel']} ({','.join(r['dtypes'])}; {r['specialisation']}): {'; '.join(r['changed'])}"
           for r in report["recompiles"]]
    assert not new, f"a last batch of {PARTIAL_BATCH} compiles {len(new)} new variant(s):\n" + "\n".join(new)

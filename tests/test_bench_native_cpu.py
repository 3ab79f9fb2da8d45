"""`benchmarks/bench_native_cpu.py` (C++ kernels vs eager) at tiny sizes: the table it writes and the
training-step figures with the encoder's bound. No timing assertions: the figures depend on the machine."""
from __future__ import annotations

import importlib.util
import pathlib
import platform
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_native_cpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_native_cpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_writes_one_row_per_op_and_mode(tmp_path):
    out = tmp_path / "native.md"
    subprocess.run([sys.executable, str(SCRIPT), "--configs", "gtsrb8", "--batch", "1", "--repeats", "1",
                    "--ops", "composite_candidates", "softclip", "--no-step", "--out", str(out)],
                   check=True, capture_output=True, text=True)
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| gtsrb8")]
    assert sorted((r[1].strip(), r[2].strip()) for r in rows) == [
        ("composite_candidates", "fwd"), ("composite_candidates", "fwd+bwd"), ("softclip", "fwd"),
        ("softclip", "fwd+bwd")]
    for row in rows:
        eager, native, speedup = (cell.strip() for cell in row[3:6])
        assert float(eager) > 0 and float(native) > 0
        assert speedup.endswith("×") and float(speedup[:-1]) > 0


def test_step_times_both_providers_and_the_encoder(bench):
    t = bench.bench_step("gtsrb8", 1, 1)
    assert set(t) == {"torch", "cpu", "encoder"}
    assert all(v > 0 for v in t.values())
    # The encoder is part of the step: its time alone cannot exceed the eager step's by much.
    assert t["encoder"] < 2 * t["torch"]


def test_retained_step_is_timed_in_a_process_that_keeps_freed_memory(bench):
    t = bench.retained_step("gtsrb8", 1, 1)
    assert set(t) == {"retained", "torch", "cpu", "encoder"}
    # The setting is taken wherever the C library is glibc (the CI box and the project's machines).
    assert t["retained"] is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert all(t[name] > 0 for name in ("torch", "cpu", "encoder"))


def test_every_config_is_measured_by_default(bench):
    from dtifast.bench.ops import ALL_CONFIGS
    assert bench.DEFAULT_CONFIGS == list(ALL_CONFIGS) and "instagram" in bench.DEFAULT_CONFIGS


def test_profile_rows_split_each_providers_step(bench):
    rows = [line.split("|")[1:-1] for line in bench._profile_rows(["gtsrb8"], 1) if line.startswith("| gtsrb8")]
    assert [r[1].strip() for r in rows] == ["eager", "C++"]
    for row in rows:
        step_ms = float(row[2])
        parts = [float(cell.split("(")[0]) for cell in row[3:7]]
        assert step_ms > 0 and sum(parts) == pytest.approx(step_ms, rel=0.02)
        assert all("%" in cell for cell in row[3:7])
    assert rows[0][7].strip() == rows[0][8].strip() == ""
    eager_step, cpp_step, cpp_ops = float(rows[0][2]), float(rows[1][2]), float(rows[1][4].split("(")[0])
    assert float(rows[1][7].strip()[:-1]) > 0
    assert float(rows[1][8].strip()[:-1]) == pytest.approx(eager_step / (cpp_step - cpp_ops), rel=0.1, abs=0.1)

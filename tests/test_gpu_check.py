"""The GPU script's plumbing, on the CPU: the verdict it prints (dtifast.bench.headline), the report of the
kernels as built (dtifast.bench.device_kernels, without its GPU part) and the script itself."""
from __future__ import annotations

import json
import pathlib
import re
import subprocess

import pytest

from dtifast.bench import device_kernels, headline

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _junit(path: pathlib.Path, passed: int, failed: int = 0, skipped: int = 0) -> None:
    cases = "".join(f'<testcase name="p{i}"/>' for i in range(passed))
    cases += "".join(f'<testcase name="f{i}"><failure message="boom"/></testcase>' for i in range(failed))
    cases += "".join(f'<testcase name="s{i}"><skipped message="no"/></testcase>' for i in range(skipped))
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="{passed + failed + skipped}" '
                    f'failures="{failed}" errors="0" skipped="{skipped}">{cases}</testsuite></testsuites>')


def _kernel(registers=120, local_bytes=0, batch=128) -> device_kernels.BuiltKernel:
    return device_kernels.BuiltKernel("_composite_backward_kernel", "clevr6", batch, "float32", "composite_layers",
                                      False, 4, registers, local_bytes, 16, 0.5, "registers")


def _kernels_json(path: pathlib.Path, kernels) -> None:
    summary = device_kernels.summary(kernels, [{"op": "x", "seconds": 1.0}], [], 128)
    path.write_text(json.dumps({"meta": {"summary": summary}}))


def _row(section, provider, status="ok", **fields):
    return {"section": section, "provider": provider, "status": status, **fields}


def _report(path: pathlib.Path, errors: int = 0) -> None:
    rows = []
    for op, eager_ms, fused_ms, compiled_ms in (("composite_layers", 4.0, 1.0, 2.0), ("render_loss", 9.0, 1.0, 3.0)):
        for provider, ms in (("torch", eager_ms), ("triton", fused_ms), ("torch.compile", compiled_ms)):
            rows.append(_row("op", provider, op=op, config="clevr6", batch=128, mode="fwd+bwd", median_s=ms / 1e3))
    rows.append(_row("op", "cuda", "skipped", op="render_loss", config="clevr6", batch=128, mode="fwd"))
    for config, eager, fused in (("clevr6", 100.0, 300.0), ("tetro", 1000.0, 2000.0)):
        rows.append(_row("train", "torch", config=config, batch=128, images_per_s=eager, peak_bytes=8 << 30, epoch=9))
        rows.append(_row("train", "triton", config=config, batch=128, images_per_s=fused, peak_bytes=3 << 29, epoch=9))
    rows.append(_row("memory_estimate", "triton", config="clevr6", batch=128, peak_bytes=1 << 30, epoch=9))
    rows += [_row("train", "cuda", "error", config="clevr6", batch=128, reason="boom")] * errors
    path.write_text(json.dumps({"rows": rows}))


@pytest.fixture
def passing(tmp_path) -> pathlib.Path:
    _junit(tmp_path / "gpu_tests.xml", passed=5, skipped=2)
    _kernels_json(tmp_path / "device_kernels.json", [_kernel()])
    _report(tmp_path / "cuda.json")
    return tmp_path


def test_junit_counts_failures_errors_and_skips(tmp_path):
    _junit(tmp_path / "t.xml", passed=3, failed=2, skipped=1)
    assert headline.junit_counts(tmp_path / "t.xml") == {"tests": 6, "passed": 3, "failed": 2, "skipped": 1}


def test_geomean_and_speedups():
    assert headline.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert headline.geomean([]) is None
    rows = json.loads(json.dumps([_row("op", p, op="a", config="c", batch=1, mode="fwd", median_s=s)
                                  for p, s in (("torch", 0.3), ("triton", 0.1))]))
    assert headline.op_speedups(rows, "torch") == [pytest.approx(3.0)]
    assert headline.op_speedups(rows, "torch.compile") == []


def test_verdict_passes_with_the_headline_ratios_on_the_last_line(passing):
    passed, lines = headline.headline(passing, tests_exit=0)
    assert passed
    last = lines[-1]
    assert last.startswith("GPU CHECK PASS")
    assert "tests 5 passed, 0 failed, 2 skipped" in last
    assert "kernels 1, 0 spilling, max 120 regs" in last
    assert "fused/eager x6.00" in last  # sqrt(4 * 9)
    assert "fused/compile x2.45" in last  # sqrt(2 * 3)
    assert "train clevr6 B=128 x3.00 vs eager" in last
    assert "memory x1.50 of estimate" in last  # 1.5 GiB measured, 1 GiB estimated
    assert any("tetro x2.00" in line for line in lines)


@pytest.mark.parametrize("breakage", ["failed test", "timed out", "spill", "report error", "no report", "no tests"])
def test_verdict_fails_on_anything_wrong(passing, breakage):
    tests_exit = 0
    if breakage == "failed test":
        _junit(passing / "gpu_tests.xml", passed=5, failed=1)
    elif breakage == "timed out":
        tests_exit = 124
    elif breakage == "spill":
        _kernels_json(passing / "device_kernels.json", [_kernel(), _kernel(local_bytes=64)])
    elif breakage == "report error":
        _report(passing / "cuda.json", errors=1)
    elif breakage == "no report":
        (passing / "cuda.json").unlink()
    elif breakage == "no tests":
        (passing / "gpu_tests.xml").unlink()
    passed, lines = headline.headline(passing, tests_exit=tests_exit)
    assert not passed and lines[-1].startswith("GPU CHECK FAIL")


def test_headline_command_exit_status(passing):
    assert headline.main([str(passing), "--tests-exit", "0"]) == 0
    assert headline.main([str(passing), "--tests-exit", "1"]) == 1


def test_device_kernel_report_compares_with_the_prediction(tmp_path):
    compile_json = {"variants": [
        {"kernel": "_composite_backward_kernel", "results": {"90": {"registers": 106}, "80": {"registers": 99}}},
        {"kernel": "_composite_backward_kernel", "results": {"90": {"registers": 118}}},
        {"kernel": "_render_loss_kernel", "results": {"80": {"registers": 64}}}]}
    (tmp_path / "compile.json").write_text(json.dumps(compile_json))
    predicted = device_kernels.predicted_registers(tmp_path / "compile.json", 90)
    assert predicted == {"_composite_backward_kernel": 118}
    kernels = [_kernel(120), _kernel(96, local_bytes=32, batch=37)]
    summary = device_kernels.summary(kernels, [{"seconds": 2.0}, {"seconds": 5.0}], ["op x failed"], 128)
    assert summary["spilling"] == ["_composite_backward_kernel"] and summary["errors"] == 1
    assert summary["max_registers"]["registers"] == 120 and summary["partial_batch_variants"] == 1
    assert summary["slowest_first_call"] == {"seconds": 5.0}
    meta = {"device": "H200", "arch": 90, "triton": "3.6.0", "torch": "2.11", "seconds": 60.0, "summary": summary,
            "errors": ["op x failed"]}
    device_kernels.write_markdown(tmp_path / "k.md", kernels, meta, predicted)
    text = (tmp_path / "k.md").read_text()
    assert "| `_composite_backward_kernel` | 120 | 118 |" in text
    assert "| **32** |" in text and "op x failed" in text


def test_the_script_is_valid_bash_and_names_test_files_that_exist():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    named = re.findall(r"tests/test_\w+\.py", SCRIPT.read_text())
    assert len(named) >= 8
    missing = [n for n in named if not (ROOT / n).is_file()]
    assert not missing, f"benchmarks/gpu_check.sh names test files that do not exist: {missing}"

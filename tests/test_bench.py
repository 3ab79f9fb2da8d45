"""`dtifast bench` at tiny sizes: the files it writes, its baselines, and the measuring helpers.

No timing assertions: figures depend on the machine. What is checked is that the report runs end to
end, says where each figure comes from, keeps the reference baseline, reports providers that cannot
run instead of dropping them, and that its memory probe and max-batch estimate compute what they claim.
"""
from __future__ import annotations

import json
import time

import pytest
import torch

from dtifast import ops
from dtifast.bench import run_report
from dtifast.bench.machine import Timing, cpu_peak_probe_available, peak_memory, time_call, time_interleaved
from dtifast.bench.ops import (COMPILE, OP_CASES, Skip, make_inputs, make_runner, op_function, shapes_for)
from dtifast.bench.train_step import TrainStep, max_batch_from_growth
from dtifast.cli import main as cli_main

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = cli_main(["bench", "--device", "cpu", "--out", str(out), "--op-configs", "tetro", "--op-batch", "1",
                     "--ops", "softclip", "render_loss", "--configs", "tetro", "--batches", "1",
                     "--max-batch-configs", "tetro", "--repeats", "1", "--no-compile", "--quiet",
                     "--sections", "ops", "train", "max-batch"])
    return code, out


def test_cli_writes_json_markdown_and_plots(report):
    code, out = report
    assert code == 0
    data = json.loads((out / "cpu.json").read_text())
    assert {r["section"] for r in data["rows"]} == {"op", "train", "max_batch"}
    for row in data["rows"]:
        assert row["machine"]["torch"] == torch.__version__ and row["machine"]["cpu_count"] >= 1
        assert row["status"] in ("ok", "skipped", "oom", "error")
        assert row["status"] != "error", row.get("reason")
        if row["status"] != "ok":
            assert row["reason"]
    for name in ("cpu_ops.png", "cpu_train.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_keeps_the_reference_baseline(report):
    _, out = report
    rows = json.loads((out / "cpu.json").read_text())["rows"]
    ref_ops = {(r["op"], r["mode"]) for r in rows if r["section"] == "op" and r["provider"] == "torch"
               and r["status"] == "ok"}
    assert ref_ops == {("softclip", "fwd"), ("softclip", "fwd+bwd"), ("render_loss", "fwd"),
                       ("render_loss", "fwd+bwd")}
    train = [r for r in rows if r["section"] == "train" and r["provider"] == "torch"]
    assert len(train) == 1 and train[0]["status"] == "ok"
    assert train[0]["images_per_s"] > 0 and train[0]["median_s"] > 0
    op = next(r for r in rows if r["section"] == "op" and r["provider"] == "torch")
    assert op["gbps"] == pytest.approx(op["bytes"] / op["median_s"] / 1e9)
    md = (out / "cpu.md").read_text()
    assert "| op | mode | `torch` |" in md
    assert "| tetro | 1 | `torch` |" in md
    assert "Command: `" in md and "Machine: CPU" in md


def test_report_lists_backends_that_cannot_run(report):
    _, out = report
    rows = json.loads((out / "cpu.json").read_text())["rows"]
    cuda = [r for r in rows if r["provider"] == "cuda"]
    assert cuda and all(r["status"] == "skipped" and "CUDA" in r["reason"] for r in cuda)
    # The test session interprets Triton on the CPU: never a timing.
    triton = [r for r in rows if r["provider"] == "triton"]
    assert triton and all(r["status"] == "skipped" for r in triton)
    assert "Not run:" in (out / "cpu.md").read_text()


def test_shapes_follow_upstream_configs():
    s = shapes_for("clevr6", 4)
    assert (s.B, s.L, s.K, s.M, s.h, s.w, s.H, s.W, s.n_iter) == (4, 6, 7, 1, 40, 40, 128, 128, 3)
    t = shapes_for("tetro", 2)
    assert (t.L, t.K, t.M, t.h, t.H, t.n_iter) == (3, 19, 0, 24, 35, 1)
    assert not shapes_for("gtsrb8", 2).multi_object
    with pytest.raises(ValueError, match="positive int"):
        shapes_for("tetro", 0)


def test_every_case_runs_on_the_reference():
    # Tiny shapes: each case's inputs fit the reference op's signature, forward and backward.
    for name in ("tetro", "gtsrb8"):
        shapes = shapes_for(name, 1)
        for case in OP_CASES.values():
            if not case.applies(shapes):
                continue
            for mode in case.modes:
                args = make_inputs(case, shapes, CPU, mode)
                run, moved = make_runner(case, op_function(case.op, "torch", CPU), args, mode)
                result = run()
                assert moved > 0
                if mode == "fwd+bwd":
                    assert all(torch.isfinite(g).all() for g in result)


def test_bytes_moved_by_softclip():
    shapes = shapes_for("tetro", 1)
    case = OP_CASES["softclip"]
    n = shapes.L * shapes.K * shapes.B * 5 * shapes.h * shapes.w * 4
    _, fwd = make_runner(case, ops.reference.softclip, make_inputs(case, shapes, CPU, "fwd"), "fwd")
    assert fwd == 2 * n  # read x, write y
    _, both = make_runner(case, ops.reference.softclip, make_inputs(case, shapes, CPU, "fwd+bwd"), "fwd+bwd")
    assert both == 5 * n  # forward, then read dy and x, write dx


def test_compile_baseline_matches_reference():
    x = torch.linspace(-1, 2, 64).view(4, 16)
    fn = op_function("softclip", COMPILE, CPU)
    torch.testing.assert_close(fn(x, 0.01), ops.reference.softclip(x, 0.01))


def test_interpreted_triton_is_skipped(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(Skip, match="interpreter"):
        op_function("softclip", "triton", CPU)
    with pytest.raises(Skip, match="interpreter"):
        TrainStep("tetro", "triton", 1, CPU)


def test_train_step_rejects_unknown_provider():
    with pytest.raises(ValueError, match="provider must be one of"):
        TrainStep("tetro", "numpy", 1, CPU)


def test_time_call_reports_quantiles():
    calls = []
    timing = time_call(lambda: calls.append(1), CPU, warmup=2, repeats=5)
    assert isinstance(timing, Timing) and len(calls) == 7
    assert timing.p20 <= timing.median <= timing.p80
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, CPU, repeats=0)


def test_time_call_samples_until_min_time():
    timing = time_call(lambda: time.sleep(0.002), CPU, warmup=0, repeats=2, min_time_s=0.03)
    assert 10 <= timing.repeats <= 16 and timing.median >= 0.002
    assert time_call(lambda: None, CPU, warmup=0, repeats=2, min_time_s=10.0, max_repeats=7).repeats == 7


def test_time_interleaved_calls_in_turn_and_rotates_the_first():
    calls = []
    timings = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                                "c": lambda: calls.append("c")}, CPU, warmup=1, repeats=3)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert set(timings) == {"a", "b", "c"} and all(t.repeats == 3 for t in timings.values())
    with pytest.raises(ValueError, match="empty"):
        time_interleaved({}, CPU)
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved({"a": lambda: None}, CPU, repeats=0)


def test_time_interleaved_samples_until_the_slowest_has_min_time():
    # The slow function sets the number of rounds (at most 8 of its >= 4 ms calls reach 30 ms; the fast one's
    # >= 1 ms calls would take up to 30); the fast one is timed as often, in the same rounds.
    timings = time_interleaved({"fast": lambda: time.sleep(0.001), "slow": lambda: time.sleep(0.004)}, CPU,
                               warmup=0, repeats=2, min_time_s=0.03)
    assert timings["fast"].repeats == timings["slow"].repeats
    assert 2 <= timings["fast"].repeats <= 8
    assert timings["fast"].median < timings["slow"].median


@pytest.mark.skipif(not cpu_peak_probe_available(), reason="needs Linux /proc/self/clear_refs")
def test_cpu_peak_probe_sees_an_allocation():
    n = 64 * 2**20 // 4
    memory = peak_memory(lambda: torch.ones(n).sum(), CPU)
    assert 48 * 2**20 < memory["growth_bytes"] < 256 * 2**20


def test_max_batch_from_growth_on_a_line():
    mib = 2 ** 20
    points = [(2, 100 * mib + 2 * 3 * mib), (8, 100 * mib + 8 * 3 * mib)]
    est = max_batch_from_growth(points, 400 * mib)
    assert est["per_image_bytes"] == pytest.approx(3 * mib)
    assert est["base_bytes"] == pytest.approx(100 * mib)
    assert est["max_batch_estimate"] == 100
    with pytest.raises(ValueError, match="two or more"):
        max_batch_from_growth([(4, mib), (4, 2 * mib)], mib)


def test_run_report_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="sections"):
        run_report(CPU, tmp_path, ["everything"])
    with pytest.raises(ValueError, match="repeats"):
        run_report(CPU, tmp_path, ["ops"], repeats=-1)
    with pytest.raises(ValueError, match="memory_budget_gib"):
        run_report(CPU, tmp_path, ["ops"], memory_budget_gib=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_request_without_gpu_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no CUDA device"):
        run_report(torch.device("cuda"), tmp_path, ["ops"])


def test_time_budget_reports_the_cases_it_cut(tmp_path):
    result = run_report(
        CPU, tmp_path, ["ops", "train"], op_configs=["tetro"], op_batch=1, train_configs=["tetro"],
        train_batches=[1], compile_models=False, compile_ops=False, repeats=1, time_budget_s=1e-9, quiet=True)
    assert result["rows"] and all(r["status"] == "skipped" and "time budget" in r["reason"] for r in result["rows"])
    assert (tmp_path / "cpu.md").exists() and (tmp_path / "cpu.json").exists()


def test_run_report_restores_threads_and_checks(tmp_path):
    from dtifast.ops import value_checks_enabled
    threads, check = torch.get_num_threads(), value_checks_enabled()
    run_report(CPU, tmp_path, ["ops"], op_configs=["tetro"], op_batch=1, ops_filter=["softclip"],
               compile_ops=False, repeats=1, threads=1, value_checks=not check, quiet=True)
    assert (torch.get_num_threads(), value_checks_enabled()) == (threads, check)
    rows = json.loads((tmp_path / "cpu.json").read_text())["rows"]
    assert rows[0]["machine"]["torch_threads"] == 1 and rows[0]["machine"]["value_checks"] == (not check)

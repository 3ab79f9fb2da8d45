"""The training-step memory estimate (dtifast.bench.memory): the tracker on allocations of known size,
saved activations, custom-op workspace, and the model estimate and batch search on a small config."""
import contextlib
import json
import os

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from dtifast.bench.memory import (WORKSPACE_SEPARATOR, FakeTrainingStep, MemoryTracker, estimate_step_memory,
                                  largest_batch)

MiB = 2 ** 20
SMALL = "tetro-tiny"  # 35x35 images, 3 layers, mini ResNet-20: a step traces in a fraction of a second


def _bytes(n: int) -> torch.Tensor:
    return torch.empty(n, dtype=torch.uint8)


@pytest.mark.parametrize("fake", [False, True], ids=["real", "fake"])
def test_tracker_peak_of_known_allocations(fake):
    with FakeTensorMode() if fake else contextlib.nullcontext(), MemoryTracker() as tracker:
        with tracker.phase("one"):
            a = _bytes(MiB)
            b = _bytes(2 * MiB)
        with tracker.phase("two"):
            del a
            c = _bytes(4 * MiB)
    assert tracker.peak_bytes == 6 * MiB
    assert tracker.peak_phase == "two"
    assert (tracker.phases["one"].start_bytes, tracker.phases["one"].peak_bytes, tracker.phases["one"].end_bytes) \
        == (0, 3 * MiB, 3 * MiB)
    assert (tracker.phases["two"].peak_bytes, tracker.phases["two"].end_bytes) == (6 * MiB, 6 * MiB)
    at_peak = tracker.live_at_peak()
    assert [r.nbytes for r in at_peak] == [4 * MiB, 2 * MiB]
    assert [r.origin for r in at_peak] == ["two", "one"]
    assert tracker.breakdown_at_peak() == {"two": 4 * MiB, "one": 2 * MiB}
    del b, c


def test_tracker_rounds_to_blocks_and_shares_storage_between_views():
    with MemoryTracker() as tracker:
        a = _bytes(1000)
        views = [a[:10], a.view(10, 100), a.view(100, 10)[::2]]
    assert tracker.peak_bytes == 1024  # 512-byte blocks, one storage however many views
    del a, views


def test_saved_activations_counted_until_backward():
    with MemoryTracker() as tracker:
        x = torch.rand(MiB // 4, requires_grad=True)          # 1 MiB of float32
        y = x.exp()                                         # exp saves its output for the backward
        loss = y.sum()
        del y
        # y's only reference left is autograd's: it is still live.
        assert tracker.current_bytes == 2 * MiB + 512
        loss.backward()
        del loss
        # The graph is gone (saved y with it); x and its gradient remain.
        assert tracker.current_bytes == 2 * MiB
    assert x.grad is not None
    assert tracker.peak_bytes >= 3 * MiB  # x, saved y and y's gradient at once in the backward


def test_index_backward_writes_its_zeros_in_place_as_on_plain_tensors():
    # Under a dispatch mode autograd's IndexBackward0 scatters the gradient into its zeros out of place
    # (a second x-sized buffer); a real step does it in place, and so must the trace.
    with MemoryTracker() as tracker:
        x = torch.rand(MiB // 4, requires_grad=True)                 # 1 MiB
        index = torch.arange(0, MiB // 4, 4)                         # 0.5 MiB of int64
        gathered = x[index]                                          # 0.25 MiB
        loss = gathered.sum()
        loss.backward()
    expected = torch.zeros_like(x)
    expected[index] = 1
    assert torch.equal(x.grad, expected)
    # x, index, the gathered values, the loss and its gradient, and one x-sized gradient buffer.
    assert tracker.peak_bytes == 2 * MiB + MiB // 2 + MiB // 4 + 2 * 512
    del gathered


@torch.library.custom_op("dtifast_test::workspace_op", mutates_args=())
def _workspace_op(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@torch.library.register_fake("dtifast_test::workspace_op")
def _(x):
    out = torch.empty_like(x)
    workspace = torch.empty(4 * x.numel(), dtype=x.dtype, device=x.device)  # what the launcher allocates
    del workspace
    return out


def test_custom_op_fake_kernel_workspace_counted():
    with FakeTensorMode():
        x = _bytes(MiB)
        with MemoryTracker() as tracker:
            tracker.track([x], "input")
            y = _workspace_op(x)
            assert tracker.current_bytes == 2 * MiB
    assert tracker.peak_bytes == 6 * MiB  # input + 4 MiB workspace + 1 MiB output
    ops = {r.op: r.nbytes for r in tracker.live_at_peak()}
    workspace = [op for op in ops if WORKSPACE_SEPARATOR in op]
    assert len(workspace) == 1 and workspace[0].startswith("dtifast_test.workspace_op.default") \
        and ops[workspace[0]] == 4 * MiB
    assert ops["dtifast_test.workspace_op.default"] == MiB  # the output is labelled as the op's
    del y


def test_tracker_records_one_region():
    tracker = MemoryTracker()
    with tracker:
        pass
    with pytest.raises(RuntimeError, match="one region"):
        with tracker:
            pass


@pytest.fixture(scope="module")
def small_step() -> FakeTrainingStep:
    return FakeTrainingStep(SMALL)


def test_estimate_covers_the_whole_step(small_step):
    before = os.environ.get("TRITON_INTERPRET")
    est = estimate_step_memory(SMALL, 4)
    assert os.environ.get("TRITON_INTERPRET") == before
    assert set(est.phases) == {"forward", "backward", "optimizer"}
    assert est.peak_bytes == max(p.peak_bytes for p in est.phases.values())
    params = est.resident_bytes["parameters"]
    assert params > 0 and est.resident_bytes["input batch"] >= 4 * 3 * 35 * 35 * 4
    assert est.resident_bytes["optimizer state"] >= 2 * params  # Adam's two moments, allocated before the step
    assert est.phases["forward"].start_bytes == sum(est.resident_bytes.values())
    # Activations saved in the forward are live when the backward starts, gradients after it.
    assert est.phases["backward"].start_bytes > est.phases["forward"].start_bytes
    assert est.phases["optimizer"].start_bytes >= est.phases["forward"].start_bytes + params
    assert est.top and [t.nbytes for t in est.top] == sorted((t.nbytes for t in est.top), reverse=True)
    assert any(t.op.startswith("dtifast.") for t in small_step.estimate(4, top=1000).top)  # the fused ops ran


def test_estimate_grows_with_batch(small_step):
    peaks = [small_step.estimate(b, top=0).peak_bytes for b in (2, 8, 32)]
    assert peaks[0] < peaks[1] < peaks[2]


def test_largest_batch_respects_budget(small_step):
    low, high = small_step.estimate(8, top=0).peak_bytes, small_step.estimate(16, top=0).peak_bytes
    budget, step = (low + high) // 2, 2
    search = small_step.largest_batch(budget, step=step)
    assert search.max_batch % step == 0 and 8 <= search.max_batch <= 16
    assert search.first_failing == search.max_batch + step
    peaks = dict(search.trials)  # every batch the search traced, with its estimated peak
    assert peaks[search.max_batch] == search.peak_bytes <= budget < peaks[search.max_batch + step]
    assert small_step.estimate(search.max_batch, top=0).peak_bytes == search.peak_bytes  # deterministic


def test_largest_batch_cap_and_nothing_fits(small_step):
    capped = small_step.largest_batch(2 ** 40, cap=64)
    assert (capped.max_batch, capped.first_failing) == (64, None)
    tiny = small_step.largest_batch(1024)
    assert (tiny.max_batch, tiny.first_failing, tiny.peak_bytes) == (0, 1, None)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch"):
        estimate_step_memory(SMALL, 0)
    with pytest.raises(TypeError, match="dtype"):
        FakeTrainingStep(SMALL, dtype=torch.int64)
    with pytest.raises(TypeError, match="config"):
        FakeTrainingStep(3)
    if not torch.backends.cuda.is_built():
        with pytest.raises(ValueError, match="CPU-only"):
            FakeTrainingStep(SMALL, backend="cuda")
    with pytest.raises(ValueError, match="budget"):
        largest_batch(SMALL, -1)


def test_estimate_leaves_no_fake_tensors_to_real_runs(small_step):
    from dtifast.config import load_config
    from dtifast.model import build_model

    small_step.estimate(2, top=0)  # the ops cache device constants; a trace must not leave fake ones there
    model = build_model(load_config(SMALL), (35, 35), 3)
    model.set_epoch(100)
    loss = model(torch.rand(2, 3, 35, 35)).loss
    assert type(loss) is torch.Tensor and torch.isfinite(loss)


def test_bench_section_writes_the_labelled_table(tmp_path):
    from dtifast.cli import main as cli_main

    code = cli_main(["bench", "--device", "cpu", "--out", str(tmp_path), "--sections", "memory-estimate",
                     "--memory-configs", SMALL, "--memory-batch", "32", "--memory-budget-gib", "0.25", "--quiet"])
    assert code == 0
    rows = json.loads((tmp_path / "cpu.json").read_text())["rows"]
    assert {(r["section"], r["provider"], r["status"]) for r in rows} == {
        ("memory_estimate", "triton", "ok"), ("memory_estimate", "torch", "ok")}
    for r in rows:
        assert r["peak_bytes"] == max(r["phase_peak_bytes"].values())
        assert 0 < r["max_batch"] < r["first_failing"] and r["budget_bytes"] == 2 ** 28
    fused, reference = sorted(rows, key=lambda r: r["provider"] != "triton")
    assert fused["peak_bytes"] < reference["peak_bytes"]  # upstream's eager math materialises every candidate
    table = (tmp_path / "cpu.md").read_text()
    assert "estimate (fake CUDA tensors, not measured)" in table
    assert f"| {SMALL} | `triton` | 32 | {fused['peak_bytes'] / 2**20:.0f} |" in table


def test_device_constants_first_built_in_a_trace_serve_later_traces_and_real_runs():
    from dtifast.ops.geometry import _tps_weights_cpu64, tps_weights

    _tps_weights_cpu64.cache_clear()  # the TPS solve must now happen inside the first trace
    shapes = []
    for _ in range(2):  # two traces, each in its own fake mode, as the bench's triton then torch estimates
        with FakeTensorMode():
            shapes.append(tps_weights(4, (6, 5), torch.float32, torch.device("cpu")).shape)
    real = tps_weights(4, (6, 5), torch.float32, torch.device("cpu"))
    assert type(real) is torch.Tensor and shapes == [real.shape] * 2 == [(30, 16)] * 2
    assert torch.allclose(real.sum(1), torch.ones(30))  # interpolation weights reproduce constants


def test_tps_config_estimates_on_both_backends_in_turn():
    for backend in ("triton", "torch"):
        assert estimate_step_memory("gtsrb8", 2, backend=backend).peak_bytes > 0

"""`dtifast.bench.step_profile`: a training step's time split between encoder, ops, optimizer and the rest.

No timing assertions on the kernels: known delays are put into one part at a time (a sleep in the encoder's
forward, in its backward, in an op) and must land in that part and no other.
"""
from __future__ import annotations

import time

import pytest
import torch

from dtifast import ops
from dtifast.bench.ops import COMPILE
from dtifast.bench.step_profile import PARTS, profile_step
from dtifast.bench.train_step import TrainStep

CPU = torch.device("cpu")
DELAY_S = 0.2  # 20 times a batch-1 GTSRB step: load on a shared box can neither fake nor hide it


class _SlowBackward(torch.autograd.Function):
    """Identity whose backward sleeps: a known cost in the backward of whatever part calls it."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        time.sleep(DELAY_S)
        return grad


@pytest.fixture
def step():
    return TrainStep("gtsrb8", "cpu", 1, CPU)


def test_parts_add_up_to_the_step(step):
    parts = profile_step(step, n_steps=1)
    assert set(parts) == {"step", *PARTS}
    assert parts["step"] > 0
    assert sum(parts[p] for p in PARTS) == pytest.approx(parts["step"])
    for part in ("encoder", "ops", "optimizer"):
        assert parts[part] > 0, part


@pytest.mark.parametrize("provider", ["torch", "cpu"])
def test_a_delay_in_the_encoder_forward_is_the_encoders(provider):
    step = TrainStep("gtsrb8", provider, 1, CPU)
    base = profile_step(step, n_steps=1)
    inner = step.model.encoder.forward

    def slow_forward(x):
        time.sleep(DELAY_S)
        return inner(x)

    step.model.encoder.forward = slow_forward
    parts = profile_step(step, n_steps=1, warmup=0)
    assert parts["encoder"] >= DELAY_S
    assert parts["ops"] < base["ops"] + DELAY_S / 2 and parts["other"] < base["other"] + DELAY_S / 2
    # The model's own forward is put back after profiling, not the profiler's labelled one.
    assert step.model.encoder.forward is slow_forward


def test_a_delay_in_the_encoder_backward_is_found_by_sequence_number(step):
    base = profile_step(step, n_steps=1)
    inner = step.model.encoder.forward
    step.model.encoder.forward = lambda x: _SlowBackward.apply(inner(x))
    parts = profile_step(step, n_steps=1, warmup=0)
    assert parts["encoder"] >= DELAY_S
    assert parts["other"] < base["other"] + DELAY_S / 2


def test_a_delay_in_an_op_is_the_ops(step, monkeypatch):
    base = profile_step(step, n_steps=1)
    original = ops.candidate_distances

    def slow_backward_op(x, layers, masks, backgrounds=None, *, backend=None):
        return _SlowBackward.apply(original(x, layers, masks, backgrounds, backend=backend))

    monkeypatch.setattr(ops, "candidate_distances", slow_backward_op)
    parts = profile_step(step, n_steps=1, warmup=0)
    assert parts["ops"] >= DELAY_S
    assert parts["encoder"] < base["encoder"] + DELAY_S / 2 and parts["other"] < base["other"] + DELAY_S / 2
    assert ops.candidate_distances is slow_backward_op


def test_profiling_leaves_the_model_and_ops_as_they_were(step):
    before = {name: getattr(ops, name) for name in ops.registered_ops()}
    profile_step(step, n_steps=1)
    assert {name: getattr(ops, name) for name in ops.registered_ops()} == before
    assert "forward" not in step.model.encoder.__dict__


def test_bad_arguments_are_refused(step):
    with pytest.raises(ValueError, match="n_steps"):
        profile_step(step, n_steps=0)
    step.provider = COMPILE
    with pytest.raises(ValueError, match="torch.compile"):
        profile_step(step)

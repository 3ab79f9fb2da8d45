"""Trainer: bit-exact resume, NaN guard, config/dataset mismatch, schedule pieces, sampler, amp/compile.

Everything runs a few steps of `tetro-tiny` at batch 4 on a 16-image generated Tetrominoes set.
"""
import csv
import math

import pytest
import torch

from dtifast import checkpoint as ckpt
from dtifast.config import ConfigError, load_config
from dtifast.evaluate import evaluate_run
from dtifast.distributed import EpochSampler
from dtifast.optim import build_optimizer, build_scheduler, lr_scale_factor
from dtifast.runs import DatasetMismatchError, save_run_from_model
from dtifast.sweep import parse_k_range
from dtifast.train import Trainer, TrainingDivergedError

N_IMAGES = 16
BATCH = 4  # 4 batches per epoch


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from dtifast.data import make_dataset
    root = tmp_path_factory.mktemp("data")
    make_dataset("tetrominoes", root / "tetrominoes", n=N_IMAGES, seed=0)
    return root


def tiny_cfg(*overrides):
    # Sprites frozen for the first epoch (4 iterations), reassignment checks every 3 iterations,
    # validation every 4: a 6-iteration run crosses each of these once.
    return load_config("tetro-tiny", [
        f"training.batch_size={BATCH}", "training.n_iterations=6", "training.train_stat_interval=2",
        "training.val_stat_interval=4", "training.check_cluster_interval=3", "training.checkpoint_interval=2",
        "training.n_workers=0", "training.tensorboard=false", "model.freeze_sprite=1", *overrides])


def run_until(trainer, stop_at=None):
    try:
        return trainer.run(stop_at=stop_at)
    finally:
        trainer.close()


def csv_rows(path, drop=("time_per_img",)):
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def test_resume_is_bit_exact(tmp_path, data_root):
    cfg = tiny_cfg()
    straight = Trainer(cfg, tmp_path / "straight", data_root=data_root, device="cpu", progress=False)
    summary = run_until(straight)
    assert summary["iteration"] == 6 and summary["finished"]
    # Same run, paused mid-epoch at iteration 3 (before the sprites unfreeze and the first
    # reassignment check), then continued by a fresh Trainer that only has the run folder.
    first = Trainer(cfg, tmp_path / "sliced", data_root=data_root, device="cpu", progress=False)
    assert run_until(first, stop_at=3)["finished"] is False
    del first
    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint must restore it
    resumed = Trainer(None, tmp_path / "sliced", data_root=data_root, device="cpu", progress=False, resume=True)
    assert (resumed.epoch, resumed.batch, resumed.iteration) == (0, 3, 3)
    run_until(resumed)

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert int(b["cur_epoch"]) == 1 and not resumed.model.are_sprites_frozen
    opt_a, opt_b = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    for pid, st in opt_a["state"].items():
        for key, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(opt_b["state"][pid][key])), (pid, key)
    assert straight.scheduler.state_dict()["last_epoch"] == resumed.scheduler.state_dict()["last_epoch"]
    # The logs continue as if nothing happened.
    for name in ("train_metrics.csv", "val_metrics.csv"):
        assert csv_rows(tmp_path / "straight" / name) == csv_rows(tmp_path / "sliced" / name), name
    # And the saved checkpoints are the same.
    sa = ckpt.load_checkpoint(tmp_path / "straight")
    sb = ckpt.load_checkpoint(tmp_path / "sliced")
    assert sa["progress"] == sb["progress"] == {"epoch": 1, "batch": 2, "iteration": 6}
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_root):
    trainer = Trainer(tiny_cfg(), tmp_path / "run", data_root=data_root, device="cpu", progress=False)
    real_forward = trainer.model.forward

    def forward(x, *args, **kw):
        out = real_forward(x, *args, **kw)
        if trainer.iteration == 5:
            out.loss = out.loss * float("nan")
        return out

    trainer.forward_model = forward
    with pytest.raises(TrainingDivergedError, match=r"non-finite loss \(nan\) at iteration 5 .*"
                                                     r"last good checkpoint .* \(iteration 4\)"):
        run_until(trainer)
    state = ckpt.load_checkpoint(tmp_path / "run")
    assert state["progress"]["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_non_finite_weights_are_never_saved(tmp_path, data_root):
    trainer = Trainer(tiny_cfg(), tmp_path / "run", data_root=data_root, device="cpu", progress=False)
    run_until(trainer, stop_at=2)
    with torch.no_grad():
        trainer.model.prototype_params[0, 0, 0, 0] = float("inf")
    with pytest.raises(TrainingDivergedError, match="prototype_params"):
        trainer.save_checkpoint()
    assert torch.isfinite(ckpt.load_checkpoint(tmp_path / "run")["model"]["prototype_params"]).all()


def test_config_that_does_not_fit_the_data_fails_before_training(tmp_path, data_root):
    with pytest.raises(DatasetMismatchError, match="n_channels 1 does not match"):
        Trainer(tiny_cfg("dataset.n_channels=1"), tmp_path / "b", data_root=data_root, progress=False)
    with pytest.raises(DatasetMismatchError, match="sprite_size"):
        Trainer(tiny_cfg("model.sprite_size=[40, 40]"), tmp_path / "c", data_root=data_root, progress=False)
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    # A checkpoint trained on other data (here: other classes) is refused too, for training and evaluation.
    run_until(Trainer(tiny_cfg(), tmp_path / "d", data_root=data_root, device="cpu", progress=False), stop_at=1)
    state = ckpt.load_checkpoint(tmp_path / "d")
    state["meta"]["n_classes"] = 7
    ckpt.save_checkpoint(tmp_path / "d" / "checkpoint.pt", state)
    with pytest.raises(DatasetMismatchError, match="n_classes = 7"):
        Trainer(None, tmp_path / "d", data_root=data_root, progress=False, resume=True)
    state["meta"].update(n_classes=20, img_size=[64, 64])
    ckpt.save_checkpoint(tmp_path / "d" / "checkpoint.pt", state)
    with pytest.raises(DatasetMismatchError, match=r"img_size = \[64, 64\]"):
        evaluate_run(tmp_path / "d", data_root=data_root, device="cpu")


def test_resume_refuses_a_changed_model_and_a_reused_folder(tmp_path, data_root):
    run_until(Trainer(tiny_cfg(), tmp_path / "run", data_root=data_root, device="cpu", progress=False), stop_at=1)
    with pytest.raises(ConfigError, match="model.n_sprites"):
        Trainer(tiny_cfg("model.n_sprites=5"), tmp_path / "run", data_root=data_root, progress=False, resume=True)
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        Trainer(tiny_cfg(), tmp_path / "run", data_root=data_root, progress=False)
    # A longer schedule is a legal change on resume.
    longer = Trainer(tiny_cfg("training.n_iterations=7"), tmp_path / "run", data_root=data_root, device="cpu",
                     progress=False, resume=True)
    assert longer.total_iterations == 7
    longer.close()


def test_resume_from_a_model_only_run(tmp_path, data_root):
    # What `dtifast import-upstream` writes: weights and epoch, no optimizer state.
    cfg = tiny_cfg()
    first = Trainer(cfg, tmp_path / "a", data_root=data_root, device="cpu", progress=False)
    run_until(first, stop_at=4)  # one full epoch: the sprites unfreeze
    save_run_from_model(tmp_path / "b", cfg, first.model, epoch=1)
    warm = Trainer(None, tmp_path / "b", data_root=data_root, device="cpu", progress=False, resume=True)
    assert (warm.epoch, warm.batch, warm.iteration) == (1, 0, 4)
    assert warm.scheduler.last_epoch == 1 and not warm.model.are_sprites_frozen
    assert run_until(warm)["iteration"] == 6


def test_tensorboard_logs(tmp_path, data_root):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    trainer = Trainer(tiny_cfg("training.tensorboard=true"), tmp_path / "run", data_root=data_root, device="cpu",
                      progress=False)
    run_until(trainer, stop_at=4)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"train/loss", "lr/network", "val/ari_fg", "val/miou"} <= set(events.Tags()["scalars"])
    assert "sprites" in events.Tags()["images"]
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]


def test_amp_trains(tmp_path, data_root):
    trainer = Trainer(tiny_cfg("training.amp=bf16"), tmp_path / "run", data_root=data_root, device="cpu",
                      progress=False)
    before = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    summary = run_until(trainer, stop_at=1)
    assert math.isfinite(summary["loss"]) and summary["iteration"] == 1
    after = trainer.model.encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # bf16 lives only inside the encoder: weights and checkpoints stay float32.
    assert all(v.dtype == torch.float32 for v in ckpt.load_checkpoint(tmp_path / "run")["model"].values()
               if v.is_floating_point())


def test_compile_wraps_the_model(tmp_path, data_root):
    trainer = Trainer(tiny_cfg("training.compile=eager"), tmp_path / "run", data_root=data_root, device="cpu",
                      progress=False)
    assert isinstance(trainer.forward_model, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.forward_model._orig_mod is trainer.model
    trainer.close()


@pytest.mark.slow  # dynamo traces the whole model (~25 s); test_compile_wraps_the_model covers the wiring
def test_compile_trains(tmp_path, data_root):
    trainer = Trainer(tiny_cfg("training.compile=eager"), tmp_path / "run", data_root=data_root, device="cpu",
                      progress=False)
    summary = run_until(trainer, stop_at=2)
    assert math.isfinite(summary["loss"]) and summary["iteration"] == 2


def test_schedule_pieces():
    model = torch.nn.Module()
    model.a = torch.nn.Parameter(torch.zeros(2))
    model.b = torch.nn.Parameter(torch.zeros(3))
    model.cluster_parameters = lambda: [model.a]
    model.network_parameters = lambda: [model.b]
    opt = build_optimizer(model, {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999],
                                  "transformer": {"weight_decay": 1e-6}, "cluster": None}, lr_factor=2.0)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 1e-6]
    assert [g["lr"] for g in opt.param_groups] == [2e-3, 2e-3]
    assert opt.defaults["fused"] is True  # auto on the CPU
    assert not build_optimizer(model, {"name": "adam", "fused": False}).defaults["fused"]
    with pytest.raises(ConfigError, match="training.optimizer.fused: 'sgd' has no fused"):
        build_optimizer(model, {"name": "sgd", "fused": True})
    sched, update = build_scheduler(opt, {"name": "multi_step", "gamma": [1, 0.1], "milestones": [0.5],
                                          "update_range": "epoch"}, n_epochs=4, n_iterations=40)
    assert update == "epoch"
    lrs = []
    for _ in range(4):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    # Milestone 0.5 of 4 epochs = epoch 2; only the networks decay (gamma 1 for the sprites).
    assert lrs == [[2e-3, 2e-3], [2e-3, 2e-3], [2e-3, pytest.approx(2e-4)], [2e-3, pytest.approx(2e-4)]]
    # Two milestones compound per group, and a gamma above 1 raises that group's rate (tetro-tiny's sprites).
    opt = build_optimizer(model, {"name": "adam", "lr": 1e-3, "cluster": {"lr": 3e-3}})
    sched, _ = build_scheduler(opt, {"name": "multi_step", "gamma": [2, 0.3], "milestones": [0.4, 0.7]},
                               n_epochs=10, n_iterations=100)
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[3] == pytest.approx([3e-3, 1e-3]) and lrs[4] == pytest.approx([6e-3, 3e-4])
    assert lrs[6] == pytest.approx([6e-3, 3e-4]) and lrs[7] == pytest.approx([1.2e-2, 9e-5])
    with pytest.raises(ConfigError, match="gamma has 3 values"):
        build_scheduler(opt, {"name": "multi_step", "gamma": [1, 1, 1], "milestones": [1]}, 4, 40)
    with pytest.raises(ConfigError, match="scheduler.name"):
        build_scheduler(opt, {"name": "poly_lr"}, 4, 40)
    assert lr_scale_factor(256, 32, "linear") == 8 and lr_scale_factor(128, 32, "sqrt") == 2
    assert lr_scale_factor(256, None, "linear") == 1 and lr_scale_factor(256, 32, "none") == 1
    with pytest.raises(ConfigError, match="lr_scaling"):
        lr_scale_factor(2, 1, "cubic")


def test_epoch_sampler_shards_and_resumes():
    full = EpochSampler(10, seed=3, epoch=1).indices()
    assert sorted(full) == list(range(10))
    assert full != EpochSampler(10, seed=3, epoch=2).indices()  # a new permutation each epoch
    assert EpochSampler(10, seed=3, epoch=1, start=4).indices() == full[4:]
    shards = [EpochSampler(10, seed=3, epoch=1, rank=r, world_size=3).indices() for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # padded by wrapping, like DistributedSampler
    assert set(sum(shards, [])) == set(range(10))


def test_parse_k_range():
    assert parse_k_range("3:6") == [3, 4, 5, 6]
    assert parse_k_range("10:25:5") == [10, 15, 20, 25]
    assert parse_k_range("8,4,4") == [4, 8]
    for bad in ("6:3", "a:b", "0:2", "1:2:0"):
        with pytest.raises(ValueError, match="--k|K values"):
            parse_k_range(bad)

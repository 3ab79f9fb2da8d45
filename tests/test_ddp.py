"""DDP on gloo with 2 CPU processes: the ranks train the same weights, the main rank writes the run.

The workers are spawned with torch.multiprocessing (the environment torchrun would set is set by hand),
train 2 iterations of `tetro-tiny` at a global batch of 4 (2 per process), with a reassignment check
every iteration, and dump their final state for the parent to compare.
"""
import socket

import pytest
import torch
import torch.multiprocessing as mp

from dtifast import checkpoint as ckpt

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, run_dir, data_root, out_dir):
    import os

    import torch.distributed as dist

    from dtifast.config import load_config
    from dtifast.train import Trainer
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    cfg = load_config("tetro-tiny", [
        "training.batch_size=4", "training.n_iterations=2", "training.check_cluster_interval=1",
        "training.val_stat_interval=2", "training.train_stat_interval=1", "training.n_workers=0",
        "training.tensorboard=false", "model.freeze_sprite=0"])
    trainer = Trainer(cfg, run_dir, data_root=data_root, device="cpu", progress=False)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    trainer.close()
    torch.save({"initial": initial, "final": trainer.model.state_dict(), "batch_size": trainer.batch_size,
                "n_batches": trainer.n_batches}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_two_processes_stay_identical(tmp_path):
    from dtifast.data import make_dataset
    make_dataset("tetrominoes", tmp_path / "data" / "tetrominoes", n=8, seed=0)
    mp.spawn(_worker, args=(_free_port(), str(tmp_path / "run"), str(tmp_path / "data"), str(tmp_path)),
             nprocs=WORLD, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["batch_size"] == r1["batch_size"] == 2
    assert r0["n_batches"] == 2  # 8 images over 2 processes, 2 per batch
    changed = 0
    for k, v in r0["final"].items():
        assert torch.equal(v, r1["final"][k]), f"{k} differs between ranks"
        changed += not torch.equal(v, r0["initial"][k])
    assert changed > 0, "nothing trained"
    state = ckpt.load_checkpoint(tmp_path / "run")
    assert state["world_size"] == WORLD and state["progress"]["iteration"] == 2
    for k, v in r0["final"].items():
        assert torch.equal(state["model"][k], v), k
    assert (tmp_path / "run" / "train_metrics.csv").read_text().count("\n") == 3  # header + 2 rows, rank 0 only


def test_ddp_resume_needs_the_same_world_size(tmp_path):
    from dtifast.config import load_config
    from dtifast.data import make_dataset
    from dtifast.train import Trainer
    make_dataset("tetrominoes", tmp_path / "data" / "tetrominoes", n=8, seed=0)
    cfg = load_config("tetro-tiny", ["training.batch_size=4", "training.n_iterations=2", "training.n_workers=0",
                                     "training.tensorboard=false"])
    trainer = Trainer(cfg, tmp_path / "run", data_root=tmp_path / "data", device="cpu", progress=False)
    trainer.run(stop_at=1)
    trainer.close()
    state = ckpt.load_checkpoint(tmp_path / "run")
    state["world_size"] = 2
    ckpt.save_checkpoint(tmp_path / "run" / "checkpoint.pt", state)
    with pytest.raises(ckpt.CheckpointError, match="2 process"):
        Trainer(None, tmp_path / "run", data_root=tmp_path / "data", device="cpu", progress=False, resume=True)

"""The `dtifast` command line end to end on tiny generated data: train → eval → pictures → report,
resume, sweep-k, and one-line errors for bad input."""
import json
import shutil

import pytest
from PIL import Image

from dtifast.cli import EXIT_INPUT_ERROR, main

FAST = ["--set", "training.batch_size=4", "--set", "training.train_stat_interval=1",
        "--set", "training.val_stat_interval=2", "--set", "training.tensorboard=false", "--workers", "0",
        "--no-progress", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert main(["data", "make", "tetrominoes", "--out", str(root), "--n", "12", "--workers", "1",
                 "--no-progress"]) == 0
    assert len(list((root / "tetrominoes" / "images").glob("*.png"))) == 12
    return root


def train(out, data_root, *extra):
    return main(["train", "tetro-tiny", "--out", str(out), "--data-root", str(data_root), *FAST, *extra])


def test_train_eval_pictures_report(tmp_path, data_root, capsys):
    runs = [tmp_path / "seed1", tmp_path / "seed2"]
    for seed, run in zip((1, 2), runs):
        assert train(run, data_root, "--set", "training.n_iterations=2", "--seed", str(seed)) == 0
        assert (run / "checkpoint.pt").is_file() and (run / "config.yml").is_file()
        assert (run / "train_metrics.csv").read_text().count("\n") == 3
        assert main(["eval", str(run), "--data-root", str(data_root), "--n-images", "8", "--device", "cpu"]) == 0
        res = json.loads((run / "eval.json").read_text())
        assert res["n_images"] == 8 and res["iteration"] == 2
        for key in ("ari", "ari_fg", "macc", "miou"):
            assert -1 <= res[key] <= 1, key
        assert len(res["iou_per_class"]) == 20  # Tetrominoes: 19 shapes + background
    capsys.readouterr()

    assert main(["pictures", str(runs[0]), "--data-root", str(data_root), "--n-images", "2"]) == 0
    for name in ("sprites", "decomposition", "curves"):
        img = Image.open(runs[0] / "pictures" / f"{name}.png")
        assert img.width > 50 and img.height > 50, name

    assert main(["report", *map(str, runs), "--json", str(tmp_path / "report.json")]) == 0
    text = capsys.readouterr().out
    assert "mean ± std (2 runs)" in text and "ari_fg" in text and "no outlier" in text
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["runs"] == [str(r) for r in runs] and rep["outlier"] is None


def test_resume_and_stop_at(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    assert train(run, data_root, "--set", "training.n_iterations=3", "--stop-at", "1") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["iteration"] == 1
    # Without a config: the checkpoint's config is used.
    assert main(["train", "--resume", "--out", str(run), "--data-root", str(data_root), "--no-progress",
                 "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["iteration"] == 3 and summary["finished"] is True


def test_sweep_k(tmp_path, data_root, capsys):
    assert main(["sweep-k", "tetro-tiny", "--k", "2:4", "--out", str(tmp_path / "sweep"), "--data-root",
                 str(data_root), *FAST, "--set", "training.n_iterations=1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["k"] == [2, 3, 4] and len(out["loss"]) == 3 and out["elbow"] in (2, 3, 4)
    assert (tmp_path / "sweep" / "sweep_k.png").is_file()
    lines = (tmp_path / "sweep" / "sweep_k.csv").read_text().splitlines()
    assert lines[0] == "k,loss,run,elbow" and len(lines) == 4
    assert sum(int(line.split(",")[-1]) for line in lines[1:]) == 1


def test_errors_are_one_line(tmp_path, data_root, capsys):
    def err(argv):
        assert main(argv) == EXIT_INPUT_ERROR
        return capsys.readouterr().err

    assert "did you mean model.n_sprites" in err(["train", "tetro-tiny", "--out", str(tmp_path / "a"),
                                                  "--set", "model.n_sprite=3"])
    assert "give a CONFIG" in err(["train", "--out", str(tmp_path / "a")])
    assert "neither a file nor a bundled config" in err(["train", "nope.yml", "--out", str(tmp_path / "a")])
    assert "does not exist" in err(["eval", str(tmp_path / "missing")])
    assert "run `dtifast eval" in err(["report", str(tmp_path)])
    assert "n_channels 1 does not match" in err(
        ["train", "tetro-tiny", "--out", str(tmp_path / "b"), "--data-root", str(data_root),
         "--set", "dataset.n_channels=1", "--no-progress"])
    assert "--k must look like" in err(["sweep-k", "tetro-tiny", "--k", "9:3", "--out", str(tmp_path / "c")])


def test_reusing_a_run_folder_needs_resume(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    assert train(run, data_root, "--set", "training.n_iterations=1") == 0
    capsys.readouterr()
    assert train(run, data_root, "--set", "training.n_iterations=1") == EXIT_INPUT_ERROR
    assert "already holds a checkpoint" in capsys.readouterr().err
    shutil.rmtree(run)


def test_demo_small(tmp_path, capsys):
    from dtifast.demo import main as demo_main
    # The demo's code path at toy size: 320 generated images (the evaluation set), 2 iterations.
    assert demo_main(["--out", str(tmp_path / "demo"), "--n-images", "320", "--set", "training.n_iterations=2",
                      "--set", "training.tensorboard=false"]) == 0
    res = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert res["iterations"] == 2 and set(res["seconds"]) == {"data", "train", "eval", "pictures"}
    assert 0 <= res["ari_fg"] <= 1 and "ARI-FG" in capsys.readouterr().out
    for path in res["pictures"].values():
        assert Image.open(path).width > 50

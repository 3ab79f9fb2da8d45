"""Datasets and loaders: splits, targets, caches, image folders, errors that name the file, the CLI."""
import numpy as np
import pytest
import torch
from PIL import Image

from dtifast.data import (FolderDataset, MultiObjectDataset, build_dataset, make_dataset, make_loader, preview,
                          split_indices)
from dtifast.data.cli import main as data_main
from dtifast.data.io import read_image, read_label_map


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_dataset("tetrominoes", root, 400, seed=0, workers=1, progress=False)
    make_dataset("multi-dsprites", root, 8, seed=0, workers=1, progress=False)
    return root


def test_split_indices_match_upstream():
    # upstream: np.random.seed(42); np.random.choice(range(N), 100, replace=False)
    np.random.seed(42)
    want = np.random.choice(range(60000), 100, replace=False)
    np.testing.assert_array_equal(split_indices(60000, "val"), want)
    assert len(split_indices(60000, "eval")) == 320 and split_indices(60000, "eval")[-1] == 319
    assert len(split_indices(60000, "train")) == 60000
    assert len(split_indices(50, "val")) == 50 and len(split_indices(50, "eval")) == 50
    with pytest.raises(ValueError, match="split"):
        split_indices(10, "test")


@pytest.mark.parametrize("cache", ["auto", "memory", "none"])
def test_multi_object_round_trip(root, cache):
    folder = root / "tetrominoes"
    sizes = {"train": 400, "val": 100, "eval": 320}
    for split, n in sizes.items():
        ds = MultiObjectDataset(root, "tetrominoes", split, target="both", cache=cache)
        assert len(ds) == n and ds.img_size == (35, 35) and ds.n_channels == 3 and ds.n_classes == 20
        assert ds.name == "tetrominoes" and ds.multi_object
        for i in (0, n - 1):
            j = int(split_indices(400, split)[i])
            x, y = ds[i]
            assert x.dtype == torch.float32 and x.shape == (3, 35, 35) and 0 <= x.min() and x.max() <= 1
            img = read_image(folder / "images" / f"{j}.png")
            torch.testing.assert_close(x, torch.from_numpy(img).permute(2, 0, 1).float() / 255)
            assert y["semantic"].dtype == torch.long and y["semantic"].shape == (35, 35)
            np.testing.assert_array_equal(y["semantic"].numpy(), read_label_map(folder / "sem_masks" / f"{j}.png"))
            np.testing.assert_array_equal(y["instance"].numpy(), read_label_map(folder / "masks" / f"{j}.png"))
    sem = MultiObjectDataset(root, "tetrominoes", "eval", target="semantic")[3][1]
    inst = MultiObjectDataset(root, "tetrominoes", "eval", target="instance")[3][1]
    assert sem.shape == inst.shape == (35, 35) and sem.max() > 3 >= inst.max()


def test_multi_object_resize_and_npy_cache(root):
    ds = MultiObjectDataset(root, "dsprites_gray", "train", target="instance", img_size=32)
    x, y = ds[0]
    assert ds.img_size == (32, 32) and x.shape == (3, 32, 32) and y.shape == (32, 32) and ds.n_classes == 4
    assert (root / "dsprites_gray" / ".dtifast_cache" / "image_32x32.npy").is_file()
    again = MultiObjectDataset(root, "dsprites_gray", "train", target="instance", img_size=32)
    assert isinstance(again._arrays["image"], np.memmap)
    torch.testing.assert_close(again[5][0], ds[5][0])
    # values stay ids under nearest resizing
    assert set(torch.unique(y).tolist()) <= set(range(5))


def test_build_dataset_and_loader(root):
    ds = build_dataset({"name": "tetrominoes"}, "train", root)
    assert len(ds) == 400 and ds.n_classes == 20
    val = build_dataset({"name": "tetrominoes"}, "val", root, target="both")
    assert len(val) == 100 and set(val[0][1]) == {"semantic", "instance"}
    loader = make_loader(ds, batch_size=64, shuffle=True, workers=0, drop_last=True, seed=1)
    batches = list(loader)
    assert len(batches) == 6 and batches[0][0].shape == (64, 3, 35, 35) and batches[0][1].shape == (64, 35, 35)
    again = list(make_loader(ds, batch_size=64, shuffle=True, workers=0, drop_last=True, seed=1))
    torch.testing.assert_close(batches[2][0], again[2][0])
    seen = torch.cat([b[0] for b in make_loader(ds, 100, shuffle=False, workers=2)])
    torch.testing.assert_close(seen[17], ds[17][0])
    # the batched path (get_batch) gives what per-item reads give, cached or not
    for cache in ("auto", "none"):
        both = MultiObjectDataset(root, "tetrominoes", "val", target="both", cache=cache)
        x, y = next(iter(make_loader(both, 7, shuffle=False, workers=0)))
        torch.testing.assert_close(x, torch.stack([both[i][0] for i in range(7)]))
        torch.testing.assert_close(y["instance"], torch.stack([both[i][1]["instance"] for i in range(7)]))
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        build_dataset({"name": "mnist"}, "train", root)
    with pytest.raises(ValueError, match="tag"):
        build_dataset({"name": "instagram"}, "train", root)


def _write_images(folder, names, size=(20, 30), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / n)


def test_folder_dataset_layouts(tmp_path):
    # class sub-folders with GTSRB-like names and a class map keeping two of three classes
    gt = tmp_path / "GTSRB" / "train"
    for c in ("00003", "00007", "00004"):
        _write_images(gt / c, [f"{c}_{i}.ppm" for i in range(3)])
    ds = build_dataset({"name": "gtsrb8"}, "train", tmp_path)
    assert len(ds) == 6 and ds.n_classes == 8 and ds.img_size == (28, 28) and not ds.multi_object
    assert sorted({ds[i][1] for i in range(6)}) == [0, 1]
    x, y = next(iter(make_loader(ds, 6, shuffle=False, workers=0)))
    assert y.tolist() == [ds[i][1] for i in range(6)] and x.shape == (6, 3, 28, 28)
    assert ds[0][0].shape == (3, 28, 28)
    # plain folder, labels file
    plain = tmp_path / "plain"
    _write_images(plain, [f"im{i}.jpg" for i in range(5)])
    ds = FolderDataset(plain, 16)
    assert len(ds) == 5 and ds[0][1] == -1 and ds.n_classes == 0 and ds[4][0].shape == (3, 16, 16)
    (tmp_path / "labels.csv").write_text("file,label\n" + "".join(f"im{i}.jpg,{i % 2}\n" for i in range(5)))
    ds = FolderDataset(plain, (8, 12), labels=tmp_path / "labels.csv", cache="none")
    assert [ds[i][1] for i in range(5)] == [0, 1, 0, 1, 0] and ds.n_classes == 2 and ds[0][0].shape == (3, 8, 12)
    # val split: random (seeded) or first
    v = FolderDataset(plain, 16, split="val", val_size=3, val_seed=46)
    assert len(v) == 3 and len(FolderDataset(plain, 16, split="val", val_size=3, val_seed=None)) == 3


def test_horse_and_instagram(tmp_path):
    horse = tmp_path / "weizmann_horse"
    _write_images(horse / "images", [f"horse{i:03d}.jpg" for i in range(4)], size=(40, 50))
    (horse / "masks").mkdir()
    for i in range(4):
        m = np.zeros((40, 50), np.uint8)
        m[10:30, 5 + i:25] = 255
        Image.fromarray(m).save(horse / "masks" / f"horse{i:03d}.png")
    ds = build_dataset({"name": "weizmann_horse", "img_size": 32}, "train", tmp_path)
    x, y = ds[1]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32) and y.dtype == torch.long
    assert set(y.unique().tolist()) == {0, 1}
    assert ds.n_classes == 2 and len(build_dataset({"name": "weizmann_horse"}, "val", tmp_path)) == 4
    x, y = next(iter(make_loader(ds, 4, shuffle=False, workers=0)))
    torch.testing.assert_close(y, torch.stack([ds[i][1] for i in range(4)]))
    (horse / "masks" / "horse002.png").unlink()
    with pytest.raises(FileNotFoundError, match="horse002"):
        build_dataset({"name": "weizmann_horse"}, "train", tmp_path)
    insta = tmp_path / "instagram" / "santaphoto" / "train"
    _write_images(insta, [f"{i}.jpg" for i in range(3)], size=(60, 90))
    ds = build_dataset({"name": "instagram", "tag": "santaphoto", "img_size": 48}, "train", tmp_path)
    assert len(ds) == 3 and ds[0][0].shape == (3, 48, 48) and ds[0][1] == -1 and ds.n_classes == 0


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "tetrominoes")):
        build_dataset({"name": "tetrominoes"}, "train", tmp_path)
    folder = make_dataset("tetrominoes", tmp_path, 6, workers=1, progress=False)
    (folder / "images" / "3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"images/3\.png"):
        MultiObjectDataset(tmp_path, "tetrominoes")
    make_dataset("tetrominoes", tmp_path, 6, workers=1, progress=False)
    (folder / "masks" / "4.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match=r"masks/4\.png"):
        MultiObjectDataset(tmp_path, "tetrominoes", target="instance", cache="memory")
    ds = MultiObjectDataset(tmp_path, "tetrominoes", target="instance", cache="none")
    with pytest.raises(ValueError, match=r"masks/4\.png"):
        ds[4]
    (folder / "masks" / "4.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"masks/4\.png"):
        ds[4]
    import shutil
    shutil.rmtree(folder / "sem_masks")
    with pytest.raises(FileNotFoundError, match="sem_masks"):
        MultiObjectDataset(tmp_path, "tetrominoes", target="semantic")
    bad = tmp_path / "imgs"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="a.jpg"):
        FolderDataset(bad, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        FolderDataset(tmp_path / "empty", 8)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FolderDataset(tmp_path / "nowhere", 8)


def test_cli_make_and_preview(tmp_path, capsys):
    assert data_main(["make", "multi-dsprites", "--out", str(tmp_path), "--n", "4", "--seed", "1",
                      "--workers", "1", "--no-progress"]) == 0
    folder = tmp_path / "dsprites_gray"
    assert len(list((folder / "images").glob("*.png"))) == 4
    assert data_main(["preview", str(folder), "--out", str(tmp_path / "p.png"), "--n", "3", "--cell", "32"]) == 0
    grid = read_image(tmp_path / "p.png")
    assert grid.shape == (3 * 32 + 4, 3 * 32 + 4, 3)  # rows: images, instances, classes
    assert preview(folder).name == "preview.png"
    assert data_main(["preview", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    import argparse
    parser = argparse.ArgumentParser()
    from dtifast.data.cli import add_parser
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "make", "tetrominoes", "--out", str(tmp_path), "--n", "2", "--no-progress"])
    assert args.func(args) == 0 and (tmp_path / "tetrominoes" / "images" / "1.png").is_file()


def test_svhn_mat_files(tmp_path):
    from scipy.io import savemat
    rng = np.random.default_rng(0)
    for part, n in (("train", 30), ("test", 120), ("extra", 10)):
        savemat(tmp_path / f"{part}_32x32.mat", {"X": rng.integers(0, 255, (32, 32, 3, n), dtype=np.uint8),
                                                  "y": rng.integers(1, 11, (n, 1))})
    train = build_dataset({"name": "svhn"}, "train", tmp_path)
    assert len(train) == 160 and train.n_classes == 10 and train[0][0].shape == (3, 32, 32)
    assert len(build_dataset({"name": "svhn"}, "eval", tmp_path)) == 150
    val = build_dataset({"name": "svhn"}, "val", tmp_path)
    assert len(val) == 100 and 0 <= min(val[i][1] for i in range(100)) and max(val[i][1] for i in range(100)) <= 9
    (tmp_path / "extra_32x32.mat").unlink()
    with pytest.raises(FileNotFoundError, match="extra_32x32.mat"):
        build_dataset({"name": "svhn"}, "train", tmp_path)

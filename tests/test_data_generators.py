"""Generators: the ground truth agrees with the pixels, and the output is a function of the seed."""
import json

import numpy as np
import pytest

from dtifast.data import make_dataset
from dtifast.data.generators import clevr, dsprites, get_generator, tetrominoes
from dtifast.data.io import read_image, read_label_map


@pytest.fixture(scope="module")
def tetro():
    return tetrominoes.generate(np.random.default_rng(0), 200)


@pytest.fixture(scope="module")
def sprites():
    return dsprites.generate(np.random.default_rng(0), 200)


@pytest.fixture(scope="module")
def scenes3d():
    return clevr.generate(np.random.default_rng(0), 6)


def _check_consistent(s, n_classes, size, max_objects):
    n = len(s)
    assert s.images.shape == (n, *size, 3) and s.images.dtype == np.uint8
    assert s.instance.shape == s.semantic.shape == (n, *size)
    assert s.instance.max() <= max_objects and s.semantic.max() < n_classes
    # background in one map iff background in the other
    np.testing.assert_array_equal(s.instance == 0, s.semantic == 0)
    # each instance has one class; present objects are visible, absent ones never appear
    for b in range(n):
        for j in range(max_objects):
            pix = s.instance[b] == j + 1
            assert pix.any() == bool(s.objects["present"][b, j])
            if pix.any():
                assert len(np.unique(s.semantic[b][pix])) == 1


def test_tetrominoes_ground_truth(tetro):
    s = tetro
    _check_consistent(s, tetrominoes.N_CLASSES, tetrominoes.IMG_SIZE, 3)
    fp = tetrominoes.footprints(s.objects["shape"], s.objects["y"], s.objects["x"])  # (n, 3, H, W)
    assert (fp.sum(1) <= 1).all(), "tetrominoes overlap"
    assert (fp.sum((2, 3)) == 4 * tetrominoes.BLOCK ** 2).all(), "a tetromino is cut by the border"
    for j in range(3):
        np.testing.assert_array_equal(s.instance == j + 1, fp[:, j])
        colour = tetrominoes.COLORS[s.objects["color"][:, j]]  # (n, 3)
        pix = s.instance == j + 1
        np.testing.assert_array_equal(s.images[pix], np.repeat(colour, pix.sum((1, 2)), 0))
        # the semantic map is the shape map
        np.testing.assert_array_equal(s.semantic[pix], np.repeat(s.objects["shape"][:, j] + 1, pix.sum((1, 2))))
    # masks cover exactly the non-background (non-black) pixels
    np.testing.assert_array_equal(s.instance > 0, s.images.any(-1))
    assert len(tetrominoes.SHAPE_NAMES) == 19 and tetrominoes.N_CLASSES == 20
    assert len({tetrominoes.TEMPLATES[i].tobytes() for i in range(19)}) == 19


def test_dsprites_ground_truth(sprites):
    s = sprites
    _check_consistent(s, dsprites.N_CLASSES, dsprites.IMG_SIZE, 4)
    o = s.objects
    fp = dsprites.footprints(o["shape"], o["radius"], o["angle"], o["cy"], o["cx"]) & o["present"][..., None, None]
    counts = o["present"].sum(1)
    assert counts.min() == 1 and counts.max() == 4
    bg = np.repeat(o["background"][:, None, None, None], 3, -1)
    np.testing.assert_array_equal(s.instance == 0, (s.images == bg).all(-1))  # masks = non-background pixels
    occluded = 0
    for j in range(4):
        later = fp[:, j + 1:].any(1)
        # a sprite's mask is its footprint minus what is drawn over it
        np.testing.assert_array_equal(s.instance == j + 1, fp[:, j] & ~later)
        occluded += int((fp[:, j] & later).sum())
        pix = s.instance == j + 1
        np.testing.assert_array_equal(s.images[pix], np.repeat(o["color"][:, j], pix.sum((1, 2)), 0))
        np.testing.assert_array_equal(s.semantic[pix], np.repeat(o["shape"][:, j] + 1, pix.sum((1, 2))))
        assert (pix.sum((1, 2))[o["present"][:, j]] >= dsprites.MIN_VISIBLE).all()
    assert occluded > 0, "no occlusion in 200 scenes: the test would not test it"


def test_clevr_ground_truth(scenes3d):
    s = scenes3d
    _check_consistent(s, clevr.N_CLASSES, clevr.IMG_SIZE, 6)
    o = s.objects
    counts = o["present"].sum(1)
    assert counts.min() >= 3 and counts.max() <= 6
    # background pixels are exactly those of the empty scene (no shadows, no reflections)
    empty = {k: v.copy() for k, v in o.items()}
    empty["present"][:] = False
    first, t, normal = clevr.trace(empty)
    floor = clevr.shade(empty, first, t, normal)
    np.testing.assert_array_equal(s.images[s.instance == 0], floor[s.instance == 0])
    assert (s.images[s.instance > 0] != floor[s.instance > 0]).any(-1).mean() > 0.99
    # an object alone covers at least its visible pixels; its class is shape x size
    for b in range(2):
        for j in np.flatnonzero(o["present"][b]):
            alone = {k: v[b:b + 1].copy() for k, v in o.items()}
            alone["present"][:] = False
            alone["present"][0, j] = True
            f1 = clevr.trace(alone)[0].reshape(clevr.IMG_SIZE)
            vis = s.instance[b] == j + 1
            assert (f1[vis] == j).all()
            assert (s.semantic[b][vis] == 1 + 2 * o["shape"][b, j] + o["size"][b, j]).all()
    # a pixel is instance j iff object j is the nearest hit
    assert clevr.N_CLASSES == 7


@pytest.mark.parametrize("kind", ["tetrominoes", "multi-dsprites", "clevr6"])
def test_generate_is_deterministic(kind):
    gen = get_generator(kind)
    n = 3 if kind == "clevr6" else 20
    a, b = gen.generate(np.random.default_rng(5), n), gen.generate(np.random.default_rng(5), n)
    c = gen.generate(np.random.default_rng(6), n)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.instance, b.instance)
    assert not np.array_equal(a.images, c.images)


@pytest.mark.parametrize("kind,name,size,n_classes", [("tetrominoes", "tetrominoes", 35, 20),
                                                      ("multi-dsprites", "dsprites_gray", 64, 4),
                                                      ("clevr6", "clevr6", 128, 7)])
def test_make_dataset_folder(tmp_path, kind, name, size, n_classes):
    n = 5
    folder = make_dataset(kind, tmp_path, n, seed=3, workers=1, progress=False)
    assert folder == tmp_path / name
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["n"] == n and meta["seed"] == 3 and meta["n_classes"] == n_classes and meta["kind"] == kind
    for i in range(n):
        img = read_image(folder / "images" / f"{i}.png")
        inst, sem = read_label_map(folder / "masks" / f"{i}.png"), read_label_map(folder / "sem_masks" / f"{i}.png")
        assert img.shape == (size, size, 3) and inst.shape == sem.shape == (size, size)
        np.testing.assert_array_equal(inst == 0, sem == 0)
        assert sem.max() < n_classes
    assert not (folder / "images" / f"{n}.png").exists()


def test_make_dataset_seed_and_workers(tmp_path):
    # Output depends on (kind, n, seed) only: 2 workers and 1 worker write the same files.
    a = make_dataset("tetrominoes", tmp_path / "a", 1100, seed=1, workers=2, progress=False)
    b = make_dataset("tetrominoes", tmp_path / "b" / "tetrominoes", 1100, seed=1, workers=1, progress=False)
    assert b == tmp_path / "b" / "tetrominoes"
    for i in (0, 499, 500, 1099):
        for sub in ("images", "masks", "sem_masks"):
            assert (a / sub / f"{i}.png").read_bytes() == (b / sub / f"{i}.png").read_bytes()
    c = make_dataset("tetrominoes", tmp_path / "c", 20, seed=2, workers=1, progress=False)
    assert (c / "images" / "0.png").read_bytes() != (a / "images" / "0.png").read_bytes()
    # regenerating with fewer scenes leaves no stale files behind
    make_dataset("tetrominoes", tmp_path / "a", 10, seed=1, workers=1, progress=False)
    assert len(list((a / "images").glob("*.png"))) == 10


def test_make_dataset_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset kind 'mnist'"):
        make_dataset("mnist", tmp_path, 4)
    with pytest.raises(ValueError, match="n must be a positive int"):
        make_dataset("tetrominoes", tmp_path, 0)
    with pytest.raises(ValueError, match="seed"):
        make_dataset("tetrominoes", tmp_path, 4, seed=-1)

"""`dtifast.decompose` and `dtifast decompose`: layers that stack back into the reconstruction, in the
occlusion order; the PNG, NPZ and JSON outputs agree; multi-object, predicted-occlusion, single-object and
imported upstream models; unreadable, empty and existing inputs and outputs; input checks."""
import json
import logging

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import dtifast
from dtifast.cli import EXIT_INPUT_ERROR, main
from dtifast.config import load_config
from dtifast.model import build_model
from dtifast.runs import save_run_from_model
from test_compat import _tetro_upstream_state  # the authors' key layout for a tetro-like model

TOL = 1e-5  # float32 rounding of the composites
PNG_TOL = 4 / 255  # 8-bit PNG layers composited again: a few quantisation steps


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_model(cfg, img_size, n_channels, seed, occlusion_scale=1.0):
    """The config's model (eval mode) with random sprites and transformation heads, so that its layers differ
    in colour, overlap and (when the model predicts it) depth: a wrong layer order then changes the composite."""
    torch.manual_seed(seed)
    model = build_model(cfg, img_size, n_channels)
    with torch.no_grad():
        model.prototype_params.uniform_(-0.5, 1.5)
        for tsf in model._transformers():
            for head in tsf.heads.values():
                head.weights[-1].normal_(std=0.01)
                head.biases[-1].normal_(std=0.3)
        if model.pred_occlusion:
            model.occ_predictor.weights[-1].normal_(std=occlusion_scale)
            model.occ_predictor.biases[-1].normal_(std=occlusion_scale)
    return model.eval()


def _over(layers, masks, background):
    """Back-to-front "over" compositing: ``(..., L, C, H, W)`` layers and masks over ``(..., C, H, W)``."""
    out = background
    for d in range(layers.shape[-4]):
        m = masks[..., d, :, :, :]
        out = m * layers[..., d, :, :, :] + (1 - m) * out
    return out


def _png(path):
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A generated Tetrominoes folder: images/, masks/, sem_masks/ (only images/ is decomposed)."""
    root = tmp_path_factory.mktemp("data")
    assert main(["data", "make", "tetrominoes", "--out", str(root), "--n", "5", "--workers", "1",
                 "--no-progress"]) == 0
    return root / "tetrominoes"


@pytest.fixture(scope="module")
def tetro_run(tmp_path_factory):
    """A tetro-tiny run folder (3 layers, fixed occlusion, no background) with perturbed weights."""
    cfg = load_config("tetro-tiny")
    model = _random_model(cfg, (35, 35), 3, seed=0)
    run = tmp_path_factory.mktemp("tetro") / "run"
    save_run_from_model(run, cfg, model)
    return run, model


def _batch(dataset, n=4):
    return torch.stack([_png(dataset / "images" / f"{i}.png") for i in range(n)])


def test_layers_stack_into_the_models_reconstruction(tetro_run, dataset):
    _, model = tetro_run
    x = _batch(dataset)
    model.train()
    d = dtifast.decompose(model, x)
    assert model.training  # the caller's mode comes back
    model.eval()
    N, L, C, H, W = 4, 3, 3, 35, 35
    assert d.layers.shape == (N, L, C, H, W) and d.masks.shape == (N, L, 1, H, W)
    assert d.background.shape == d.reconstruction.shape == (N, C, H, W)
    assert d.order.shape == d.sprite_index.shape == (N, L) and d.error.shape == (N,)
    assert d.layer_params["layer.position"].shape == (N, L, 3) and d.layer_params["layer.color"].shape == (N, L, 6)
    assert d.background_params == {} and d.background_index.tolist() == [-1] * N and not d.background.any()
    # Fixed occlusion tril(1, -1): layer l hides the layers before it, so layer 0 is at the back.
    assert d.order.tolist() == [[0, 1, 2]] * N
    torch.testing.assert_close(_over(d.layers, d.masks, d.background), d.reconstruction, atol=TOL, rtol=0)
    torch.testing.assert_close(d.reconstruction, model.reconstruct(x), atol=TOL, rtol=0)
    torch.testing.assert_close(d.error, ((model.reconstruct(x) - x) ** 2).flatten(1).mean(1), atol=TOL, rtol=0)
    assert torch.equal(d.semantic, model.semantic_labels(x)) and torch.equal(d.instance, model.instance_labels(x))
    # The layers overlap: stacked in the other order they give another picture (so the checks above see order).
    reversed_stack = _over(d.layers.flip(1), d.masks.flip(1), d.background)
    assert (reversed_stack - d.reconstruction).abs().max() > 0.05
    # The parameters are those of the selected sprite's layer: the position warp of layer l.
    with torch.no_grad():
        position = model.layer_tsf.predict(model.encoder(x))[1]
    torch.testing.assert_close(d.layer_params["layer.position"], position.transpose(0, 1))


def test_predicted_occlusion_order_gray_model():
    cfg = load_config("dsprites", ["model.n_objects=3", "model.encoder_name=resnet20", "model.sprite_size=[8,8]",
                                   "model.curriculum_learning=false"])
    model = _random_model(cfg, (16, 16), 1, seed=1, occlusion_scale=50.0)
    torch.manual_seed(2)
    x = torch.rand(8, 1, 16, 16)
    d = dtifast.decompose(model, x)
    assert d.layers.shape == (8, 3, 1, 16, 16) and d.background_index.tolist() == [0] * 8
    assert set(d.background_params) == {"color"} and d.background_params["color"].shape == (8, 2)
    assert set(d.layer_params) == {"sprite.similarity", "layer.color", "layer.position"}
    # The occlusion head orders the layers differently from image to image.
    orders = {tuple(o) for o in d.order.tolist()}
    assert len(orders) > 1 and all(sorted(o) == [0, 1, 2] for o in orders)
    torch.testing.assert_close(_over(d.layers, d.masks, d.background), d.reconstruction, atol=TOL, rtol=0)
    # With a saturated occlusion head the hard order is the model's own: same reconstruction.
    occlusion = model.decompose(x)["occlusion"]
    assert ((occlusion - occlusion.round()).abs() < 1e-3).float().mean() > 0.95
    torch.testing.assert_close(d.reconstruction, model.reconstruct(x), atol=1e-3, rtol=0)


def test_cli_png_npz_and_json_agree(tetro_run, dataset, tmp_path, capsys):
    run, model = tetro_run
    png, npz = tmp_path / "png", tmp_path / "npz"
    assert main(["decompose", str(run), str(dataset), "--out", str(png), "--batch-size", "2", "--device", "cpu",
                 "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip()) == {"out": str(png), "n_images": 5, "n_skipped": 0,
                                                           "format": "png"}
    assert main(["decompose", str(run / "checkpoint.pt"), str(dataset), "--out", str(npz), "--format", "npz",
                 "--batch-size", "2", "--no-progress", "--device", "cpu"]) == 0
    info = json.loads((png / "decomposition.json").read_text())
    assert info["model"]["n_layers"] == 3 and info["n_images"] == 5 and info["skipped"] == []
    assert sorted(e["name"] for e in info["images"]) == ["0", "1", "2", "3", "4"]  # images/ only, not masks/
    npz_info = json.loads((npz / "decomposition.json").read_text())
    x = _batch(dataset, 5)
    for entry, npz_entry in zip(info["images"], npz_info["images"]):
        name = entry["name"]
        arrays = np.load(npz / f"{name}.npz")
        # JSON (both runs) and NPZ hold the same sprites, order, parameters and error.
        assert entry == npz_entry
        assert arrays["order"].tolist() == entry["order"] == [lay["layer"] for lay in entry["layers"]]
        assert arrays["sprite_index"].tolist() == [lay["sprite"] for lay in entry["layers"]]
        for key in ("layer.color", "layer.position"):
            np.testing.assert_allclose(arrays[f"layer_params/{key}"], [lay["params"][key] for lay in entry["layers"]],
                                       rtol=1e-6)
        assert float(arrays["error"]) == pytest.approx(entry["error"], rel=1e-6)
        # The NPZ layers stack into its reconstruction; the input is the image the model saw.
        layers, masks = torch.from_numpy(arrays["layers"]), torch.from_numpy(arrays["masks"])
        recon = torch.from_numpy(arrays["reconstruction"])
        torch.testing.assert_close(_over(layers, masks, torch.from_numpy(arrays["background"])), recon,
                                   atol=TOL, rtol=0)
        torch.testing.assert_close(torch.from_numpy(arrays["image"]), x[int(name)])
        # The RGBA PNGs (colour, alpha = mask) stack over background.png into reconstruction.png.
        rgba = torch.stack([_png(png / name / "layers" / f"{depth}.png") for depth in range(3)])
        assert rgba.shape == (3, 4, 35, 35)
        torch.testing.assert_close(rgba[:, 3:], masks, atol=0.5 / 255 + 1e-6, rtol=0)
        stacked = _over(rgba[:, :3], rgba[:, 3:], _png(png / name / "background.png"))
        torch.testing.assert_close(stacked, _png(png / name / "reconstruction.png"), atol=PNG_TOL, rtol=0)
        torch.testing.assert_close(stacked, recon, atol=PNG_TOL, rtol=0)
        for picture in ("input", "semantic", "instance"):
            assert Image.open(png / name / f"{picture}.png").size == (35, 35)


def test_single_object_model_resizes_and_converts_files(tmp_path, capsys):
    cfg = load_config("gtsrb8", ["model.n_sprites=3", "model.n_backgrounds=2", "model.encoder_name=resnet20",
                                 "model.transformation_sequence=color_affine", "model.curriculum_learning=false",
                                 "model.transformation_sequence_bkg=color", "model.curriculum_learning_bkg=false",
                                 "model.bkg_init=constant"])
    model = _random_model(cfg, (16, 16), 3, seed=3)
    run = tmp_path / "run"
    save_run_from_model(run, cfg, model)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8), "L").save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (9, 9, 4), dtype=np.uint8), "RGBA").save(folder / "sub" / "b.webp")
    assert main(["decompose", str(run), str(folder), "--out", str(tmp_path / "out"), "--format", "npz",
                 "--device", "cpu", "--no-progress"]) == 0
    info = json.loads((tmp_path / "out" / "decomposition.json").read_text())
    assert [e["name"] for e in info["images"]] == ["a_jpg", "a_png", "sub/b"]
    assert info["model"]["empty_sprite"] is None and info["model"]["n_backgrounds"] == 2
    images = torch.stack([torch.from_numpy(np.load(tmp_path / "out" / f"{e['name']}.npz")["image"])
                          for e in info["images"]])
    assert images.shape == (3, 3, 16, 16)
    d = dtifast.decompose(model, images)
    assert d.layers.shape == (3, 1, 3, 16, 16) and d.order.tolist() == [[0]] * 3
    assert set(d.layer_params) == {"sprite.color", "sprite.affine"} and set(d.background_params) == {"color"}
    assert d.layer_params["sprite.affine"].shape == (3, 1, 6) and d.background_params["color"].shape == (3, 6)
    # The best of the K·M candidates: sprite k, background m (index m·K + k).
    best = model(images).distances.argmin(1)
    assert d.sprite_index[:, 0].tolist() == (best % model.n_sprites).tolist()
    assert d.background_index.tolist() == (best // model.n_sprites).tolist()
    torch.testing.assert_close(_over(d.layers, d.masks, d.background), d.reconstruction, atol=TOL, rtol=0)
    torch.testing.assert_close(d.reconstruction, model.reconstruct(images), atol=TOL, rtol=0)
    for e, sprite, bkg in zip(info["images"], d.sprite_index[:, 0].tolist(), d.background_index.tolist()):
        assert e["layers"][0]["sprite"] == sprite and e["background"]["index"] == bkg


def test_unreadable_files_are_skipped_and_counted(tetro_run, dataset, tmp_path, capsys, caplog):
    run, _ = tetro_run
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes((dataset / "images" / f"{i}.png").read_bytes())
    (folder / "corrupt.png").write_bytes(b"not an image")
    (folder / "truncated.png").write_bytes((dataset / "images" / "3.png").read_bytes()[:60])
    with caplog.at_level(logging.WARNING, logger="dtifast.decomposition"):
        assert main(["decompose", str(run), str(folder), "--out", str(tmp_path / "out"), "--batch-size", "2",
                     "--device", "cpu", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["n_skipped"] == 2
    warned = caplog.text
    assert str(folder / "corrupt.png") in warned and str(folder / "truncated.png") in warned
    info = json.loads((tmp_path / "out" / "decomposition.json").read_text())
    assert [e["name"] for e in info["images"]] == ["0", "1", "2"]
    assert sorted(s["path"] for s in info["skipped"]) == [str(folder / "corrupt.png"), str(folder / "truncated.png")]
    assert not (tmp_path / "out" / "corrupt").exists()


def test_input_and_output_errors(tetro_run, dataset, tmp_path, capsys):
    run, _ = tetro_run

    def err(*argv):
        assert main(["decompose", *map(str, argv), "--device", "cpu", "--no-progress"]) == EXIT_INPUT_ERROR
        return capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    assert "no images" in err(run, tmp_path / "empty", "--out", tmp_path / "o1")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"nope")
    assert "none of the 1 image files" in err(run, bad, "--out", tmp_path / "o2")
    assert "input not found" in err(run, tmp_path / "missing", "--out", tmp_path / "o3")
    assert "not a run folder" in err(tmp_path / "empty", dataset, "--out", tmp_path / "o4")
    assert "cannot read" in err(dataset / "images" / "0.png", dataset, "--out", tmp_path / "o4")
    assert "batch size must be a positive int" in err(run, dataset, "--out", tmp_path / "o5", "--batch-size", "0")
    # An existing output is kept unless --overwrite.
    out = tmp_path / "out"
    image = dataset / "images" / "0.png"
    assert main(["decompose", str(run), str(image), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    (out / "0" / "reconstruction.png").write_bytes(b"")
    assert "pass --overwrite" in err(run, image, "--out", out)
    assert (out / "0" / "reconstruction.png").read_bytes() == b""
    assert main(["decompose", str(run), str(image), "--out", str(out), "--overwrite", "--device", "cpu",
                 "--no-progress"]) == 0
    assert Image.open(out / "0" / "reconstruction.png").size == (35, 35)


def test_api_input_checks(tetro_run):
    _, model = tetro_run
    x = torch.rand(2, 3, 35, 35)
    with pytest.raises(TypeError, match="model must be a dtifast DTISprites"):
        dtifast.decompose(torch.nn.Identity(), x)
    with pytest.raises(TypeError, match="images must be a torch.Tensor"):
        dtifast.decompose(model, x.numpy())
    with pytest.raises(TypeError, match="images must have dtype"):
        dtifast.decompose(model, (x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"images must be a 4-D tensor, got shape \(3, 35, 35\)"):
        dtifast.decompose(model, x[0])
    with pytest.raises(ValueError, match="takes 3-channel images, got 1 channels"):
        dtifast.decompose(model, x[:, :1])
    with pytest.raises(ValueError, match="takes 35×35 images, got 32×35"):
        dtifast.decompose(model, x[:, :, :32])
    with pytest.raises(ValueError, match=r"values in \[0, 1\], got values in \[0, 255\]"):
        dtifast.decompose(model, torch.cat([x * 0, x * 0 + 255]))
    with pytest.raises(ValueError, match="nan"):
        dtifast.decompose(model, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="empty batch"):
        dtifast.decompose(model, x[:0])
    # Other float dtypes are converted to the model's.
    assert dtifast.decompose(model, x.double()).layers.dtype == torch.float32


def test_upstream_checkpoint_via_import(tmp_path, dataset, capsys):
    cfg = load_config("tetro-tiny")
    model = _random_model(cfg, (35, 35), 3, seed=4)
    pkl = tmp_path / "upstream" / "model.pkl"
    pkl.parent.mkdir()
    torch.save({"model_name": "dti_sprites", "model_kwargs": dict(cfg["model"]),
                "model_state": _tetro_upstream_state(model), "epoch": 3}, pkl)
    (pkl.parent / "tetro.yml").write_text(yaml.safe_dump(cfg))
    # The checkpoint does not record its image size (no background, a layer warp): import it first.
    out = tmp_path / "direct"
    assert main(["decompose", str(pkl), str(dataset), "--out", str(out), "--device", "cpu"]) == EXIT_INPUT_ERROR
    assert "dtifast import-upstream" in capsys.readouterr().err
    run = tmp_path / "imported"
    assert main(["import-upstream", str(pkl), "--out", str(run), "--img-size", "35", "35"]) == 0
    assert main(["decompose", str(run), str(dataset), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    info = json.loads((out / "decomposition.json").read_text())
    d = dtifast.decompose(model, _batch(dataset, 5))
    for i, entry in enumerate(info["images"]):
        assert [lay["sprite"] for lay in entry["layers"]] == d.sprite_index[i].tolist()
        assert entry["error"] == pytest.approx(float(d.error[i]), rel=1e-5)

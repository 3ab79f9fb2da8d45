"""Config loading: bundled configs, overrides, and errors that name the bad key."""
from __future__ import annotations

import pytest

from dtifast.config import ConfigError, load_config, validate_config

BUNDLED = ["tetro", "dsprites", "clevr6", "gtsrb8", "svhn", "horse", "instagram"]


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_configs_load_with_upstream_values(name):
    cfg = load_config(name)
    assert set(cfg) == {"dataset", "model", "training"}
    assert cfg["model"]["inject_noise"] == 0.4
    assert cfg["training"]["optimizer"]["transformer"]["weight_decay"] == pytest.approx(1e-6)


def test_upstream_values_of_clevr6():
    cfg = load_config("clevr6")
    m = cfg["model"]
    assert (m["n_sprites"], m["n_objects"], m["greedy_algo_iter"], m["sprite_size"]) == (6, 6, 3, [40, 40])
    assert m["lambda_empty_sprite"] == pytest.approx(1e-4) and m["curriculum_learning"] == [150]


def test_overrides_are_parsed_as_yaml():
    cfg = load_config("tetro", ["training.batch_size=8", "model.sprite_size=[12, 12]", "training.optimizer.lr=1e-3"])
    assert cfg["training"]["batch_size"] == 8 and cfg["model"]["sprite_size"] == [12, 12]
    assert cfg["training"]["optimizer"]["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("overrides,match", [
    (["model.n_sprite=3"], r"unknown config key model\.n_sprite; did you mean model\.n_sprites\?"),
    (["training.batch_size=big"], r"training\.batch_size must be int, got str"),
    (["model.pred_occlusion=3"], r"model\.pred_occlusion must be bool"),
    (["training.optimizer.lrr=0.1"], r"unknown config key training\.optimizer\.lrr"),
    (["model.n_sprites=0"], r"model\.n_sprites must be >= 1"),
    (["model.estimate_minimum=false"], r"estimate_minimum must be true"),
    (["batch_size=3"], r"must start with one of"),
    (["model.n_sprites"], r"must look like section\.key=value"),
])
def test_bad_keys_and_values_are_named(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tetro", overrides)


def test_missing_required_key_and_unknown_section():
    with pytest.raises(ConfigError, match=r"missing required config key model\.n_sprites"):
        validate_config({"dataset": {"name": "x"}, "model": {}})
    with pytest.raises(ConfigError, match=r"unknown config section"):
        validate_config({"dataset": {"name": "x"}, "model": {"n_sprites": 2}, "trainer": {}})


def test_unknown_config_name_lists_bundled(tmp_path):
    with pytest.raises(FileNotFoundError, match="tetro"):
        load_config("nope")
    bad = tmp_path / "bad.yml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)

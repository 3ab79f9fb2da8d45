"""YAML configs: loading, ``key=value`` overrides and validation.

A config has upstream's three sections (so that the authors' YAML files load unchanged):

* ``dataset``: ``name`` and loader options;
* ``model``: the DTI-Sprites hyper-parameters (upstream's ``model_kwargs``);
* ``training``: batch size, optimizer, scheduler, schedule intervals, seed.

Every key is checked against the schema below: an unknown or mistyped key, or a value of the wrong type,
raises :class:`ConfigError` naming the full key (``model.n_sprite``) and, for typos, the closest known key.
Missing keys take the defaults below (upstream's defaults).
"""
from __future__ import annotations

import copy
import difflib
import importlib.resources
import pathlib
import re
from typing import Any, Iterable, Mapping, Optional

import yaml

# The repository's configs/ folder, installed as the package data dtifast.configs.
CONFIG_DIR = pathlib.Path(str(importlib.resources.files("dtifast.configs")))
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

_INT, _FLOAT, _BOOL, _STR, _LIST, _NONE, _DICT = int, float, bool, str, list, type(None), dict
_NUM = (int, float)

# key: (allowed types, default). A default of REQUIRED means the key must be given.
REQUIRED = object()

DATASET_SCHEMA: dict[str, tuple[tuple[type, ...], Any]] = {
    "name": ((_STR,), REQUIRED),
    "tag": ((_STR, _NONE), None),
    "img_size": ((_LIST, _INT, _NONE), None),
    "path": ((_STR, _NONE), None),
    "n_channels": ((_INT, _NONE), None),
}

MODEL_SCHEMA: dict[str, tuple[tuple[type, ...], Any]] = {
    "name": ((_STR,), "dti_sprites"),
    "n_sprites": ((_INT,), REQUIRED),
    "n_backgrounds": ((_INT,), 0),
    "n_objects": ((_INT,), 1),
    "freeze_sprite": ((_INT, _BOOL, _NONE), False),
    "inject_noise": ((*_NUM, _BOOL), 0.0),
    "encoder_name": ((_STR,), "resnet20"),
    "with_pool": ((_BOOL, _LIST), True),
    "transformation_sequence": ((_STR,), "identity"),
    "transformation_sequence_bkg": ((_STR,), "identity"),
    "transformation_sequence_layer": ((_STR,), "identity"),
    "curriculum_learning": ((_LIST, _BOOL), False),
    "curriculum_learning_bkg": ((_LIST, _BOOL), False),
    "curriculum_learning_layer": ((_LIST, _BOOL), False),
    "proto_init": ((_STR,), "constant"),
    "mask_init": ((_STR,), "constant"),
    "bkg_init": ((_STR,), "constant"),
    "sprite_size": ((_LIST, _NONE), None),
    "gaussian_weights_std": ((*_NUM, _NONE), None),
    "pred_occlusion": ((_BOOL,), False),
    "estimate_minimum": ((_BOOL,), False),
    "greedy_algo_iter": ((_INT,), 1),
    "add_empty_sprite": ((_BOOL,), False),
    "lambda_empty_sprite": ((*_NUM,), 0.0),
    "use_clamp": ((_STR, _BOOL), "soft"),
    "grid_size": ((_INT,), 4),
    "n_hidden_layers": ((_INT,), 2),
    "n_linear_layers": ((_INT,), 2),
    "norm_layer": ((_STR, _NONE), None),
    "padding_mode": ((_STR,), "zeros"),
    "empty_cluster_threshold": ((*_NUM, _NONE), None),
    "reassign_cluster": ((_BOOL,), True),
    "kernel_size": ((_INT,), 3),
    # dtifast only: the op backend for the model's warps and compositing (None: device default).
    "backend": ((_STR, _NONE), None),
}

OPTIMIZER_SCHEMA: dict[str, tuple[tuple[type, ...], Any]] = {
    "name": ((_STR,), "adam"),
    "lr": ((*_NUM,), 1e-3),
    "weight_decay": ((*_NUM,), 0.0),
    "betas": ((_LIST,), [0.9, 0.999]),
    "fused": ((_BOOL, _NONE), None),
    "transformer": ((_DICT, _NONE), None),
    "cluster": ((_DICT, _NONE), None),
}

SCHEDULER_SCHEMA: dict[str, tuple[tuple[type, ...], Any]] = {
    "name": ((_STR, _NONE), None),
    "gamma": ((*_NUM, _LIST), 0.1),
    "milestones": ((_LIST,), []),
    "update_range": ((_STR,), "epoch"),
}

TRAINING_SCHEMA: dict[str, tuple[tuple[type, ...], Any]] = {
    "batch_size": ((_INT,), 32),
    "n_workers": ((_INT,), 4),
    "optimizer": ((_DICT,), {"name": "adam"}),
    "scheduler": ((_DICT, _NONE), None),
    "n_epoches": ((_INT, _NONE), None),
    "n_iterations": ((_INT, _NONE), None),
    "train_stat_interval": ((_INT,), 100),
    "val_stat_interval": ((_INT,), 200),
    "check_cluster_interval": ((_INT,), 100),
    "eval_with_bkg": ((_BOOL,), False),
    "eval_semantic": ((_BOOL,), False),
    "eval_qualitative": ((_BOOL,), False),
    "seed": ((_INT, _NONE), None),
    "visualizer_port": ((_INT, _NONE), None),
    "pretrained": ((_STR, _NONE), None),
    "resume": ((_STR, _NONE), None),
    # dtifast only (the trainer, dtifast/train.py): bf16 autocast, torch.compile (true or a backend name),
    # learning rates scaled from the batch size they were tuned for, checkpoint cadence (iterations;
    # null: every val_stat_interval), TensorBoard logs beside the CSV ones.
    "amp": ((_STR, _NONE), None),
    "compile": ((_BOOL, _STR), False),
    "lr_scaling": ((_STR,), "none"),
    "lr_reference_batch_size": ((_INT, _NONE), None),
    "checkpoint_interval": ((_INT, _NONE), None),
    "tensorboard": ((_BOOL,), True),
}

SECTIONS = {"dataset": DATASET_SCHEMA, "model": MODEL_SCHEMA, "training": TRAINING_SCHEMA}
SUBSECTIONS = {"training.optimizer": OPTIMIZER_SCHEMA, "training.scheduler": SCHEDULER_SCHEMA}


class ConfigError(ValueError):
    """A config key is unknown, missing or of the wrong type; the message names the key."""


def _type_names(types: Iterable[type]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _validate_section(values: Mapping[str, Any], schema: Mapping[str, tuple], prefix: str) -> dict[str, Any]:
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix} must be a mapping, got {type(values).__name__}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f"; did you mean {prefix}.{close[0]}?" if close else f"; known keys: {', '.join(schema)}"
            raise ConfigError(f"unknown config key {prefix}.{key}{hint}")
        types, _ = schema[key]
        # YAML reads 1e-4 as a string and 1.0 as float; accept ints where floats are allowed.
        if isinstance(value, bool) and bool not in types:
            raise ConfigError(f"{prefix}.{key} must be {_type_names(types)}, got bool {value!r}")
        if not isinstance(value, types):
            raise ConfigError(f"{prefix}.{key} must be {_type_names(types)}, got {type(value).__name__} {value!r}")
        out[key] = copy.deepcopy(value)
    for key, (_, default) in schema.items():
        if key not in out:
            if default is REQUIRED:
                raise ConfigError(f"missing required config key {prefix}.{key}")
            out[key] = copy.deepcopy(default)
    return out


def validate_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a config mapping and fill defaults; returns a new dict."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"a config must be a mapping with sections {list(SECTIONS)}, got {type(cfg).__name__}")
    unknown = [k for k in cfg if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown}; expected {list(SECTIONS)}")
    out = {name: _validate_section(cfg.get(name), schema, name) for name, schema in SECTIONS.items()}
    for path, schema in SUBSECTIONS.items():
        section, key = path.split(".")
        if out[section][key] is not None:
            out[section][key] = _validate_section(out[section][key], schema, path)
    _check_model(out["model"])
    return out


def _check_model(model: dict[str, Any]) -> None:
    def positive(key: str) -> None:
        if model[key] < 1:
            raise ConfigError(f"model.{key} must be >= 1, got {model[key]}")

    for key in ("n_sprites", "n_objects", "greedy_algo_iter"):
        positive(key)
    if model["n_backgrounds"] < 0:
        raise ConfigError(f"model.n_backgrounds must be >= 0, got {model['n_backgrounds']}")
    size = model["sprite_size"]
    if size is not None and (len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size)):
        raise ConfigError(f"model.sprite_size must be [h, w] of positive ints, got {size!r}")
    if model["n_objects"] > 1 and not model["estimate_minimum"]:
        raise ConfigError("model.estimate_minimum must be true when model.n_objects > 1 "
                          "(the exhaustive K**L search is not supported)")
    if model["add_empty_sprite"] and model["n_objects"] == 1:
        raise ConfigError("model.add_empty_sprite needs model.n_objects > 1")


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or parts[0] not in SECTIONS:
        raise ConfigError(f"override key {key!r} must start with one of {list(SECTIONS)} (e.g. training.batch_size)")
    return parts, _coerce_numbers(yaml.safe_load(raw))


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config dict, in place."""
    for item in overrides:
        parts, value = _parse_override(item)
        node = cfg
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = value
    return cfg


def _coerce_numbers(node: Any) -> Any:
    # PyYAML reads "1.0e-4" as a float but "1e-4" as a string; upstream's files use both styles.
    if isinstance(node, dict):
        return {k: _coerce_numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_coerce_numbers(v) for v in node]
    if isinstance(node, str) and _NUMBER.match(node.strip()):
        return float(node)
    return node


def resolve_config_path(path: str | pathlib.Path) -> pathlib.Path:
    """A path to a YAML file, or the name of a bundled config (``tetro``, ``clevr6``…)."""
    p = pathlib.Path(path)
    if p.is_file():
        return p
    bundled = CONFIG_DIR / f"{p.name}.yml" if p.suffix == "" else CONFIG_DIR / p.name
    if bundled.is_file():
        return bundled
    names = sorted(f.stem for f in CONFIG_DIR.glob("*.yml"))
    raise FileNotFoundError(f"config {str(path)!r} is neither a file nor a bundled config ({', '.join(names)})")


def load_config(path: str | pathlib.Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a YAML config (a path or a bundled name), apply overrides, validate, fill defaults."""
    p = resolve_config_path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML ({err})") from err
    if raw is None:
        raise ConfigError(f"{p} is empty")
    raw = apply_overrides(_coerce_numbers(raw), overrides)
    try:
        return validate_config(raw)
    except ConfigError as err:
        raise ConfigError(f"{p}: {err}") from None


# Keys that may differ between a checkpoint's config and the one a resumed run uses: they change how
# long the run goes or how it logs, not what one step computes.
RESUMABLE_KEYS = {"training.n_epoches", "training.n_iterations", "training.n_workers",
                  "training.train_stat_interval", "training.val_stat_interval", "training.checkpoint_interval",
                  "training.tensorboard", "training.resume", "training.pretrained", "training.visualizer_port"}


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def merge_resume_config(saved: Mapping[str, Any], given: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The config of a resumed run: the checkpoint's, where ``given`` may change only :data:`RESUMABLE_KEYS`.

    Raises:
        ConfigError: ``given`` changes another key (the message lists the differences).
    """
    if given is None:
        return copy.deepcopy(dict(saved))
    a, b = _flatten(validate_config(saved)), _flatten(validate_config(given))
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_KEYS)
    if changed:
        diffs = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:8])
        raise ConfigError(f"cannot resume with a different config ({diffs}); only {sorted(RESUMABLE_KEYS)} may "
                          "change on resume")
    return copy.deepcopy(dict(given))

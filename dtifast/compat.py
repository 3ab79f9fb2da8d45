"""Upstream compatibility: the authors' checkpoints and YAML configs, as they are.

The authors' trainer (github.com/monniert/dti-sprites) saves ``model.pkl`` as
``{"model_name", "model_kwargs", "model_state", "epoch", ...}``. Their ``model_kwargs`` use the same
keys as our ``model`` config section. Their state dict stores one module per (layer, sprite) head and
repeats the shared encoder under several prefixes; :func:`upstream_parameter_map` says where each of
their tensors lives in a :class:`~dtifast.model.DTISprites` (our heads are stacked, one tensor per
module and depth, indexed by head).
"""
from __future__ import annotations

import argparse
import logging
import pathlib
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from .config import ConfigError, load_config, validate_config
from .model import DTISprites

log = logging.getLogger(__name__)

# Image sizes of upstream's datasets, by their dataset names (the checkpoint itself does not record it).
UPSTREAM_IMG_SIZES = {
    "tetrominoes": (35, 35), "dsprites_gray": (64, 64), "clevr6": (128, 128), "gtsrb8": (28, 28),
    "svhn": (32, 32), "weizmann_horse": (128, 128), "instagram": (128, 128),
}
_ENCODER_PREFIX = re.compile(
    r"^(?:(?:layer_transformer|bkg_transformer|sprite_transformers\.\d+)\.)?encoder\.encoder\.")
_SEQ = re.compile(r"^(layer_transformer|bkg_transformer|sprite_transformers\.(\d+))\.tsf_sequences\.(\d+)\.(.+)$")
_REGRESSOR = re.compile(r"^tsf_modules\.(\d+)\.regressor\.(\d+)\.(weight|bias)$")
_OCC = re.compile(r"^occ_predictor\.(\d+)\.(weight|bias)$")


class UpstreamFormatError(ValueError):
    """An upstream checkpoint or config that dtifast cannot map; the message lists the keys."""


@dataclass(frozen=True)
class Slot:
    """Where an upstream tensor lives in our model: ``name`` (a state_dict key), optionally row ``index``."""
    name: str
    index: Optional[int] = None


def _linear_depth(regressor_index: int) -> int:
    # Upstream's create_mlp: Linear at 0, then (norm, ReLU), Linear at 3, ReLU, Linear at 5, ...
    if regressor_index == 0:
        return 0
    if regressor_index >= 3 and regressor_index % 2 == 1:
        return (regressor_index - 1) // 2
    raise KeyError(regressor_index)


def upstream_parameter_map(model: DTISprites, names: Sequence[str]) -> dict[str, Optional[Slot]]:
    """Map upstream state-dict names to slots of ``model``; None for tensors we do not keep.

    Tensors we do not keep: the transformation modules' constant ``identity`` and TPS buffers, the empty
    regressors of identity modules, and the per-sequence ``activations`` (kept once per transformer).
    Raises :class:`UpstreamFormatError` listing every name that maps nowhere.
    """
    K = model.n_sprites
    out: dict[str, Optional[Slot]] = {}
    unknown = []
    own = dict(model.state_dict(keep_vars=True))
    for name in names:
        slot: Optional[Slot] = None
        try:
            if name in ("prototype_params", "mask_params", "bkg_params", "occ_grid"):
                slot = Slot(name)
            elif _ENCODER_PREFIX.match(name):
                slot = Slot("encoder.encoder." + _ENCODER_PREFIX.sub("", name))
            elif m := _OCC.match(name):
                depth = _linear_depth(int(m.group(1)))
                slot = Slot(f"occ_predictor.{'weights' if m.group(2) == 'weight' else 'biases'}.{depth}", 0)
            elif m := _SEQ.match(name):
                owner, layer, seq, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
                ours, head = {"layer_transformer": ("layer_tsf", seq), "bkg_transformer": ("bkg_tsf", seq)}.get(
                    owner, ("sprite_tsf", (int(layer) if layer is not None else 0) * K + seq))
                # Constants that we recompute: identity offsets and the TPS solver matrices.
                if rest == "activations" or re.fullmatch(r"tsf_modules\.\d+\.(identity|tps_grid\.\w+)", rest):
                    slot = None
                elif r := _REGRESSOR.match(rest):
                    module, depth = r.group(1), _linear_depth(int(r.group(2)))
                    kind = "weights" if r.group(3) == "weight" else "biases"
                    key = f"{ours}.heads.{module}.{kind}.{depth}"
                    # Identity modules have empty regressors upstream and no head here.
                    slot = Slot(key, head) if key in own else None
                else:
                    raise KeyError(name)
            else:
                raise KeyError(name)
        except KeyError:
            unknown.append(name)
            continue
        if slot is not None and slot.name not in own:
            unknown.append(name)
            continue
        out[name] = slot
    if unknown:
        raise UpstreamFormatError(f"upstream keys with no place in this model: {unknown}")
    return out


def _read_checkpoint(path_or_dict: Union[str, pathlib.Path, Mapping[str, Any]]) -> Mapping[str, Any]:
    if isinstance(path_or_dict, Mapping):
        ckpt = path_or_dict
    else:
        path = pathlib.Path(path_or_dict)
        if not path.is_file():
            raise FileNotFoundError(f"upstream checkpoint not found: {path}")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in ("model_kwargs", "model_state") if k not in ckpt]
    if missing:
        raise UpstreamFormatError(f"not an upstream checkpoint: missing {missing} (keys: {sorted(ckpt)})")
    if ckpt.get("model_name", "dti_sprites") != "dti_sprites":
        raise UpstreamFormatError(f"model_name {ckpt['model_name']!r} is not supported (only 'dti_sprites')")
    return ckpt


def _strip_data_parallel(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _infer_img_size(state: Mapping[str, torch.Tensor], kwargs: Mapping[str, Any]) -> Optional[tuple[int, int]]:
    if "bkg_params" in state:
        return tuple(state["bkg_params"].shape[-2:])
    if kwargs.get("transformation_sequence_layer", "identity") in ("id", "identity"):
        return tuple(state["prototype_params"].shape[-2:])  # sprites are image-sized without a layer warp
    return None


def _curriculum_flags(state: Mapping[str, torch.Tensor], owner: str) -> Optional[torch.Tensor]:
    """The activation flags shared by every sequence of one upstream transformer (they must agree)."""
    pattern = re.compile(rf"^{owner}\.tsf_sequences\.\d+\.activations$")
    flags = [v.bool() for k, v in state.items() if pattern.match(k)]
    if not flags:
        return None
    if any(not torch.equal(f, flags[0]) for f in flags):
        raise UpstreamFormatError(f"the sequences of {owner} have different curriculum activations")
    return flags[0]


def load_upstream_checkpoint(path_or_dict: Union[str, pathlib.Path, Mapping[str, Any]],
                             img_size: Optional[Sequence[int]] = None,
                             dtype: torch.dtype = torch.float32) -> DTISprites:
    """Build a :class:`DTISprites` with the weights, curriculum and epoch of an upstream ``model.pkl``.

    Args:
        path_or_dict: the checkpoint file, or its loaded dict.
        img_size: ``(H, W)``; needed only when the checkpoint has no background and a layer warp
            (e.g. Tetrominoes: ``(35, 35)``), since nothing in it records the image size.
        dtype: dtype of the returned model (upstream stores float32).

    Returns:
        The model in eval mode, with ``cur_epoch`` = the checkpoint's epoch.
    """
    ckpt = _read_checkpoint(path_or_dict)
    state = _strip_data_parallel(ckpt["model_state"])
    kwargs = dict(ckpt["model_kwargs"])
    kwargs.pop("name", None)
    try:
        cfg = validate_config({"dataset": {"name": "upstream"}, "model": kwargs})["model"]
    except ConfigError as err:
        raise UpstreamFormatError(f"upstream model_kwargs: {err}") from None
    size = tuple(img_size) if img_size is not None else _infer_img_size(state, kwargs)
    if size is None:
        raise UpstreamFormatError("the checkpoint does not record the image size (no background, layer warp); "
                                  "pass img_size=(H, W)")
    n_channels = int(state["prototype_params"].shape[1])
    # Every init is overwritten by the checkpoint; constant inits avoid needing dataset images.
    build_cfg = {**cfg, "proto_init": "constant", "bkg_init": "constant", "mask_init": "constant"}
    model = DTISprites(build_cfg, size, n_channels).to(dtype)
    _load_state(model, state)
    epoch = int(ckpt.get("epoch", 0))
    model.set_epoch(epoch)
    for owner, tsf in (("layer_transformer", getattr(model, "layer_tsf", None)),
                       ("bkg_transformer", getattr(model, "bkg_tsf", None))):
        flags = _curriculum_flags(state, owner)
        if tsf is not None and flags is not None:
            tsf.set_activations(flags)
    sprite_flags = [f for f in (_curriculum_flags(state, rf"sprite_transformers\.{l}")
                                for l in range(model.n_objects)) if f is not None]
    if sprite_flags:
        if any(not torch.equal(f, sprite_flags[0]) for f in sprite_flags):
            raise UpstreamFormatError("the sprite transformers of different layers have different activations")
        model.sprite_tsf.set_activations(sprite_flags[0])
    return model.eval()


@torch.no_grad()
def _load_state(model: DTISprites, state: Mapping[str, torch.Tensor]) -> None:
    slots = upstream_parameter_map(model, list(state))
    own = model.state_dict(keep_vars=True)
    filled: set[tuple[str, Optional[int]]] = set()
    for name, slot in slots.items():
        if slot is None:
            continue
        target = own[slot.name]
        value = state[name]
        dest = target if slot.index is None else target[slot.index]
        if tuple(dest.shape) != tuple(value.shape):
            raise UpstreamFormatError(f"{name}: shape {tuple(value.shape)} does not fit {slot.name} "
                                      f"{tuple(dest.shape)}; the checkpoint and its model_kwargs disagree")
        dest.copy_(value.to(dest.dtype))
        filled.add((slot.name, slot.index))
    missing = []
    for key, tensor in own.items():
        if key == "cur_epoch" or key.endswith("activations"):
            continue
        rows = [None] if not re.search(r"\.heads\.|^occ_predictor\.", key) else list(range(tensor.shape[0]))
        missing += [f"{key}[{r}]" if r is not None else key for r in rows if (key, r) not in filled]
    if missing:
        raise UpstreamFormatError(f"parameters missing from the upstream checkpoint: {missing}")


def from_upstream_config(path: Union[str, pathlib.Path]) -> dict[str, Any]:
    """Read an upstream YAML config (their ``configs/*.yml``) as a validated dtifast config.

    Our config format is upstream's, so this is :func:`dtifast.config.load_config` on a file that must
    exist (no bundled-name lookup).
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"upstream config not found: {p}")
    return load_config(p)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``dtifast import-upstream`` subcommand."""
    parser = subparsers.add_parser(
        "import-upstream", help="turn an upstream model.pkl into a dtifast run folder",
        description="Convert a checkpoint of the authors' DTI-Sprites code into a dtifast run folder that "
                    "`dtifast eval` and `dtifast train --resume` accept.")
    parser.add_argument("checkpoint", type=pathlib.Path, help="upstream model.pkl")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="run folder to write")
    parser.add_argument("--config", type=pathlib.Path, default=None,
                        help="upstream YAML config (default: the *.yml next to the checkpoint)")
    parser.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="image size, when neither the checkpoint nor the config's dataset tells it")
    parser.set_defaults(func=_import_upstream_main)
    return parser


def _import_upstream_main(args: argparse.Namespace) -> int:
    from .runs import save_run_from_model
    config_path = args.config
    if config_path is None:
        candidates = sorted(args.checkpoint.parent.glob("*.yml"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"found {len(candidates)} YAML configs next to {args.checkpoint}; "
                                    "pass --config")
        config_path = candidates[0]
    cfg = from_upstream_config(config_path)
    ckpt = _read_checkpoint(args.checkpoint)
    cfg["model"] = validate_config({"dataset": cfg["dataset"], "model": dict(ckpt["model_kwargs"])})["model"]
    img_size = args.img_size or cfg["dataset"].get("img_size") or UPSTREAM_IMG_SIZES.get(cfg["dataset"]["name"])
    model = load_upstream_checkpoint(ckpt, img_size=img_size)
    save_run_from_model(args.out, cfg, model, epoch=int(ckpt.get("epoch", 0)))
    log.info("wrote %s from %s (epoch %d)", args.out, args.checkpoint, int(ckpt.get("epoch", 0)))
    print(f"imported {args.checkpoint} -> {args.out}")
    return 0

"""Layered decompositions of new images by a trained model: a Python entry point and ``dtifast decompose``.

:func:`decompose` turns a batch of images into a :class:`Decomposition`: per image, the L layers (colour
and mask) sorted back to front, the background, the reconstruction, the sprite and transformation
parameters of each layer, the occlusion order, label maps and the reconstruction error.
:func:`decompose_files` runs it over image files and writes what it finds (``dtifast decompose``)::

    OUT/decomposition.json          every image: sprite, parameters and model layer per depth, the
                                    occlusion order, the error; the model; the skipped files
    OUT/NAME/input.png              the image as the model saw it (resized, converted)
    OUT/NAME/layers/{d}.png         RGBA, d = 0 at the back: RGB = the layer's colour, A = its mask
    OUT/NAME/background.png         (black when the model has no background)
    OUT/NAME/reconstruction.png
    OUT/NAME/semantic.png           the visible sprite per pixel, in the sprites' colours (dtifast pictures)
    OUT/NAME/instance.png           the visible layer per pixel

``--format npz`` writes ``OUT/NAME.npz`` instead of the PNG folder: the same content as float32 / int64
arrays (see :func:`write_npz`), next to the same ``decomposition.json``. NAME is the image's path
relative to the input folder, without its extension.

The occlusion order: layer j is in front of layer k when the model's occlusion matrix says j hides k.
Models with a fixed order (``pred_occlusion: false``) draw layer 0 at the back. Models that predict
a soft occlusion per image (``pred_occlusion: true``) get their layers sorted by how much each hides the
others (:func:`depth_order`), and the reconstruction and label maps use that hard order too, so that the
layer files always stack into the reconstruction written beside them (where the predicted occlusion is
0/1, as it is once trained, this is the model's own reconstruction).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import pathlib
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import ops
from .checkpoint import CHECKPOINT_NAME
from .compat import load_upstream_checkpoint
from .data.io import IMG_EXTENSIONS, list_images, read_image, read_image_fit
from .distributed import default_device
from .model import DTISprites
from .ops._checks import check_tensor
from .runs import load_run
from .visualize import colorize, instance_palette, sprite_palette, to_pil

log = logging.getLogger(__name__)

__all__ = ["Decomposition", "decompose", "depth_order", "load_model", "list_inputs", "decompose_files",
           "write_pngs", "write_npz", "add_parser", "FORMATS", "JSON_NAME"]

FORMATS = ("png", "npz")
JSON_NAME = "decomposition.json"
# Datasets that `dtifast.data.build_dataset` centre-crops to the model's size rather than resizes.
CENTER_CROP_DATASETS = ("instagram",)


@dataclasses.dataclass
class Decomposition:
    """The layered decomposition of N images by a model with L layers (L = 1 for single-object models).

    Every per-layer tensor is in depth order, back to front: compositing layer 0 over the background,
    then layer 1 over that, and so on (``out = mask · colour + (1 − mask) · out``) gives ``reconstruction``.

    Attributes:
        layers: ``(N, L, C, H, W)`` colours of the layers in ``[0, 1]``, after their transformations.
        masks: ``(N, L, 1, H, W)`` their alpha masks in ``[0, 1]``.
        background: ``(N, C, H, W)`` the transformed background (zeros when the model has none).
        reconstruction: ``(N, C, H, W)``.
        order: ``(N, L)`` int64: the model's layer index at each depth.
        sprite_index: ``(N, L)`` int64: the sprite selected at each depth (the empty sprite, when the
            model has one, is the last index ``K − 1``).
        layer_params: ``{name: (N, L, P)}`` the raw head outputs of the transformations of each depth's
            layer, as the :mod:`dtifast.ops` warps take them: ``sprite.<kind>`` (the selected sprite's
            own transformations) and ``layer.<kind>`` (the layer's, e.g. ``layer.position`` = ``(s, tx, ty)``).
        background_params: ``{name: (N, P)}`` those of the selected background (``<kind>``).
        background_index: ``(N,)`` int64: the background used (−1 when the model has none).
        semantic: ``(N, H, W)`` int64: 0 for the background, ``k + 1`` where sprite k is visible.
        instance: ``(N, H, W)`` int64: 0 for the background, ``l + 1`` where the model's layer l is visible.
        error: ``(N,)`` mean squared error between the reconstruction and the image.
    """
    layers: torch.Tensor
    masks: torch.Tensor
    background: torch.Tensor
    reconstruction: torch.Tensor
    order: torch.Tensor
    sprite_index: torch.Tensor
    layer_params: dict[str, torch.Tensor]
    background_params: dict[str, torch.Tensor]
    background_index: torch.Tensor
    semantic: torch.Tensor
    instance: torch.Tensor
    error: torch.Tensor

    def __len__(self) -> int:
        return int(self.layers.shape[0])

    def to(self, device: str | torch.device) -> "Decomposition":
        """The same decomposition with every tensor on ``device``."""
        def move(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: v.to(device) for k, v in value.items()}
            return value.to(device)
        return Decomposition(**{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})


# ----------------------------------------------------------------------------------------------------
# The decomposition of a batch
# ----------------------------------------------------------------------------------------------------

def depth_order(occlusion: torch.Tensor) -> torch.Tensor:
    """The back-to-front order of layers from an occlusion matrix.

    .. math:: \\mathrm{front}_j = \\sum_{k \\ne j} o_{jk}, \\qquad \\mathrm{order} = \\mathrm{argsort}(\\mathrm{front})

    **Convention:** ``occlusion[j, k, n]`` is how much layer j hides layer k in image n (as in
    :func:`dtifast.ops.composite_layers`). A layer that hides more of the others is further in front;
    ties keep the model's layer order (stable sort). For a hard order, ``o_{jk} = 1`` exactly when j is
    in front of k, this recovers it: the fixed ``tril(1, -1)`` gives ``0, 1, …, L − 1``. An occlusion with a
    cycle (j hides k hides i hides j), which no stacking order reproduces, is ordered by the sums all the same.

    Args:
        occlusion: ``(L, L, N)``.

    Returns:
        ``(N, L)`` int64: the layer index at each depth, back (0) to front.

    Example:
        >>> depth_order(torch.tril(torch.ones(3, 3), -1)[..., None]).tolist()
        [[0, 1, 2]]
    """
    L = occlusion.shape[0]
    off_diagonal = 1 - torch.eye(L, dtype=occlusion.dtype, device=occlusion.device)
    front = (occlusion * off_diagonal[..., None]).sum(1)                       # (L, N)
    return torch.argsort(front.T, dim=1, stable=True)


def _hard_occlusion(order: torch.Tensor) -> torch.Tensor:
    """``(N, L)`` back-to-front order → ``(L, L, N)`` occlusion: 1 where layer j is in front of layer k."""
    rank = torch.argsort(order, dim=1)                                          # depth of each layer
    return (rank[:, :, None] > rank[:, None, :]).permute(1, 2, 0).contiguous()


def _check_images(model: DTISprites, images: object) -> torch.Tensor:
    if not isinstance(model, DTISprites):
        raise TypeError(f"model must be a dtifast DTISprites, got {type(model).__name__}")
    check_tensor(images, "images", ndim=4, dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
                 finite=False)
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("images is an empty batch (N = 0)")
    if c != model.n_channels:
        raise ValueError(f"the model takes {model.n_channels}-channel images, got {c} channels "
                         f"(images of shape {tuple(images.shape)})")
    if (h, w) != tuple(model.img_size):
        H, W = model.img_size
        raise ValueError(f"the model takes {H}×{W} images, got {h}×{w}; resize them first "
                         f"(dtifast decompose resizes image files as the training data was)")
    lo, hi = float(images.min()), float(images.max())  # NaN fails both comparisons below
    if not (lo >= 0 and hi <= 1):
        raise ValueError(f"images must hold values in [0, 1], got values in [{lo:g}, {hi:g}]")
    param = model.prototype_params
    return images.to(device=param.device, dtype=param.dtype)


def _named_params(tsf: torch.nn.Module, prefix: str, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{prefix + module kind: (G, N, P)}`` for the active modules of a transformation sequence (a kind
    used twice in one sequence gets its module index appended)."""
    kinds = [s.kind for s in tsf.specs]
    named = {}
    for i, params in tsf.predict(features).items():
        kind = kinds[i] if kinds.count(kinds[i]) == 1 else f"{kinds[i]}{i}"
        named[prefix + kind] = params
    return named


def _transform_params(model: DTISprites, features: torch.Tensor, sprite_index: torch.Tensor,
                      background_index: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The parameters of the selected sprites ``{name: (L, N, P)}`` and backgrounds ``{name: (N, P)}``."""
    L, N = sprite_index.shape
    images = torch.arange(N, device=features.device)
    # Sprite heads are numbered layer · K + sprite (see DTISprites).
    heads = torch.arange(L, device=features.device)[:, None] * model.n_sprites + sprite_index
    layer = {name: p[heads, images] for name, p in _named_params(model.sprite_tsf, "sprite.", features).items()}
    if model.has_layer_tsf:
        layer.update(_named_params(model.layer_tsf, "layer.", features))
    background = {}
    if model.n_backgrounds:
        background = {name: p[background_index, images]
                      for name, p in _named_params(model.bkg_tsf, "", features).items()}
    return layer, background


def _background_index(model: DTISprites, images: torch.Tensor) -> torch.Tensor:
    N, M = images.shape[0], model.n_backgrounds
    if M == 0:
        return torch.full((N,), -1, dtype=torch.long, device=images.device)
    if model.estimate_minimum or M == 1:
        return torch.zeros(N, dtype=torch.long, device=images.device)
    # A single-object model with several backgrounds keeps the best of its M·K candidates (index m·K + k);
    # model.decompose does not say which m, the candidate distances of a forward do.
    return model(images).distances.argmin(1) // model.n_sprites


def _by_depth(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``(L, N, ...)`` in the model's layer order → ``(N, L, ...)`` in depth order ``(N, L)``."""
    t = t.transpose(0, 1)
    return torch.take_along_dim(t, order.view(*order.shape, *([1] * (t.dim() - 2))), dim=1)


def decompose(model: DTISprites, images: torch.Tensor) -> Decomposition:
    """The layered decomposition of a batch of images by a DTI-Sprites model.

    The model runs in eval mode (its mode is restored after) under ``torch.no_grad``, without mask noise:
    the model's ``inject_noise`` is a training-time regulariser, so the decomposition is deterministic.

    **Convention:** layers are sorted back to front (see :func:`depth_order`); compositing them in that
    order over ``background`` (``out = m · x + (1 − m) · out``) gives ``reconstruction``. Values are in
    ``[0, 1]``; images are ``(N, C, H, W)`` with channels first.

    Args:
        model: a :class:`~dtifast.model.DTISprites` (multi-object or single-object), on any device.
        images: ``(N, C, H, W)`` floating-point images in ``[0, 1]``, with the model's channels ``C`` and
            size ``(H, W)``; moved to the model's device and dtype.

    Returns:
        :class:`Decomposition`, on the model's device.

    Raises:
        TypeError: ``model`` is not a DTISprites, or ``images`` is not a floating-point tensor.
        ValueError: ``images`` has the wrong number of dims, channels or size, no image, or values
            outside ``[0, 1]`` (or NaN).

    Example:
        >>> d = decompose(model, torch.rand(2, 3, 35, 35))  # doctest: +SKIP
        >>> d.layers.shape, d.order.shape  # doctest: +SKIP
        (torch.Size([2, 3, 3, 35, 35]), torch.Size([2, 3]))
    """
    images = _check_images(model, images)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _decompose(model, images)
    finally:
        model.train(was_training)


def _decompose(model: DTISprites, images: torch.Tensor) -> Decomposition:
    # model.decompose does not return the transformation parameters. Their heads are small MLPs on the
    # encoder's features, so keep those features rather than encoding the images a second time.
    features: list[torch.Tensor] = []
    hook = model.encoder.register_forward_hook(lambda module, inputs, output: features.append(output))
    try:
        parts = model.decompose(images)
    finally:
        hook.remove()
    order = depth_order(parts["occlusion"])
    occlusion = _hard_occlusion(order).to(images.dtype)
    N, L = order.shape
    background = parts["background"]
    if background is None:
        background = torch.zeros_like(images)  # the model composites over black
    recon = ops.composite_layers(parts["layers"], parts["masks"], occlusion, background, backend=model.backend)
    background_index = _background_index(model, images)
    layer_params, background_params = _transform_params(model, features[0], parts["sprite_index"],
                                                         background_index)
    # The same label maps as `dtifast eval` and `dtifast pictures`, but from the hard order above.
    labelled = {"masks": parts["masks"], "occlusion": occlusion}
    layer_ids = torch.arange(1, L + 1, device=images.device)[:, None].expand(L, N)
    return Decomposition(
        layers=_by_depth(parts["layers"], order), masks=_by_depth(parts["masks"], order), background=background,
        reconstruction=recon, order=order, sprite_index=_by_depth(parts["sprite_index"], order),
        layer_params={k: _by_depth(v, order) for k, v in layer_params.items()},
        background_params=background_params, background_index=background_index,
        semantic=model._label_map(labelled, parts["sprite_index"] + 1, model.n_sprites),
        instance=model._label_map(labelled, layer_ids, L),
        error=((recon - images) ** 2).flatten(1).mean(1))


# ----------------------------------------------------------------------------------------------------
# Models and image files
# ----------------------------------------------------------------------------------------------------

def load_model(source: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[DTISprites, bool]:
    """The model of a run folder, of a run's ``checkpoint.pt``, or of the authors' ``model.pkl``.

    Returns:
        The model (eval mode, on ``device``) and whether its training images were centre-cropped to
        its size (rather than resized).

    Raises:
        FileNotFoundError: ``source`` does not exist, or is a folder without ``checkpoint.pt``.
        ValueError: ``source`` is a file in neither format (the authors' checkpoints that do not record
            their image size must be imported with ``dtifast import-upstream --img-size`` first).
    """
    path = pathlib.Path(source)
    if path.is_dir() or path.name == CHECKPOINT_NAME:
        run_dir = path if path.is_dir() else path.parent
        if not (run_dir / CHECKPOINT_NAME).is_file():
            raise FileNotFoundError(f"{run_dir} is not a run folder (no {CHECKPOINT_NAME}); give a folder written "
                                    "by `dtifast train` or `dtifast import-upstream`, or the authors' model.pkl")
        cfg, model, _ = load_run(run_dir, device)
        return model, cfg["dataset"]["name"] in CENTER_CROP_DATASETS
    if not path.is_file():
        raise FileNotFoundError(f"no run folder or checkpoint at {path}")
    return _load_upstream(path).to(device), False


def _load_upstream(path: pathlib.Path) -> DTISprites:
    hint = (f"give a run folder, or import the authors' checkpoint first: dtifast import-upstream {path} "
            "--out RUN_DIR [--img-size H W]")
    try:
        return load_upstream_checkpoint(path)
    except ValueError as err:  # UpstreamFormatError included
        raise ValueError(f"cannot load {path}: {err}; {hint}") from err
    except Exception as err:  # torch.load raises several types for files that are not checkpoints
        first_line = str(err).splitlines()[0][:120] if str(err) else ""  # torch's messages run to a page
        raise ValueError(f"cannot read {path} as a checkpoint ({type(err).__name__}: {first_line}); {hint}") from err


def list_inputs(path: str | os.PathLike) -> tuple[list[pathlib.Path], pathlib.Path]:
    """The image files to decompose and the folder their output names are relative to.

    ``path`` is an image file, or a folder searched recursively for images (common formats). A dataset
    folder with an ``images/`` sub-folder (the multi-object and Weizmann Horse layouts) is read from
    ``images/`` only, so that its masks are not decomposed.

    Raises:
        FileNotFoundError: ``path`` does not exist. ValueError: the folder holds no image.
    """
    path = pathlib.Path(path)
    if path.is_file():
        return [path], path.parent
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    folder = path / "images" if (path / "images").is_dir() else path
    files = list_images(folder, recursive=True)
    if not files:
        raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) found in {folder}")
    return files, folder


def _output_names(files: Sequence[pathlib.Path], root: pathlib.Path) -> list[str]:
    """Each file's path relative to ``root`` without its extension, or with it (``a_jpg``) where two
    files differ only by their extension."""
    stems = [f.relative_to(root).with_suffix("").as_posix() for f in files]
    counts = collections.Counter(stems)
    return [s if counts[s] == 1 else f"{s}_{f.suffix[1:].lower()}" for s, f in zip(stems, files)]


def _read_batch(files: Sequence[pathlib.Path], model: DTISprites, crop: bool
                ) -> tuple[list[int], list[np.ndarray], list[tuple[pathlib.Path, str]]]:
    """The readable files of a batch (their positions and ``uint8`` arrays) and the unreadable ones."""
    mode = {3: "RGB", 1: "L"}.get(model.n_channels)
    if mode is None:
        raise ValueError(f"image files cannot feed a model with {model.n_channels} channels (only 1 or 3)")
    read = read_image_fit if crop else read_image
    kept, arrays, failed = [], [], []
    for i, path in enumerate(files):
        try:
            arrays.append(read(path, mode, tuple(model.img_size)))
            kept.append(i)
        except (ValueError, OSError) as err:
            log.warning("skipping %s: %s", path, err)
            failed.append((path, str(err)))
    return kept, arrays, failed


def _as_tensor(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """``uint8`` ``(H, W, 3)`` or ``(H, W)`` arrays → ``(N, C, H, W)`` float32 in ``[0, 1]``."""
    x = torch.from_numpy(np.stack(arrays))
    x = x[..., None] if x.dim() == 3 else x
    return x.permute(0, 3, 1, 2).float().div_(255)


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------

def _image_entry(name: str, path: pathlib.Path, d: Decomposition, i: int) -> dict[str, Any]:
    """One image's record in ``decomposition.json`` (layers back to front)."""
    layers = [{"depth": depth, "layer": int(d.order[i, depth]), "sprite": int(d.sprite_index[i, depth]),
               "params": {k: v[i, depth].tolist() for k, v in d.layer_params.items()}}
              for depth in range(d.order.shape[1])]
    return {"name": name, "path": str(path), "error": float(d.error[i]), "order": d.order[i].tolist(),
            "layers": layers, "background": {"index": int(d.background_index[i]),
                                             "params": {k: v[i].tolist() for k, v in d.background_params.items()}}}


def write_pngs(folder: str | os.PathLike, image: torch.Tensor, d: Decomposition, i: int,
               sprite_palette: torch.Tensor, instance_palette: torch.Tensor) -> None:
    """Image ``i`` of ``d`` as PNGs in ``folder`` (the layout in the module docstring).

    Args:
        image: ``(C, H, W)`` the input as the model saw it.
        sprite_palette: ``(K + 1, 3)`` colours of the semantic map; instance_palette: ``(L + 1, 3)``.
    """
    folder = pathlib.Path(folder)
    (folder / "layers").mkdir(parents=True, exist_ok=True)
    to_pil(image).save(folder / "input.png")
    for depth in range(d.layers.shape[1]):
        rgba = to_pil(d.layers[i, depth])
        alpha = (d.masks[i, depth, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        rgba.putalpha(Image.fromarray(alpha, "L"))
        rgba.save(folder / "layers" / f"{depth}.png")
    to_pil(d.background[i]).save(folder / "background.png")
    to_pil(d.reconstruction[i]).save(folder / "reconstruction.png")
    to_pil(colorize(d.semantic[i:i + 1], sprite_palette)[0]).save(folder / "semantic.png")
    to_pil(colorize(d.instance[i:i + 1], instance_palette)[0]).save(folder / "instance.png")


def write_npz(path: str | os.PathLike, image: torch.Tensor, d: Decomposition, i: int) -> None:
    """Image ``i`` of ``d`` as one ``.npz``: float32 ``image`` ``(C, H, W)``, ``layers`` ``(L, C, H, W)``,
    ``masks`` ``(L, 1, H, W)``, ``background``, ``reconstruction``, ``error`` ``()``; int64 ``order``,
    ``sprite_index`` ``(L,)``, ``background_index`` ``()``, ``semantic``, ``instance`` ``(H, W)``;
    ``layer_params/<name>`` ``(L, P)`` and ``background_params/<name>`` ``(P,)`` (layers back to front)."""
    arrays = {f.name: getattr(d, f.name)[i] for f in dataclasses.fields(d)
              if f.name not in ("layer_params", "background_params")}
    arrays.update({f"layer_params/{k}": v[i] for k, v in d.layer_params.items()})
    arrays.update({f"background_params/{k}": v[i] for k, v in d.background_params.items()})
    arrays["image"] = image
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{k: v.cpu().numpy() for k, v in arrays.items()})


def _check_out(out: pathlib.Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty (an earlier decomposition?); pass --overwrite to write over it")


def _model_summary(model: DTISprites, source: str | os.PathLike) -> dict[str, Any]:
    return {"source": str(source), "n_layers": model.n_objects, "n_sprites": model.n_sprites,
            "empty_sprite": model.n_sprites - 1 if model.add_empty_sprite else None,
            "n_backgrounds": model.n_backgrounds, "n_channels": model.n_channels, "img_size": list(model.img_size)}


def decompose_files(source: str | os.PathLike, inputs: str | os.PathLike, out: str | os.PathLike, *,
                    batch_size: int = 32, device: Optional[str | torch.device] = None, fmt: str = "png",
                    overwrite: bool = False, progress: Optional[bool] = None) -> dict[str, Any]:
    """Decompose image files with a trained model and write the results (``dtifast decompose``).

    Images are converted to the model's channels and resized to its size as its training data was
    (bilinear resize; centre crop for datasets trained that way), ``batch_size`` at a time. An unreadable
    file is logged (a warning naming it) and skipped.

    Args:
        source: a run folder, a run's ``checkpoint.pt`` or the authors' ``model.pkl`` (see :func:`load_model`).
        inputs: an image file or a folder (see :func:`list_inputs`).
        out: the output folder (layout in the module docstring).
        batch_size: images per forward.
        device: default CUDA when available.
        fmt: ``"png"`` (files per image) or ``"npz"`` (one array file per image).
        overwrite: write into a non-empty ``out`` (files of the same names are replaced, others left).
        progress: show a progress bar (None: only on a terminal).

    Returns:
        ``{"out", "n_images", "n_skipped", "format"}``.

    Raises:
        FileExistsError: ``out`` is not empty and ``overwrite`` is False.
        ValueError: no image found, none readable, or a bad argument.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive int, got {batch_size!r}")
    out = pathlib.Path(out)
    _check_out(out, overwrite)
    files, root = list_inputs(inputs)
    device = default_device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} but CUDA is not available here (use --device cpu)")
    model, crop = load_model(source, device)
    names = _output_names(files, root)
    palettes = sprite_palette(model.n_sprites), instance_palette(model.n_objects)
    entries: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    with tqdm(total=len(files), desc="decompose", unit="img", disable=None if progress is None else not progress,
              leave=False) as bar:
        for start in range(0, len(files), batch_size):
            batch = files[start:start + batch_size]
            kept, arrays, failed = _read_batch(batch, model, crop)
            skipped += [{"path": str(p), "error": e} for p, e in failed]
            if kept:
                images = _as_tensor(arrays)
                d = decompose(model, images.to(device)).to("cpu")
                for j, i in enumerate(kept):
                    name = names[start + i]
                    if fmt == "png":
                        write_pngs(out / name, images[j], d, j, *palettes)
                    else:
                        write_npz(out / f"{name}.npz", images[j], d, j)
                    entries.append(_image_entry(name, batch[i], d, j))
            bar.update(len(batch))
    if not entries:
        raise ValueError(f"none of the {len(files)} image files in {inputs} could be read (see the warnings)")
    summary = {"model": _model_summary(model, source), "format": fmt, "n_images": len(entries),
               "n_skipped": len(skipped), "images": entries, "skipped": skipped}
    tmp = out / f".{JSON_NAME}.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / JSON_NAME)
    if skipped:
        log.warning("skipped %d unreadable file(s) of %d (listed in %s)", len(skipped), len(files), out / JSON_NAME)
    return {"out": str(out), "n_images": len(entries), "n_skipped": len(skipped), "format": fmt}


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------

def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``dtifast decompose`` subcommand."""
    parser = subparsers.add_parser(
        "decompose", help="layered decompositions of new images (PNG layers, JSON, NPZ)",
        description="Decompose images with a trained model: per image, its layers as RGBA PNGs (back to front), "
                    "background, reconstruction, semantic and instance maps, and one decomposition.json with the "
                    "selected sprites, transformation parameters, occlusion order and reconstruction error. Images "
                    "are converted to the model's channels and resized to its size as its training data was "
                    "(bilinear resize, or centre crop for datasets trained that way, e.g. instagram).")
    parser.add_argument("model", type=pathlib.Path, metavar="RUN_DIR_OR_CHECKPOINT",
                        help="run folder (dtifast train / import-upstream), its checkpoint.pt, or the authors' "
                             "model.pkl when it records its image size")
    parser.add_argument("input", type=pathlib.Path, metavar="INPUT",
                        help="an image file, or a folder searched recursively (a dataset folder with images/ "
                             "is read from images/)")
    parser.add_argument("--out", type=pathlib.Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="png",
                        help="png: a folder of PNGs per image; npz: one array file per image (default png)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward (default 32)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    parser.add_argument("--with-noise", choices=("off",), default="off",
                        help="mask noise: off (the model's inject_noise is a training-time regulariser that "
                             "evaluation never applies, so decompositions are deterministic)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_decompose_main)
    return parser


def _decompose_main(args: argparse.Namespace) -> int:
    summary = decompose_files(args.model, args.input, args.out, batch_size=args.batch_size, device=args.device,
                              fmt=args.fmt, overwrite=args.overwrite, progress=False if args.no_progress else None)
    print(json.dumps(summary))
    return 0

"""Evaluation with the paper's protocol, on a trained model or a run folder.

* Multi-object datasets: ARI and ARI-FG (ground-truth background dropped) on instance masks, per image
  and averaged over images; mACC and mIoU over all classes, background included, from the global
  confusion matrix of the semantic maps after a Hungarian cluster-to-class mapping. The images are the
  first 320 of the set (upstream's ``eval_mode``).
* Single-object datasets: clustering accuracy of the selected sprite (Hungarian when K equals the
  number of classes, else each sprite to its majority class), and mACC / mIoU of the foreground mask
  when the dataset has masks.
* Always: the mean reconstruction loss (no mask noise), which ``dtifast report`` uses to spot outlier runs.

Results are fractions in [0, 1]; ``dtifast eval`` writes them to ``RUN_DIR/eval.json``.
"""
from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Mapping, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from .metrics import ari, clustering_accuracy, confusion_matrix, scores_from_confusion
from .runs import EVAL_NAME, check_dataset_matches, load_run, val_target_kwargs

N_EVAL_IMAGES = 320  # the paper evaluates on the first 320 images

__all__ = ["evaluate_model", "evaluate_run", "N_EVAL_IMAGES"]


def _split_target(target: Any) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(instance maps, semantic maps, class labels) from a batch of dataset targets; absent ones None."""
    if isinstance(target, Mapping):
        return target.get("instance"), target.get("semantic"), None
    if isinstance(target, torch.Tensor):
        if target.dim() == 1:
            # -1 marks images without a label (upstream's unlabelled sets): nothing to score.
            return None, None, None if bool((target < 0).any()) else target
        if target.dim() == 3:
            return None, target, None
        if target.dim() == 4 and target.shape[1] == 1:
            return None, target[:, 0], None
    raise TypeError(f"unsupported dataset target {type(target).__name__}"
                    f"{tuple(target.shape) if isinstance(target, torch.Tensor) else ''}: expected a dict with "
                    "'instance'/'semantic' maps, (B,) class labels or (B, H, W) masks")


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, dataset: Dataset, batch_size: int = 32,
                   device: Optional[str | torch.device] = None, workers: int = 0,
                   n_images: Optional[int] = None) -> dict[str, Any]:
    """Loss and scores of ``model`` on ``dataset`` (in order, first ``n_images`` images or all).

    Args:
        model: a :class:`~dtifast.model.DTISprites` (switched to eval mode here).
        dataset: yields ``(image (C, H, W), target)``; targets as :func:`dtifast.data.build_dataset` gives
            them: a dict with ``instance`` / ``semantic`` maps ``(H, W)`` for multi-object sets, a class
            label for single-object sets, a mask ``(H, W)`` for foreground segmentation sets.
        batch_size: images per forward.
        device: where to run (default: the model's device).
        workers: DataLoader workers.
        n_images: evaluate only the first ``n_images`` images.

    Returns:
        dict with ``loss`` and ``n_images``, plus ``ari`` / ``ari_fg`` (instance maps), ``macc`` /
        ``miou`` / ``global_acc`` / ``iou_per_class`` / ``acc_per_class`` (semantic maps), ``acc`` /
        ``macc`` (class labels), depending on the targets.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n_total = len(dataset)
    if n_total == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    if n_images is not None:
        if n_images < 1:
            raise ValueError(f"n_images must be >= 1, got {n_images}")
        dataset = torch.utils.data.Subset(dataset, range(min(n_images, n_total)))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    n_classes = getattr(getattr(dataset, "dataset", dataset), "n_classes", None)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    loss_sum, count = 0.0, 0
    aris: list[torch.Tensor] = []
    aris_fg: list[torch.Tensor] = []
    conf: Optional[torch.Tensor] = None
    labels_true: list[torch.Tensor] = []
    labels_pred: list[torch.Tensor] = []
    K = model.n_sprites
    for images, target in loader:
        images = images.to(device)
        out = model(images)
        loss_sum += float(out.loss.float()) * images.shape[0]
        count += images.shape[0]
        instance, semantic, labels = _split_target(target)
        if instance is not None:
            pred = model.instance_labels(images).cpu()
            aris.append(ari(instance.long(), pred, reduction="none"))
            aris_fg.append(ari(instance.long(), pred, ignore_background=True, reduction="none"))
        if semantic is not None:
            if n_classes is None:
                raise ValueError("the dataset gives semantic maps but no n_classes attribute")
            pred = model.semantic_labels(images).cpu()
            if model.n_objects == 1 and n_classes == 2:
                pred = (pred > 0).long()  # foreground segmentation: any sprite is foreground
            batch_conf = confusion_matrix(semantic.long(), pred, n_classes, max(n_classes, K + 1))
            conf = batch_conf if conf is None else conf + batch_conf
        if labels is not None:
            best = out.distances.float().argmin(1) % K
            labels_true.append(labels.long().cpu())
            labels_pred.append(best.cpu())
    model.train(was_training)
    result: dict[str, Any] = {"loss": loss_sum / count, "n_images": count}
    if aris:
        result["ari"] = float(torch.cat(aris).mean())
        result["ari_fg"] = float(torch.cat(aris_fg).mean())
    if conf is not None:
        scores = scores_from_confusion(conf)
        result.update(macc=scores["macc"], miou=scores["miou"], global_acc=scores["global_acc"],
                      acc_per_class=scores["acc_per_class"], iou_per_class=scores["iou_per_class"],
                      mapping=scores["mapping"].tolist())
    if labels_true:
        if n_classes is None:
            raise ValueError("the dataset gives class labels but no n_classes attribute")
        scores = clustering_accuracy(torch.cat(labels_true), torch.cat(labels_pred), n_classes, K)
        result.update(acc=scores["acc"], macc=scores["macc"], acc_per_class=scores["acc_per_class"],
                      mapping=scores["mapping"].tolist())
    return result


def evaluate_run(run_dir: str | os.PathLike, data_root: Optional[str | os.PathLike] = None,
                 device: Optional[str | torch.device] = None, batch_size: Optional[int] = None,
                 n_images: Optional[int] = N_EVAL_IMAGES, out: Optional[str | os.PathLike] = None) -> dict[str, Any]:
    """Evaluate a run folder's checkpoint on the first ``n_images`` images and write ``eval.json``.

    Args:
        run_dir: a folder written by ``dtifast train`` (or ``import-upstream``).
        data_root: where the dataset lives (the data module's default when None).
        device: default CUDA when available.
        batch_size: default the run's ``training.batch_size``.
        n_images: images evaluated (the paper: 320); None for the whole set.
        out: the JSON file (default ``RUN_DIR/eval.json``).

    Returns:
        The metrics (see :func:`evaluate_model`) with ``run``, ``dataset``, ``epoch``, ``iteration`` and
        ``seconds``.
    """
    from .data import build_dataset
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    run_dir = pathlib.Path(run_dir)
    start = time.perf_counter()
    cfg, model, state = load_run(run_dir, device)
    probe = build_dataset(cfg["dataset"], "eval", data_root, cache="none")  # metadata only, decodes nothing
    check_dataset_matches(cfg, probe, state.get("meta"))
    dataset = build_dataset(cfg["dataset"], "eval", data_root, **val_target_kwargs(probe))
    result = evaluate_model(model, dataset, batch_size=batch_size or cfg["training"]["batch_size"], device=device,
                            n_images=n_images)
    progress = state.get("progress", {})
    result.update(run=str(run_dir), dataset=cfg["dataset"]["name"], epoch=progress.get("epoch"),
                  iteration=progress.get("iteration"), seconds=time.perf_counter() - start)
    path = pathlib.Path(out) if out is not None else run_dir / EVAL_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    return result

"""Evaluation metrics of the paper: ARI / ARI-FG, mACC / mIoU with a Hungarian mapping, clustering accuracy.

Conventions shared by every function here:

* label maps are integer tensors ``(N, H, W)`` (or any shape with a leading image dim for :func:`ari`);
  label values are non-negative; ``0`` is the background in ground-truth instance and semantic maps;
* scores are fractions in [0, 1] (ARI can be negative), never percentages;
* a class with no pixel in either the ground truth or the prediction scores 0 in the per-class averages
  (upstream's ``nan_to_num``), so that mACC / mIoU always average over all ``n_classes`` classes.

The semantic scores are computed from one global confusion matrix; evaluation code that works batch by
batch accumulates :func:`confusion_matrix` results and calls :func:`scores_from_confusion` once at the end.
"""
from __future__ import annotations

from typing import Literal

import torch
from scipy.optimize import linear_sum_assignment

from .ops._checks import check_same_device_dtype, check_tensor

INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

__all__ = ["ari", "confusion_matrix", "scores_from_confusion", "semantic_scores", "clustering_accuracy",
           "hungarian_mapping"]


def _check_labels(labels_true: object, labels_pred: object, min_dim: int = 1) -> None:
    check_tensor(labels_true, "labels_true", dtypes=INT_DTYPES)
    check_tensor(labels_pred, "labels_pred", dtypes=INT_DTYPES)
    if labels_true.shape != labels_pred.shape:  # type: ignore[union-attr]
        raise ValueError(f"labels_true and labels_pred must have the same shape, got "
                         f"{tuple(labels_true.shape)} and {tuple(labels_pred.shape)}")  # type: ignore[union-attr]
    if labels_true.dim() < min_dim:  # type: ignore[union-attr]
        raise ValueError(f"labels must have at least {min_dim} dims (N, ...), got shape "
                         f"{tuple(labels_true.shape)}")  # type: ignore[union-attr]
    if labels_true.device != labels_pred.device:  # type: ignore[union-attr]
        check_same_device_dtype(("labels_true", labels_true), ("labels_pred", labels_pred))  # type: ignore[arg-type]
    for name, t in (("labels_true", labels_true), ("labels_pred", labels_pred)):
        if t.numel() and int(t.min()) < 0:  # type: ignore[union-attr]
            raise ValueError(f"{name} must hold non-negative labels, got minimum {int(t.min())}")  # type: ignore


def _comb2(n: torch.Tensor) -> torch.Tensor:
    return n * (n - 1) / 2


def ari(labels_true: torch.Tensor, labels_pred: torch.Tensor, ignore_background: bool = False,
        reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
    """Adjusted Rand Index between two instance labellings, computed per image.

    ``ARI = (Σ_ij C(n_ij) − E) / (½(Σ_i C(a_i) + Σ_j C(b_j)) − E)``
    with ``E = Σ_i C(a_i)·Σ_j C(b_j) / C(n)``,
    ``C(x) = x(x−1)/2``, ``n_ij`` the image's contingency table, ``a``/``b`` its row/column sums. Label
    values only name groups: any permutation of ``labels_pred`` gives the same score.

    With ``ignore_background=True`` (the paper's ARI-FG) the pixels whose ground truth is ``0`` are dropped
    before counting. When the score is 0/0 (both labellings put all pixels in one group, or all in
    singletons, or fewer than two pixels remain) the image scores 1, as in upstream and scikit-learn.

    Args:
        labels_true: ``(N, H, W)`` (or ``(N, *)``) integer ground-truth instance ids, 0 = background.
        labels_pred: same shape, integer predicted instance ids.
        ignore_background: drop ground-truth background pixels (ARI-FG).
        reduction: ``"mean"`` averages over the N images (the paper's protocol), ``"none"`` returns ``(N,)``.

    Returns:
        float64 tensor, ``()`` for ``"mean"`` or ``(N,)`` for ``"none"``, on the input's device.

    Example:
        >>> t = torch.tensor([[0, 0, 1, 2]]); p = torch.tensor([[0, 0, 1, 1]])
        >>> round(float(ari(t, p)), 4)
        0.5714
    """
    _check_labels(labels_true, labels_pred, min_dim=1)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    n_img = labels_true.shape[0]
    if n_img == 0:
        raise ValueError("ari needs at least one image, got an empty batch")
    t = labels_true.reshape(n_img, -1).long()
    p = labels_pred.reshape(n_img, -1).long()
    # Compact the label values so that the per-image contingency tables stay small whatever ids come in.
    _, t = torch.unique(t, return_inverse=True)
    _, p = torch.unique(p, return_inverse=True)
    n_t, n_p = int(t.max()) + 1, int(p.max()) + 1
    weights = (labels_true.reshape(n_img, -1) != 0).double() if ignore_background else None
    offset = torch.arange(n_img, device=t.device)[:, None] * (n_t * n_p)
    flat = (offset + t * n_p + p).reshape(-1)
    table = torch.bincount(flat, weights=None if weights is None else weights.reshape(-1),
                           minlength=n_img * n_t * n_p).double().reshape(n_img, n_t, n_p)
    sum_table = _comb2(table).sum((1, 2))
    sum_a = _comb2(table.sum(2)).sum(1)
    sum_b = _comb2(table.sum(1)).sum(1)
    total = _comb2(table.sum((1, 2)))
    expected = torch.where(total > 0, sum_a * sum_b / total.clamp_min(1), torch.zeros_like(total))
    maximum = (sum_a + sum_b) / 2
    denom = maximum - expected
    # denom == 0 only when both labellings are the same trivial partition (see the docstring): score 1.
    scores = torch.where(denom != 0, (sum_table - expected) / torch.where(denom != 0, denom, 1.0),
                         torch.ones_like(denom))
    return scores.mean() if reduction == "mean" else scores


def confusion_matrix(labels_true: torch.Tensor, labels_pred: torch.Tensor, n_true: int,
                     n_pred: int) -> torch.Tensor:
    """Pixel confusion matrix, ground truth as rows and prediction as columns.

    Args:
        labels_true: integer tensor of any shape, values in ``[0, n_true)``.
        labels_pred: same shape, values in ``[0, n_pred)``.
        n_true: number of ground-truth classes (rows).
        n_pred: number of predicted clusters (columns).

    Returns:
        int64 tensor ``(n_true, n_pred)`` on the input's device.
    """
    _check_labels(labels_true, labels_pred, min_dim=0)
    for name, n in (("n_true", n_true), ("n_pred", n_pred)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    for name, t, n in (("labels_true", labels_true, n_true), ("labels_pred", labels_pred, n_pred)):
        if t.numel() and int(t.max()) >= n:
            raise ValueError(f"{name} holds label {int(t.max())} but only {n} labels were declared "
                             f"(values must lie in [0, {n}))")
    flat = labels_true.reshape(-1).long() * n_pred + labels_pred.reshape(-1).long()
    return torch.bincount(flat, minlength=n_true * n_pred).reshape(n_true, n_pred)


def hungarian_mapping(confusion: torch.Tensor) -> torch.Tensor:
    """One-to-one cluster-to-class mapping maximising the matched pixels.

    Args:
        confusion: ``(n_classes, n_clusters)`` counts, classes as rows.

    Returns:
        int64 tensor ``(n_clusters,)``: the class each cluster maps to, or ``-1`` for clusters left
        unmatched (when there are more clusters than classes).
    """
    check_tensor(confusion, "confusion", ndim=2, dtypes=(*INT_DTYPES, torch.float32, torch.float64))
    rows, cols = linear_sum_assignment(-confusion.detach().cpu().double().numpy())
    mapping = torch.full((confusion.shape[1],), -1, dtype=torch.int64)
    mapping[torch.as_tensor(cols, dtype=torch.int64)] = torch.as_tensor(rows, dtype=torch.int64)
    return mapping


def scores_from_confusion(confusion: torch.Tensor) -> dict[str, object]:
    """mACC, mIoU and global accuracy from a global confusion matrix after a Hungarian mapping.

    Each class is matched to at most one cluster (:func:`hungarian_mapping`). For class ``c`` matched to
    cluster ``k``: ``TP = conf[c, k]``, ``acc_c = TP / Σ_j conf[c, j]`` and
    ``iou_c = TP / (Σ_j conf[c, j] + Σ_i conf[i, k] − TP)``; an unmatched class has ``TP = 0``. Pixels of
    unmatched clusters count as errors for their true class. 0/0 scores 0 (upstream's ``nan_to_num``).

    Args:
        confusion: ``(n_classes, n_clusters)`` counts, classes as rows (:func:`confusion_matrix`).

    Returns:
        dict with ``macc``, ``miou``, ``global_acc`` (floats), ``acc_per_class`` and ``iou_per_class``
        (lists of ``n_classes`` floats) and ``mapping`` (``(n_clusters,)`` int64 tensor, cluster → class).
    """
    check_tensor(confusion, "confusion", ndim=2, dtypes=(*INT_DTYPES, torch.float32, torch.float64))
    conf = confusion.detach().cpu().double()
    n_classes = conf.shape[0]
    mapping = hungarian_mapping(conf)
    tp = torch.zeros(n_classes, dtype=torch.float64)
    pred_count = torch.zeros(n_classes, dtype=torch.float64)
    matched = mapping >= 0
    clusters = torch.nonzero(matched).flatten()
    classes = mapping[matched]
    tp[classes] = conf[classes, clusters]
    pred_count[classes] = conf[:, clusters].sum(0)
    true_count = conf.sum(1)
    acc = torch.nan_to_num(tp / true_count, nan=0.0)
    iou = torch.nan_to_num(tp / (true_count + pred_count - tp), nan=0.0)
    total = conf.sum()
    return {
        "macc": float(acc.mean()),
        "miou": float(iou.mean()),
        "global_acc": float(tp.sum() / total) if total > 0 else 0.0,
        "acc_per_class": acc.tolist(),
        "iou_per_class": iou.tolist(),
        "mapping": mapping,
    }


def semantic_scores(labels_true: torch.Tensor, labels_pred: torch.Tensor, n_classes: int) -> dict[str, object]:
    """mACC and mIoU over all classes (background included) after a Hungarian cluster-to-class mapping.

    The paper's protocol: one global confusion matrix over all pixels of all images, reordered with the
    Hungarian mapping, then accuracy and IoU averaged over the ``n_classes`` classes
    (:func:`scores_from_confusion` gives the formulas).

    Args:
        labels_true: ``(N, H, W)`` integer class ids in ``[0, n_classes)``, 0 = background.
        labels_pred: ``(N, H, W)`` integer cluster ids (e.g. sprite index + 1, 0 = background); there may
            be more or fewer clusters than classes.
        n_classes: number of ground-truth classes, background included.

    Returns:
        dict with ``macc``, ``miou``, ``global_acc``, ``acc_per_class``, ``iou_per_class``, ``mapping``
        (``(n_clusters,)`` int64, cluster → class or -1) and ``confusion`` (``(n_classes, n_clusters)``).

    Example:
        >>> t = torch.tensor([[[0, 1], [1, 2]]]); p = torch.tensor([[[2, 0], [0, 1]]])
        >>> semantic_scores(t, p, 3)["miou"]
        1.0
    """
    _check_labels(labels_true, labels_pred, min_dim=1)
    if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
    n_pred = max(n_classes, int(labels_pred.max()) + 1 if labels_pred.numel() else 1)
    conf = confusion_matrix(labels_true, labels_pred, n_classes, n_pred)
    out = scores_from_confusion(conf)
    out["confusion"] = conf
    return out


def clustering_accuracy(labels_true: torch.Tensor, labels_pred: torch.Tensor, n_classes: int,
                        n_clusters: int) -> dict[str, object]:
    """Clustering accuracy for single-object datasets (one class per image), as upstream scores it.

    With as many clusters as classes the mapping is the one-to-one Hungarian mapping; otherwise each
    cluster goes to the class it holds most images of (many-to-one), so that several sprites can share a
    class.

    Args:
        labels_true: ``(N,)`` integer class ids in ``[0, n_classes)``.
        labels_pred: ``(N,)`` integer cluster ids in ``[0, n_clusters)`` (the selected sprite).
        n_classes: number of classes.
        n_clusters: number of clusters (sprites).

    Returns:
        dict with ``acc`` (global accuracy), ``macc`` (mean per-class accuracy), ``acc_per_class`` and
        ``mapping`` (``(n_clusters,)`` int64 cluster → class, -1 where unmatched).
    """
    _check_labels(labels_true, labels_pred, min_dim=1)
    if labels_true.dim() != 1:
        raise ValueError(f"clustering labels must be 1-D (N,), got shape {tuple(labels_true.shape)}")
    conf = confusion_matrix(labels_true, labels_pred, n_classes, n_clusters).cpu().double()
    if n_clusters == n_classes:
        mapping = hungarian_mapping(conf)
    else:
        mapping = conf.argmax(0)
        # A cluster with no image at all maps nowhere (argmax of zeros would pick class 0).
        mapping[conf.sum(0) == 0] = -1
    correct = torch.zeros(n_classes, dtype=torch.float64)
    for k in range(n_clusters):
        c = int(mapping[k])
        if c >= 0:
            correct[c] += conf[c, k]
    true_count = conf.sum(1)
    acc_per_class = torch.nan_to_num(correct / true_count, nan=0.0)
    return {
        "acc": float(correct.sum() / conf.sum()),
        "macc": float(acc_per_class.mean()),
        "acc_per_class": acc_per_class.tolist(),
        "mapping": mapping,
    }

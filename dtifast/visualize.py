"""Pictures: sprite grids, the paper's decomposition figure (Fig. 4–6), training curves, the K sweep.

Colours are shared across every picture of a run: sprite ``k`` has colour ``palette[k + 1]`` both as
its border in the sprite grid and in semantic maps (whose label is sprite index + 1); ``palette[0]`` is
the background. Instance maps use a separate palette indexed by layer (0 = background).

All functions take image tensors with values in [0, 1] (clamped for display); 1-channel images are
shown in gray. Figures are drawn with matplotlib's Agg backend, so no display is needed.
"""
from __future__ import annotations

import colorsys
import csv
import math
import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .ops._checks import check_shape, check_tensor  # noqa: E402

BACKGROUND_COLOR = (0.12, 0.12, 0.12)
# Cells of the sprite grid show masked sprites over this gray, so that black sprites stay visible.
SPRITE_BACKDROP = 0.5

__all__ = ["sprite_palette", "instance_palette", "colorize", "to_pil", "sprite_grid", "decomposition_figure",
           "training_curves", "find_elbow", "sweep_figure", "read_csv_columns", "save_figure",
           "make_pictures"]


def sprite_palette(n_sprites: int) -> torch.Tensor:
    """Colours for semantic maps and sprite borders: ``(n_sprites + 1, 3)``, row 0 the background.

    Hues are spread evenly in HLS space (upstream's seaborn ``hls`` palette), so neighbours differ.
    """
    if not isinstance(n_sprites, int) or n_sprites < 0:
        raise ValueError(f"n_sprites must be a non-negative int, got {n_sprites!r}")
    cols = [BACKGROUND_COLOR] + [colorsys.hls_to_rgb(k / max(n_sprites, 1), 0.6, 0.65) for k in range(n_sprites)]
    return torch.tensor(cols, dtype=torch.float32)


def instance_palette(n_instances: int) -> torch.Tensor:
    """Colours for instance maps: ``(n_instances + 1, 3)``, row 0 the background (matplotlib's tab10/tab20)."""
    if not isinstance(n_instances, int) or n_instances < 0:
        raise ValueError(f"n_instances must be a non-negative int, got {n_instances!r}")
    cmap = plt.get_cmap("tab10" if n_instances <= 10 else "tab20")
    cols = [BACKGROUND_COLOR] + [cmap(i % cmap.N)[:3] for i in range(n_instances)]
    return torch.tensor(cols, dtype=torch.float32)


def colorize(labels: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Paint a label map: ``(N, H, W)`` integer labels → ``(N, 3, H, W)`` colours from ``palette`` ``(P, 3)``.

    Labels beyond the palette wrap around (``label % P``) rather than failing, so a map with more labels
    than expected still renders.
    """
    check_tensor(labels, "labels", ndim=3, dtypes=(torch.uint8, torch.int16, torch.int32, torch.int64))
    check_tensor(palette, "palette", ndim=2)
    check_shape(palette, "palette", ("P", 3))
    idx = labels.long().cpu() % palette.shape[0]
    return palette.cpu()[idx].permute(0, 3, 1, 2).contiguous()


def _rgb(x: torch.Tensor) -> np.ndarray:
    # (C, H, W) in [0, 1] -> (H, W, 3) uint8-ready float array; gray images repeated to RGB.
    x = x.detach().float().cpu().clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x[:3].permute(1, 2, 0).numpy()


def to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """A ``(C, H, W)`` image in [0, 1] as a PIL RGB image, enlarged ``scale`` times (nearest neighbour)."""
    check_tensor(image, "image", ndim=3)
    img = Image.fromarray((_rgb(image) * 255).round().astype(np.uint8))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def sprite_grid(prototypes: torch.Tensor, masks: torch.Tensor | None = None, palette: torch.Tensor | None = None,
                n_cols: int | None = None, scale: int = 4, border: int = 3) -> Image.Image:
    """The learned sprites in a grid, each framed by its colour (the colour of its semantic label).

    Args:
        prototypes: ``(K, C, h, w)`` sprite appearances in [0, 1].
        masks: ``(K, 1, h, w)`` sprite masks in [0, 1]; sprites are drawn as ``mask·appearance`` over a
            gray backdrop. None draws the appearances alone.
        palette: ``(K + 1, 3)`` colours (default :func:`sprite_palette`); row ``k + 1`` frames sprite ``k``.
        n_cols: sprites per row (default about √K·1.5).
        scale: enlargement factor (nearest neighbour) so that small sprites stay readable.
        border: frame width in enlarged pixels.

    Returns:
        A PIL RGB image.
    """
    check_tensor(prototypes, "prototypes", ndim=4)
    k, c, h, w = prototypes.shape
    if k == 0:
        raise ValueError("prototypes must hold at least one sprite, got K = 0")
    if masks is not None:
        check_tensor(masks, "masks", ndim=4)
        check_shape(masks, "masks", (k, 1, h, w))
    palette = sprite_palette(k) if palette is None else palette
    check_tensor(palette, "palette", ndim=2)
    if palette.shape[0] < k + 1 or palette.shape[1] != 3:
        raise ValueError(f"palette must have shape ({k + 1}, 3) or more rows, got {tuple(palette.shape)}")
    if scale < 1 or border < 0:
        raise ValueError(f"scale must be >= 1 and border >= 0, got scale={scale}, border={border}")
    protos = prototypes.detach().float().cpu().clamp(0, 1)
    if c == 1:
        protos = protos.expand(-1, 3, -1, -1)
    if masks is not None:
        m = masks.detach().float().cpu().clamp(0, 1)
        protos = m * protos + (1 - m) * SPRITE_BACKDROP
    n_cols = n_cols or max(1, math.ceil(math.sqrt(k) * 1.5))
    n_rows = math.ceil(k / n_cols)
    cell_h, cell_w, gap = h * scale + 2 * border, w * scale + 2 * border, 2
    canvas = Image.new("RGB", (n_cols * (cell_w + gap) + gap, n_rows * (cell_h + gap) + gap), (255, 255, 255))
    for i in range(k):
        r, col = divmod(i, n_cols)
        color = tuple(int(round(v * 255)) for v in palette[i + 1].tolist())
        cell = Image.new("RGB", (cell_w, cell_h), color)
        cell.paste(to_pil(protos[i], scale), (border, border))
        canvas.paste(cell, (gap + col * (cell_w + gap), gap + r * (cell_h + gap)))
    return canvas


def decomposition_figure(images: torch.Tensor, reconstructions: torch.Tensor, semantic: torch.Tensor,
                         instance: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor,
                         background: torch.Tensor | None = None, palette: torch.Tensor | None = None,
                         n_sprites: int | None = None) -> plt.Figure:
    """The paper's Fig. 4–6 layout: one row per image; columns input, reconstruction, semantic map in
    sprite colours, instance map, then each layer (``mask·appearance`` over white) and the background.

    Args:
        images: ``(N, C, H, W)`` inputs.
        reconstructions: ``(N, C, H, W)``.
        semantic: ``(N, H, W)`` integer semantic labels (sprite index + 1, 0 = background).
        instance: ``(N, H, W)`` integer instance labels (layer index + 1, 0 = background).
        layers: ``(L, N, C, H, W)`` layer appearances after their transforms.
        masks: ``(L, N, 1, H, W)`` layer masks.
        background: ``(N, C, H, W)`` transformed backgrounds, or None when the model has none.
        palette: semantic colours (default ``sprite_palette(n_sprites)``).
        n_sprites: K, used for the default palette (default: the largest semantic label).

    Returns:
        The matplotlib figure (call ``savefig``; close it with ``plt.close(fig)``).
    """
    check_tensor(images, "images", ndim=4)
    n, c, h, w = images.shape
    check_shape(reconstructions, "reconstructions", (n, c, h, w))
    for name, t in (("semantic", semantic), ("instance", instance)):
        check_tensor(t, name, ndim=3, dtypes=(torch.uint8, torch.int16, torch.int32, torch.int64))
        check_shape(t, name, (n, h, w))
    check_tensor(layers, "layers", ndim=5)
    n_layers = layers.shape[0]
    check_shape(layers, "layers", (n_layers, n, c, h, w))
    check_tensor(masks, "masks", ndim=5)
    check_shape(masks, "masks", (n_layers, n, 1, h, w))
    if background is not None:
        check_tensor(background, "background", ndim=4)
        check_shape(background, "background", (n, c, h, w))
    if palette is None:
        palette = sprite_palette(n_sprites if n_sprites is not None else int(semantic.max()))
    sem_rgb = colorize(semantic, palette)
    inst_rgb = colorize(instance, instance_palette(max(n_layers, int(instance.max()))))
    m = masks.detach().float().cpu().clamp(0, 1)
    shown_layers = m * layers.detach().float().cpu().clamp(0, 1) + (1 - m)
    columns = [("input", images), ("reconstruction", reconstructions), ("semantic", sem_rgb),
               ("instances", inst_rgb)]
    columns += [(f"layer {i + 1}", shown_layers[i]) for i in range(n_layers)]
    if background is not None:
        columns.append(("background", background))
    fig, axes = plt.subplots(n, len(columns), figsize=(1.3 * len(columns), 1.3 * n + 0.3), squeeze=False)
    for j, (title, imgs) in enumerate(columns):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(_rgb(imgs[i]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout(pad=0.3)
    return fig


def read_csv_columns(path: str | pathlib.Path) -> dict[str, list[float]]:
    """A CSV log as ``{column: values}``; empty cells become NaN (metrics logged at other intervals)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CSV log at {path}")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                cols.setdefault(key, []).append(float(value) if value not in ("", None) else math.nan)
            except ValueError:
                continue  # a text column (e.g. a message) has no place on a curve
    return cols


def training_curves(train_log: str | pathlib.Path, val_log: str | pathlib.Path | None = None,
                    scores: Sequence[str] = ("ari_fg", "ari", "miou", "macc", "acc")) -> plt.Figure:
    """Training curves: train and validation loss against iterations (log scale) and validation scores.

    Args:
        train_log: the run's ``train_metrics.csv`` (columns ``iteration``, ``loss``, …).
        val_log: the run's ``val_metrics.csv`` (columns ``iteration``, ``loss``, scores…), if any.
        scores: score columns to draw from ``val_log`` when present.
    """
    train = read_csv_columns(train_log)
    val = read_csv_columns(val_log) if val_log is not None and pathlib.Path(val_log).is_file() else {}
    present = [s for s in scores if s in val and not all(math.isnan(v) for v in val[s])]
    fig, axes = plt.subplots(1, 2 if present else 1, figsize=(10 if present else 5.5, 3.6), squeeze=False)
    ax = axes[0, 0]
    if "iteration" not in train or "loss" not in train:
        raise ValueError(f"{train_log} must have 'iteration' and 'loss' columns, got {sorted(train)}")
    ax.plot(train["iteration"], train["loss"], label="train loss")
    if "loss" in val:
        ax.plot(val["iteration"], val["loss"], "o-", label="val loss")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("reconstruction loss (MSE)")
    ax.legend()
    ax.grid(alpha=0.3)
    if present:
        ax2 = axes[0, 1]
        for s in present:
            ax2.plot(val["iteration"], val[s], "o-", label=s)
        ax2.set_xlabel("iteration")
        ax2.set_ylabel("validation score")
        ax2.set_ylim(min(0.0, *(v for s in present for v in val[s] if not math.isnan(v))), 1.0)
        ax2.legend()
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def find_elbow(ks: Sequence[float], losses: Sequence[float]) -> int:
    """Index of the elbow of a decreasing loss-against-K curve.

    Both axes are rescaled to [0, 1]; the elbow is the point farthest below the chord joining the first
    and last points (the "Kneedle" criterion). With fewer than three points the last one is returned.
    """
    k = np.asarray(ks, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if k.shape != y.shape or k.ndim != 1 or len(k) == 0:
        raise ValueError(f"ks and losses must be 1-D sequences of one length, got {k.shape} and {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("losses must be finite")
    if len(k) < 3:
        return len(k) - 1
    order = np.argsort(k)
    k, y = k[order], y[order]
    kn = (k - k[0]) / (k[-1] - k[0]) if k[-1] > k[0] else np.zeros_like(k)
    span = y.max() - y.min()
    yn = (y - y.min()) / span if span > 0 else np.zeros_like(y)
    chord = yn[0] + (yn[-1] - yn[0]) * kn
    return int(order[int(np.argmax(chord - yn))])


def sweep_figure(ks: Sequence[int], losses: Sequence[float], elbow: int | None = None) -> plt.Figure:
    """The paper's Fig. 1: final reconstruction loss against the number of sprites K, elbow marked.

    Args:
        ks: the K values trained.
        losses: the final loss of each run.
        elbow: index into ``ks`` of the elbow (default :func:`find_elbow`).
    """
    elbow = find_elbow(ks, losses) if elbow is None else elbow
    order = np.argsort(ks)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(np.asarray(ks)[order], np.asarray(losses)[order], "o-", color="tab:blue")
    ax.plot([ks[elbow]], [losses[elbow]], "o", markersize=14, markerfacecolor="none", markeredgewidth=2,
            color="tab:red", label=f"elbow: K = {ks[elbow]}")
    ax.set_xlabel("number of sprites K")
    ax.set_ylabel("final reconstruction loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: str | pathlib.Path, dpi: int = 120) -> pathlib.Path:
    """Save a figure as PNG (folders created) and close it."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path



def make_pictures(run_dir: str | pathlib.Path, out_dir: str | pathlib.Path | None = None, n_images: int = 8,
                  data_root: str | pathlib.Path | None = None, device: str | torch.device = "cpu"
                  ) -> dict[str, pathlib.Path]:
    """All pictures of a run: ``sprites.png``, ``decomposition.png``, ``backgrounds.png`` (when the model
    has backgrounds) and ``curves.png`` (when the run has a train log), in ``out_dir`` (default
    ``RUN_DIR/pictures``).

    The decomposition shows the first ``n_images`` images of the evaluation split.

    Returns:
        ``{picture name: path}``.
    """
    from .data import build_dataset
    from .runs import TRAIN_LOG, VAL_LOG, load_run
    if not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be a positive int, got {n_images!r}")
    run_dir = pathlib.Path(run_dir)
    out_dir = pathlib.Path(out_dir) if out_dir is not None else run_dir / "pictures"
    cfg, model, _ = load_run(run_dir, device)
    n_real = model.n_sprites - int(model.add_empty_sprite)
    palette = sprite_palette(model.n_sprites)
    written: dict[str, pathlib.Path] = {}
    grid = sprite_grid(model.prototypes[:n_real], model.masks[:n_real], palette)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid.save(out_dir / "sprites.png")
    written["sprites"] = out_dir / "sprites.png"
    if model.backgrounds is not None:
        bkg = model.backgrounds
        bkg_grid = sprite_grid(bkg, None, sprite_palette(bkg.shape[0]), scale=2)
        bkg_grid.save(out_dir / "backgrounds.png")
        written["backgrounds"] = out_dir / "backgrounds.png"

    dataset = build_dataset(cfg["dataset"], "eval", data_root)
    n = min(n_images, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(n)]).to(device)
    parts = model.decompose(images)
    fig = decomposition_figure(images, parts["reconstruction"], model.semantic_labels(images),
                               model.instance_labels(images), parts["layers"], parts["masks"],
                               parts["background"], palette=palette)
    written["decomposition"] = save_figure(fig, out_dir / "decomposition.png")
    if (run_dir / TRAIN_LOG).is_file():
        written["curves"] = save_figure(training_curves(run_dir / TRAIN_LOG, run_dir / VAL_LOG),
                                        out_dir / "curves.png")
    return written

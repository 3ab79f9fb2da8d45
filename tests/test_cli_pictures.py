"""Pictures: palettes, label colouring, the sprite grid's coloured borders, the decomposition figure,
training curves, and the elbow of the K sweep."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from dtifast.visualize import (colorize, decomposition_figure, find_elbow, instance_palette, sprite_grid,
                               sprite_palette, sweep_figure, training_curves)


def test_palettes_and_colorize():
    pal = sprite_palette(5)
    assert pal.shape == (6, 3) and len({tuple(c) for c in pal.tolist()}) == 6
    assert instance_palette(3).shape == (4, 3)
    labels = torch.tensor([[[0, 1], [5, 2]]])
    rgb = colorize(labels, pal)
    assert rgb.shape == (1, 3, 2, 2)
    assert torch.equal(rgb[0, :, 1, 0], pal[5]) and torch.equal(rgb[0, :, 0, 0], pal[0])
    with pytest.raises(TypeError, match="labels must have dtype"):
        colorize(labels.float(), pal)
    with pytest.raises(ValueError, match=r"palette must have shape \(P, 3\)"):
        colorize(labels, torch.zeros(4, 4))


def test_sprite_grid_borders_use_sprite_colours():
    k, h, w, scale, border = 5, 6, 4, 3, 2
    protos = torch.rand(k, 3, h, w)
    masks = torch.ones(k, 1, h, w)
    pal = sprite_palette(k)
    img = np.asarray(sprite_grid(protos, masks, pal, n_cols=3, scale=scale, border=border))
    cell_h, cell_w, gap = h * scale + 2 * border, w * scale + 2 * border, 2
    assert img.shape == (2 * (cell_h + gap) + gap, 3 * (cell_w + gap) + gap, 3)
    for i in range(k):
        r, c = divmod(i, 3)
        top_left = img[gap + r * (cell_h + gap), gap + c * (cell_w + gap)]
        assert np.abs(top_left.astype(float) - pal[i + 1].numpy() * 255).max() <= 1, i
        inside = img[gap + r * (cell_h + gap) + border, gap + c * (cell_w + gap) + border]
        assert np.abs(inside.astype(float) - protos[i, :, 0, 0].numpy() * 255).max() <= 1, i
    with pytest.raises(ValueError, match="masks must have shape"):
        sprite_grid(protos, torch.ones(k, 1, h + 1, w))
    with pytest.raises(ValueError, match="palette must have shape"):
        sprite_grid(protos, masks, sprite_palette(2))


def test_decomposition_figure_layout():
    n, L, c, h, w = 2, 3, 3, 8, 8
    images = torch.rand(n, c, h, w)
    sem = torch.randint(0, 5, (n, h, w))
    inst = torch.randint(0, L + 1, (n, h, w))
    layers, masks = torch.rand(L, n, c, h, w), torch.rand(L, n, 1, h, w)
    fig = decomposition_figure(images, images, sem, inst, layers, masks, torch.rand(n, c, h, w), n_sprites=4)
    assert len(fig.axes) == n * (4 + L + 1)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [
        "input", "reconstruction", "semantic", "instances", "layer 1", "layer 2", "layer 3", "background"]
    plt.close(fig)
    with pytest.raises(ValueError, match="layers must have shape"):
        decomposition_figure(images, images, sem, inst, layers[:, :1], masks)


def test_training_curves(tmp_path):
    (tmp_path / "train.csv").write_text("iteration,epoch,batch,loss\n1,1,1,0.5\n2,1,2,0.25\n")
    (tmp_path / "val.csv").write_text("iteration,epoch,loss,ari_fg,miou\n2,1,0.3,0.5,0.4\n")
    fig = training_curves(tmp_path / "train.csv", tmp_path / "val.csv")
    assert len(fig.axes) == 2
    assert [line.get_label() for line in fig.axes[1].get_lines()] == ["ari_fg", "miou"]
    plt.close(fig)
    with pytest.raises(FileNotFoundError, match="no CSV log"):
        training_curves(tmp_path / "missing.csv")


def test_elbow():
    ks = list(range(1, 11))
    losses = [10, 5, 2, 1.5, 1.3, 1.2, 1.1, 1.05, 1.0, 0.95]
    assert ks[find_elbow(ks, losses)] == 3
    # Unsorted input gives the index into the input.
    assert find_elbow([5, 1, 3], [1.0, 10.0, 1.2]) == 2
    assert find_elbow([4, 5], [2.0, 1.0]) == 1
    with pytest.raises(ValueError, match="finite"):
        find_elbow([1, 2, 3], [1.0, float("inf"), 0.5])
    fig = sweep_figure(ks, losses)
    assert "elbow: K = 3" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)

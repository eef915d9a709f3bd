"""Figure builders of the probes: each returns a go.Figure with the expected traces and panels."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from analysis.errors import ConfigError
from analysis.plots.maps import (
    attention_overlay_figure,
    attribution_figure,
    cka_figure,
    distance_figure,
    head_maps_figure,
    position_similarity_figure,
    tile_image,
    tiles_figure,
)

RNG = np.random.default_rng(0)


def panels(fig: go.Figure) -> int:
    return len({(t.xaxis or "x", t.yaxis or "y") for t in fig.data})


@pytest.mark.parametrize(
    "image,kind",
    [
        (RNG.normal(size=(1, 28, 28)), "heatmap"),
        (torch.randn(3, 28, 28), "image"),
        (RNG.normal(size=(28, 28)), "heatmap"),
    ],
)
def test_attention_overlay(image, kind):
    att = RNG.random((28, 28))
    fig = attention_overlay_figure(image, att, title="block 3")
    assert isinstance(fig, go.Figure) and len(fig.data) == 2 and panels(fig) == 1
    assert fig.data[0].type == kind and fig.data[1].type == "heatmap"
    assert fig.data[1].opacity == 0.5 and np.allclose(fig.data[1].z, att)
    side = attention_overlay_figure(image, att, side_by_side=True)
    assert len(side.data) == 2 and panels(side) == 2


def test_image_values_scaled_for_display():
    fig = attention_overlay_figure(torch.randn(3, 8, 8) * 5, np.zeros((8, 8)))
    z = np.asarray(fig.data[0].z)
    assert z.dtype == np.uint8 and z.shape == (8, 8, 3) and z.min() == 0 and z.max() == 255
    with pytest.raises(ConfigError, match="image must be"):
        attention_overlay_figure(np.zeros((2, 8, 8)), np.zeros((8, 8)))


def test_head_maps_grid():
    maps = torch.rand(6, 28, 28)
    fig = head_maps_figure(maps)
    assert len(fig.data) == 6 and panels(fig) == 6
    fig = head_maps_figure(maps, image=RNG.normal(size=(1, 28, 28)), cols=3)
    assert len(fig.data) == 12 and panels(fig) == 6
    assert [a.text for a in fig.layout.annotations] == [f"head {h}" for h in range(6)]
    with pytest.raises(ConfigError):
        head_maps_figure(torch.rand(28, 28))


def distance_frame(layers, heads, scale):
    l, h = np.meshgrid(np.arange(layers), np.arange(heads), indexing="ij")
    return pd.DataFrame({"layer": l.ravel(), "head": h.ravel(), "distance_px": scale * (1 + l.ravel())})


def test_distance_figure_overlaid_and_side_by_side():
    frames = {"ViT_P": distance_frame(12, 3, 5.0), "ViT_C": distance_frame(11, 3, 4.0)}
    fig = distance_figure(frames)
    assert [t.name for t in fig.data] == ["ViT_P", "ViT_C"] and panels(fig) == 1
    assert len(fig.data[0].x) == 36 and len(fig.data[1].x) == 33
    assert fig.data[0].marker.color != fig.data[1].marker.color
    side = distance_figure(frames, side_by_side=True)
    assert len(side.data) == 2 and panels(side) == 2
    assert np.allclose(side.data[1].x, frames["ViT_C"]["layer"])
    with pytest.raises(ConfigError, match="distance_px"):
        distance_figure({"x": pd.DataFrame({"layer": [0], "head": [0]})})
    line = distance_figure(frames, uniform=14.4).layout.shapes
    assert len(line) == 1 and line[0].y0 == line[0].y1 == 14.4


def test_tile_image_layout():
    tiles = np.arange(5 * 3 * 2 * 2, dtype=float).reshape(5, 3, 2, 2)
    grid = tile_image(tiles, cols=3)
    assert grid.shape == (2 * 3 - 1, 3 * 3 - 1, 3)
    assert np.isnan(grid[2]).all() and np.isnan(grid[:, 2]).all()  # padding
    assert np.nanmin(grid) == 0 and np.nanmax(grid) == 1
    assert np.isnan(grid[3:, 6:]).all()  # sixth slot empty


@pytest.mark.parametrize("channels,kind", [(3, "image"), (1, "heatmap")])
def test_tiles_figure(channels, kind):
    tiles = RNG.normal(size=(28, channels, 4, 4))
    fig = tiles_figure(tiles, explained_variance=np.full(40, 0.02))
    assert len(fig.data) == 1 and fig.data[0].type == kind
    assert "56.0%" in fig.layout.title.text and "2.0%" in fig.layout.title.text
    assert "8 filters" in tiles_figure(tiles[:8]).layout.title.text


def test_position_similarity_figure():
    sim = RNG.uniform(-1, 1, size=(3, 4, 3, 4))
    fig = position_similarity_figure(sim)
    assert len(fig.data) == 1
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (3 * 4 - 1, 4 * 5 - 1)
    assert np.allclose(z[4:7, 5:9], sim[1, 1])  # tile of position (1, 1)
    assert np.isnan(z[3]).all()


def test_cka_figure():
    names = ["stem", "block0", "block1"]
    df = pd.DataFrame(np.eye(3), index=names, columns=names)
    fig = cka_figure(df, row_label="ViT_P", col_label="ViT_C")
    assert len(fig.data) == 1 and list(fig.data[0].x) == names and list(fig.data[0].y) == names
    assert fig.layout.yaxis.title.text == "ViT_P"
    cross = pd.DataFrame(RNG.random((3, 2)), index=names, columns=["stem", "block0"])
    assert np.asarray(cka_figure(cross).data[0].z).shape == (3, 2)
    with pytest.raises(ConfigError):
        cka_figure(pd.DataFrame())


def test_attribution_figure():
    images = torch.randn(5, 3, 16, 16)
    maps = {"IG": torch.randn(5, 16, 16), "occlusion": torch.rand(5, 16, 16), "Grad-CAM": torch.rand(5, 16, 16)}
    fig = attribution_figure(images, maps, max_images=2)
    assert len(fig.data) == 2 * 4 and panels(fig) == 8
    assert fig.data[1].zmid == 0 and fig.data[2].zmid is None  # signed IG uses a diverging scale
    with pytest.raises(ConfigError, match="IG"):
        attribution_figure(images, {"IG": torch.randn(5, 16)})

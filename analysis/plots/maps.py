"""Figures of the probes: attention maps, attention distance, filters, position embeddings, CKA, attributions.

Pure functions: arrays / tensors / DataFrames from analysis.probes in, a plotly Figure out.
Images are (C, H, W) or (H, W); one channel is drawn in grey, three as RGB, each min-max scaled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.errors import ConfigError
from analysis.plots.style import NOTEBOOK_WIDTH, TEMPLATE, color_map, integer_ticks, wrap_title

MAP_SCALE = "Inferno"
SIGNED_SCALE = "RdBu_r"


def _np(x) -> np.ndarray:
    """Return x (tensor or array-like) as a float64 numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] (zeros for a constant array)."""
    lo, hi = np.nanmin(x), np.nanmax(x)
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _image_trace(image) -> go.BaseTraceType:
    """Return a grey Heatmap (1 channel or (H, W)) or an RGB Image trace (3 channels) of an image."""
    img = _np(image)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 2:
        return go.Heatmap(z=_unit(img), colorscale="gray", showscale=False, hoverinfo="skip")
    if img.ndim == 3 and img.shape[0] == 3:
        rgb = (_unit(img).transpose(1, 2, 0) * 255).round().astype(np.uint8)
        return go.Image(z=rgb, hoverinfo="skip")
    raise ConfigError(f"image must be (H, W), (1, H, W) or (3, H, W), got shape {img.shape}")


def _map_trace(values, signed: bool = False, opacity: float = 1.0, showscale: bool = True) -> go.Heatmap:
    z = _np(values)
    if z.ndim != 2:
        raise ConfigError(f"a map must be (H, W), got shape {z.shape}")
    if signed:
        lim = float(np.nanmax(np.abs(z))) or 1.0
        return go.Heatmap(
            z=z, colorscale=SIGNED_SCALE, zmid=0, zmin=-lim, zmax=lim, opacity=opacity, showscale=showscale
        )
    return go.Heatmap(z=z, colorscale=MAP_SCALE, opacity=opacity, showscale=showscale)


def image_axes(fig: go.Figure) -> go.Figure:
    """Square pixels, row 0 at the top, no ticks, on every panel that holds a trace (also used by
    the explorers on their FigureWidgets)."""
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    for trace in fig.data:
        x, y = trace.xaxis or "x", trace.yaxis or "y"
        fig.layout["yaxis" + y[1:]].scaleanchor = x
    return fig


def _json_grid(z: np.ndarray) -> list:
    """Return a 2-D array as nested lists with None for NaN: plotly draws None as a gap, and a
    FigureWidget cannot send NaN (its messages must be strict JSON)."""
    return [[None if v != v else float(v) for v in row] for row in z]


def _grid(n: int, cols: int | None) -> tuple[int, int]:
    cols = cols or min(n, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def attention_overlay_figure(
    image, attention, side_by_side: bool = False, opacity: float = 0.5, title: str | None = None
) -> go.Figure:
    """Return a Figure of an (H, W) attention map over an image: overlaid (2 traces, one panel) or side by side (2 panels)."""
    if side_by_side:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("image", "attention"), horizontal_spacing=0.05)
        fig.add_trace(_image_trace(image), row=1, col=1)
        fig.add_trace(_map_trace(attention), row=1, col=2)
    else:
        fig = go.Figure([_image_trace(image), _map_trace(attention, opacity=opacity)])
    fig.update_layout(template=TEMPLATE, title=title)
    return image_axes(fig)


def head_maps_figure(
    maps, image=None, cols: int | None = None, title: str | None = None, opacity: float = 0.6
) -> go.Figure:
    """Return one panel per head of a (heads, H, W) stack of one layer's maps, over `image` when given."""
    maps = _np(maps)
    if maps.ndim != 3:
        raise ConfigError(f"head maps must be (heads, H, W), got shape {maps.shape}")
    rows, cols = _grid(maps.shape[0], cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[f"head {h}" for h in range(maps.shape[0])],
        horizontal_spacing=0.02,
        vertical_spacing=0.08,
    )
    for h, m in enumerate(maps):
        r, c = divmod(h, cols)
        if image is not None:
            fig.add_trace(_image_trace(image), row=r + 1, col=c + 1)
        fig.add_trace(
            _map_trace(m, opacity=opacity if image is not None else 1.0, showscale=False), row=r + 1, col=c + 1
        )
    fig.update_layout(template=TEMPLATE, title=title, height=220 * rows + 80)
    return image_axes(fig)


def distance_figure(
    frames: Mapping[str, pd.DataFrame],
    side_by_side: bool = False,
    title: str | None = None,
    uniform: float | None = None,
) -> go.Figure:
    """Return mean attention distance (px) vs block, one colour per model (name -> frame of layer, head, distance_px).

    Overlaid: one scatter trace per model, offset slightly along x. Side by side: one panel per model.
    uniform: the distance of evenly spread attention (analysis.probes.uniform_distance), drawn as a
    dashed line: heads well below it attend locally, heads near it do not.
    """
    if not frames:
        raise ConfigError("distance_figure needs at least one model's frame")
    for name, df in frames.items():
        missing = {"layer", "head", "distance_px"} - set(df.columns)
        if missing:
            raise ConfigError(f"frame for {name!r} lacks columns {sorted(missing)}; needs layer, head, distance_px")
    names = list(frames)
    colors = color_map(names)
    fig = (
        make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True) if side_by_side else go.Figure()
    )
    for i, name in enumerate(names):
        df = frames[name]
        offset = 0.0 if side_by_side else 0.15 * (i - (len(names) - 1) / 2)
        trace = go.Scatter(
            x=df["layer"] + offset,
            y=df["distance_px"],
            mode="markers",
            name=name,
            marker=dict(color=colors[name], size=8, opacity=0.8),
            customdata=np.stack([df["layer"], df["head"]], axis=-1),
            hovertemplate="block %{customdata[0]}, head %{customdata[1]}<br>%{y:.1f} px<extra>" + name + "</extra>",
        )
        if side_by_side:
            fig.add_trace(trace, row=1, col=i + 1)
        else:
            fig.add_trace(trace)
    fig.update_layout(template=TEMPLATE, title=title or "mean attention distance")
    if uniform is not None:
        fig.add_hline(
            y=uniform,
            line=dict(dash="dash", color="#777"),
            annotation_text="uniform attention",
            annotation_position="bottom right",
        )
    fig.update_xaxes(title_text="block", **integer_ticks(max(float(df["layer"].max()) for df in frames.values())))
    if side_by_side:
        fig.update_yaxes(title_text="mean attention distance (px)", col=1)
    else:
        fig.update_yaxes(title_text="mean attention distance (px)")
    return fig


def tile_image(tiles, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """Return an (H, W, C) array laying out (n, C, h, w) tiles in a grid, each tile min-max scaled, NaN padding."""
    t = _np(tiles)
    if t.ndim != 4:
        raise ConfigError(f"tiles must be (n, C, h, w), got shape {t.shape}")
    n, c, h, w = t.shape
    rows, cols = _grid(n, cols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), np.nan)
    for i, tile in enumerate(t):
        r, q = divmod(i, cols)
        out[r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = _unit(tile).transpose(1, 2, 0)
    return out


def tiles_figure(tiles, explained_variance=None, cols: int | None = None, title: str | None = None) -> go.Figure:
    """Return one image trace of (n, C, h, w) filter or component tiles (RGB for 3 channels, else grey channel mean).

    With `explained_variance` (one ratio per tile) the title gives the share the tiles explain.
    """
    grid = tile_image(tiles, cols)
    if grid.shape[-1] == 3:
        rgb = np.nan_to_num(grid, nan=1.0)
        trace = go.Image(z=(rgb * 255).round().astype(np.uint8))
    else:
        trace = go.Heatmap(z=_json_grid(grid.mean(axis=-1)), colorscale="gray", showscale=False)
    n = _np(tiles).shape[0]
    rows, cols = _grid(n, cols)
    if title is None:
        title = f"{n} filters"
    if explained_variance is not None:
        ev = _np(explained_variance)[:n]
        title += f" (explained variance: {100 * ev.sum():.1f}% in total, first {100 * ev[0]:.1f}%)"
    fig = go.Figure([trace])
    tile_px = min(64.0, max(28.0, (NOTEBOOK_WIDTH - 40) / cols))  # tiles drawn 28-64 px wide
    fig.update_layout(
        template=TEMPLATE, title=title, height=round(rows * tile_px) + 80, margin=dict(l=20, r=20, t=60, b=20)
    )
    return image_axes(fig)


def position_similarity_figure(similarity, title: str | None = None) -> go.Figure:
    """Return a grid of grids of (gh, gw, gh, gw) position-embedding cosine similarities as one heatmap trace.

    Tile (r, c) shows the similarity of position (r, c) with every position.
    """
    s = _np(similarity)
    if s.ndim != 4:
        raise ConfigError(f"similarity must be (gh, gw, gh, gw), got shape {s.shape}")
    gh, gw = s.shape[:2]
    z = np.full((gh * (gh + 1) - 1, gw * (gw + 1) - 1), np.nan)  # one NaN row/column between tiles
    for r in range(gh):
        for c in range(gw):
            z[r * (gh + 1) : r * (gh + 1) + gh, c * (gw + 1) : c * (gw + 1) + gw] = s[r, c]
    fig = go.Figure([go.Heatmap(z=_json_grid(z), colorscale="Viridis", zmin=-1, zmax=1, colorbar=dict(title="cos"))])
    cell_px = min(12.0, max(4.0, 560 / z.shape[0]))  # the grid of grids drawn 4-12 px per cell
    fig.update_layout(
        template=TEMPLATE,
        title=title or "position-embedding similarity",
        height=round(z.shape[0] * cell_px) + 90,
        margin=dict(t=60, b=30),
    )
    return image_axes(fig)


def cka_figure(
    cka: pd.DataFrame, title: str | None = None, row_label: str | None = None, col_label: str | None = None
) -> go.Figure:
    """Return a CKA heatmap of a layers x layers DataFrame (one model, or model A rows vs model B columns)."""
    if not isinstance(cka, pd.DataFrame) or cka.empty:
        raise ConfigError("cka must be a non-empty DataFrame (layers x layers)")
    fig = go.Figure(
        [
            go.Heatmap(
                z=cka.to_numpy(),
                x=[str(c) for c in cka.columns],
                y=[str(i) for i in cka.index],
                colorscale="Magma",
                zmin=0,
                zmax=1,
                colorbar=dict(title="CKA"),
                hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>",
            )
        ]
    )
    fig.update_layout(
        template=TEMPLATE, title=title or "linear CKA", height=max(360, 30 * len(cka) + 160), margin=dict(t=60, b=60)
    )
    fig.update_yaxes(autorange="reversed", title_text=row_label, scaleanchor="x")
    fig.update_xaxes(title_text=col_label, constrain="domain")
    return fig


def attribution_figure(
    images, maps: Mapping[str, object], max_images: int = 4, signed: bool = True, title: str | None = None
) -> go.Figure:
    """Return a grid: one row per image, first column the image, then one (H, W) map per method.

    `images` is (B, C, H, W); `maps` is method name -> (B, H, W). Signed maps use a diverging
    scale centred on 0.
    """
    if not maps:
        raise ConfigError("attribution_figure needs at least one method's maps")
    imgs = _np(images)
    b = min(len(imgs), max_images)
    names = list(maps)
    arrays = {k: _np(v) for k, v in maps.items()}
    for k, v in arrays.items():
        if v.ndim != 3 or len(v) < b:
            raise ConfigError(f"maps[{k!r}] must be (B, H, W) with B >= {b}, got shape {v.shape}")
    cols = 1 + len(names)
    # column titles over the first row only, wrapped to the column width
    titles = [wrap_title(t, NOTEBOOK_WIDTH / cols, 14) for t in ["image", *names]] + [""] * ((b - 1) * cols)
    fig = make_subplots(rows=b, cols=cols, subplot_titles=titles, horizontal_spacing=0.02, vertical_spacing=0.02)
    fig.update_annotations(font_size=14)
    for i in range(b):
        fig.add_trace(_image_trace(imgs[i]), row=i + 1, col=1)
        for j, k in enumerate(names):
            fig.add_trace(
                _map_trace(arrays[k][i], signed=signed and arrays[k].min() < 0, showscale=False), row=i + 1, col=j + 2
            )
    top = 60 + 18 * max(t.count("<br>") + 1 for t in titles)
    fig.update_layout(
        template=TEMPLATE, title=title or "attributions", height=200 * b + top + 20, margin=dict(t=top, b=20)
    )
    return image_axes(fig)

"""Figures of the representation analyses ("Do Vision Transformers See Like CNNs?", Raghu et al. 2021):
CKA heatmaps between models, layerwise linear probes, residual-stream strength, and attention
distance against training-set size.

Pure functions: DataFrames from analysis.probes in, a plotly Figure out.
"""

from __future__ import annotations

import math

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.errors import ConfigError
from analysis.plots.style import DASHES, TEMPLATE, color_map

CKA_SCALE = "Magma"


def _check_frames(frames: Mapping, what: str, columns: tuple[str, ...]) -> None:
    if not frames:
        raise ConfigError(f"{what} needs at least one model's frame")
    for label, frame in frames.items():
        missing = [c for c in columns if c not in frame]
        if not isinstance(frame, pd.DataFrame) or frame.empty or missing:
            raise ConfigError(f"{what}: the frame of {label!r} must be a non-empty DataFrame with {', '.join(columns)}")


def cka_pairs_figure(pairs: Mapping[tuple[str, str], pd.DataFrame], title: str | None = None) -> go.Figure:
    """Return CKA heatmaps, one per (row model, column model) pair (from cka_pairs), two to a row
    so they fit a notebook's width, on one 0..1 colour scale: the paper's ViT vs ResNet and ViT_P vs
    ViT_C panels."""
    if not pairs:
        raise ConfigError("cka_pairs_figure needs at least one (model a, model b) -> CKA DataFrame")
    cols = min(2, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[f"{a} vs {b}" for a, b in pairs],
        horizontal_spacing=0.2,
        vertical_spacing=0.5 / rows,
    )
    for i, ((a, b), cka) in enumerate(pairs.items()):
        r, c = i // cols + 1, i % cols + 1
        if not isinstance(cka, pd.DataFrame) or cka.empty:
            raise ConfigError(f"CKA of {a} vs {b} must be a non-empty DataFrame (layers x layers)")
        fig.add_trace(
            go.Heatmap(
                z=cka.to_numpy(),
                x=[str(c) for c in cka.columns],
                y=[str(r) for r in cka.index],
                coloraxis="coloraxis",
                hovertemplate=f"{a} %{{y}} vs {b} %{{x}}: %{{z:.3f}}<extra></extra>",
            ),
            row=r,
            col=c,
        )
        fig.update_yaxes(title_text=a, autorange="reversed", row=r, col=c)
        fig.update_xaxes(title_text=b, row=r, col=c)
    fig.update_layout(
        template=TEMPLATE,
        title=title or "linear CKA between the layers of two models",
        coloraxis=dict(colorscale=CKA_SCALE, cmin=0, cmax=1, colorbar=dict(title="CKA")),
        height=120 + 380 * rows,
    )
    return fig


def linear_probe_figure(frames: Mapping[str, pd.DataFrame], title: str | None = None) -> go.Figure:
    """Return held-out accuracy of the layerwise linear probes against depth: a colour per model,
    a dash per pooling (class token, patch mean, global average), and the chance level dotted."""
    _check_frames(frames, "linear_probe_figure", ("layer", "depth", "pool", "accuracy"))
    colors = color_map(frames)
    pools = list(dict.fromkeys(p for f in frames.values() for p in f["pool"]))
    fig = go.Figure()
    for label, frame in frames.items():
        for pool in pools:
            part = frame[frame["pool"] == pool].sort_values("depth")
            if part.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["depth"],
                    y=100 * part["accuracy"],
                    mode="lines+markers",
                    name=f"{label} {pool.replace('_', ' ')}",
                    line=dict(color=colors[label], dash=DASHES[pools.index(pool) % len(DASHES)]),
                    customdata=part["layer"],
                    hovertemplate="%{customdata}: %{y:.1f}%<extra></extra>",
                )
            )
    chances = [float(f["chance"].max()) for f in frames.values() if "chance" in f]
    if chances:
        fig.add_hline(y=100 * max(chances), line=dict(color="grey", dash="dot"), annotation_text="chance")
    fig.update_layout(
        template=TEMPLATE,
        title=title or "layerwise linear probes (held-out accuracy)",
        xaxis_title="layer (0 = stem output)",
        yaxis=dict(title="accuracy (%)", range=[0, 101]),
        height=460,
    )  # the legend at the right: below the plot it covered the axis title
    return fig


def residual_figure(frames: Mapping[str, pd.DataFrame], title: str | None = None) -> go.Figure:
    """Return residual-stream strength (||stream|| / ||branch output||, log scale) per block and
    branch: a panel per token type, a colour per model. Branches whose output is zero (infinite
    ratio) are marked with a triangle at the top of the panel."""
    _check_frames(frames, "residual_figure", ("block", "branch", "tokens", "ratio"))
    tokens = [t for t in ("class", "patch") if any((f["tokens"] == t).any() for f in frames.values())]
    colors = color_map(frames)
    fig = make_subplots(
        rows=1,
        cols=len(tokens),
        subplot_titles=[f"{t} token{'s' if t == 'patch' else ''}" for t in tokens],
        shared_yaxes=True,
    )
    finite = np.concatenate([f["ratio"].to_numpy(dtype=float) for f in frames.values()])
    finite = finite[np.isfinite(finite) & (finite > 0)]
    top = float(finite.max()) * 2 if finite.size else 10.0
    for label, frame in frames.items():
        zero_shown = False
        for j, tok in enumerate(tokens):
            part = frame[frame["tokens"] == tok].copy()
            part["x"] = part["block"] + np.where(part["branch"] == "mlp", 0.5, 0.0)
            part = part.sort_values("x")
            ok = np.isfinite(part["ratio"].to_numpy(dtype=float))
            names = part["block"].astype(str) + " " + part["branch"]
            fig.add_trace(
                go.Scatter(
                    x=part["x"][ok],
                    y=part["ratio"][ok],
                    mode="lines+markers",
                    name=label,
                    legendgroup=label,
                    showlegend=j == 0,
                    line=dict(color=colors[label]),
                    customdata=names[ok],
                    hovertemplate="block %{customdata}: %{y:.2f}<extra></extra>",
                ),
                row=1,
                col=j + 1,
            )
            if (~ok).any():
                fig.add_trace(
                    go.Scatter(
                        x=part["x"][~ok],
                        y=[top] * int((~ok).sum()),
                        mode="markers",
                        marker=dict(symbol="triangle-up", size=11, color=colors[label]),
                        name=f"{label}: branch output is zero",
                        legendgroup=label,
                        showlegend=not zero_shown,
                        hovertemplate="branch output is zero: infinite ratio<extra></extra>",
                    ),
                    row=1,
                    col=j + 1,
                )
                zero_shown = True
    fig.update_xaxes(title_text="block (+0.5: MLP branch)", dtick=1)
    fig.update_yaxes(type="log", dtick=1, showticklabels=True)  # a label at each power of ten, on every panel
    fig.update_yaxes(title_text="||residual|| / ||branch||", col=1)
    fig.update_layout(template=TEMPLATE, title=title or "residual-stream strength", height=420)
    return fig


def _size_label(size) -> str:
    return "all images" if size is None or pd.isna(size) else f"{int(size)} per class"


def _size_traces(part: pd.DataFrame, label: str, color: str, offset: float, legend: bool) -> list:
    """One training-set size in one panel: a marker per head, a line through the blocks' means."""
    mean = part.groupby("layer")["distance_px"].mean()
    return [
        go.Scatter(
            x=part["layer"] + offset,
            y=part["distance_px"],
            mode="markers",
            marker=dict(color=color, size=7, opacity=0.75),
            name=label,
            legendgroup=label,
            showlegend=legend,
            customdata=part["head"],
            hovertemplate="block %{x:.0f}, head %{customdata}: %{y:.1f} px<extra></extra>",
        ),
        go.Scatter(
            x=mean.index,
            y=mean.to_numpy(),
            mode="lines",
            line=dict(color=color),
            legendgroup=label,
            showlegend=False,
            hoverinfo="skip",
        ),
    ]


def distance_vs_data_figure(
    frame: pd.DataFrame, title: str | None = None, uniform_px: Mapping[str, float] | None = None
) -> go.Figure:
    """Return mean attention distance per head against depth, a panel per model and a colour per
    training-set size (from distance_vs_data); lines join each size's mean over heads.

    The y axis starts at 0 (a head at 0 px attends to itself only), so small differences do not
    read as trends. `uniform_px` ({model: px}, analysis.probes.uniform_distance): each panel shades
    the band within 5% of the distance of attention spread evenly over the patches; heads inside it
    are not attending locally."""
    need = ("model", "train_per_class", "layer", "head", "distance_px")
    if not isinstance(frame, pd.DataFrame) or frame.empty or any(c not in frame for c in need):
        raise ConfigError(f"distance_vs_data_figure needs a non-empty frame with {', '.join(need)}")
    models = list(dict.fromkeys(frame["model"]))
    sizes = sorted(dict.fromkeys(frame["train_per_class"]), key=lambda s: np.inf if pd.isna(s) else s)
    colors = color_map(_size_label(s) for s in sizes)
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models, shared_yaxes=True)
    offsets = np.linspace(-0.2, 0.2, len(sizes)) if len(sizes) > 1 else [0.0]
    for j, model in enumerate(models):
        for k, size in enumerate(sizes):
            label = _size_label(size)
            sel = (frame["model"] == model) & (
                frame["train_per_class"].isna() if pd.isna(size) else frame["train_per_class"] == size
            )
            part = frame[sel]
            if part.empty:
                continue
            for trace in _size_traces(part, label, colors[label], offsets[k], legend=j == 0):
                fig.add_trace(trace, row=1, col=j + 1)
    top = float(frame["distance_px"].max())
    for j, model in enumerate(models):
        ref = (uniform_px or {}).get(model)
        if ref is not None:
            top = max(top, 1.05 * ref)
            fig.add_hrect(
                y0=0.95 * ref,
                y1=1.05 * ref,
                fillcolor="grey",
                opacity=0.2,
                line_width=0,
                row=1,
                col=j + 1,
                annotation_text=f"uniform attention {ref:.1f} px ±5%",
                annotation_position="bottom left",
                annotation_font_size=11,
            )
    fig.update_xaxes(title_text="block", dtick=1)
    fig.update_yaxes(range=[0, 1.15 * top])
    fig.update_yaxes(title_text="mean attention distance (px)", col=1)
    fig.update_layout(
        template=TEMPLATE,
        title=title or "attention distance against training-set size",
        legend_title_text="training images",
        height=420,
    )
    return fig

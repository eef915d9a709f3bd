"""The forest plot of a regime study: each stability claim's estimate and 95% interval, a row per
regime (claims-table setting), the paper's direction marked."""

from __future__ import annotations

import math
import re

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.errors import ConfigError
from analysis.plots.style import TEMPLATE

# (claim, subject kind, panel title): the claims a forest plot shows, in panel order.
FOREST_CLAIMS = [
    ("optimizer_gap_difference", "ViT_P vs ViT_C", "optimizer gap: ViT_P - ViT_C (median, points)"),
    ("optimizer_gap_best_difference", "ViT_P vs ViT_C", "optimizer gap: ViT_P - ViT_C (best-of-25%)"),
    ("optimizer_gap", "ViT_C", "ViT_C's optimizer gap (SGD - AdamW)"),
    ("within_k_difference", "ViT_P vs ViT_C", "share within k of best: ViT_C - ViT_P"),
    ("edf_area", "ViT_P vs ViT_C", "EDF area: ViT_C above ViT_P"),
    ("peak_difference", "ViT_P vs ViT_C", "best error: ViT_P - ViT_C (points)"),
]
VERDICT_MARKERS = {"reproduced": "#2ca02c", "contradicted": "#d62728", "inconclusive": "#7f7f7f"}
OPTIMIZER_OFFSET = {"": 0.0, "adamw": -0.17, "sgd": 0.17}
OPTIMIZER_SYMBOL = {"": "circle", "adamw": "circle", "sgd": "diamond"}


def short_setting(setting: str) -> str:
    """A compact y-axis label of a claims-table setting: "fmnist_p16_tiny, data.train_per_class=200,
    6 epochs" -> "p16_tiny, 200/class, 6 ep"."""
    s = re.sub(r"^(fmnist|cifar)_", "", setting)
    s = re.sub(r"data\.train_per_class=(\w+)", r"\1/class", s)
    s = re.sub(r"data\.(\w+)=", r"\1=", s)
    return s.replace(" epochs", " ep")


def _panel_rows(table: pd.DataFrame, claim: str, subject: str) -> pd.DataFrame:
    match = table["subject"].str.startswith("ViT_C-") if subject == "ViT_C" else table["subject"].eq(subject)
    return table[table["claim"].eq(claim) & match]


def _margin(rows: pd.DataFrame) -> float | None:
    """The equivalence margin the claims table states for these rows ("within ±2" -> 2.0), or None."""
    tests = [t for t in rows["test"] if t.startswith("within")]
    return float(tests[0].split("±")[1]) if tests else None


def _reference(fig: go.Figure, rows: pd.DataFrame, col: int, row: int) -> None:
    """The zero line, and the region that reproduces the claim: x > 0, or the margin band."""
    fig.add_vline(x=0, line=dict(color="#444", width=1), row=row, col=col)
    m = _margin(rows)
    if m is not None:
        fig.add_vrect(x0=-m, x1=m, fillcolor="#2ca02c", opacity=0.15, line_width=0, row=row, col=col)
    else:
        fig.add_vrect(x0=0, x1=1e6, fillcolor="#2ca02c", opacity=0.12, line_width=0, row=row, col=col)


def _x_range(rows: pd.DataFrame) -> list[float]:
    values = pd.concat([rows["low"], rows["high"], rows["estimate"]]).astype(float)
    values = values[values.map(math.isfinite)]
    margin = _margin(rows) or 0.0
    lo, hi = min(values.min(), -margin, 0.0), max(values.max(), margin, 0.0)
    pad = 0.08 * (hi - lo or 1.0)
    return [lo - pad, hi + pad]


def _claim_marker(row, claim: str, y_of: dict, labels: dict) -> go.Scatter:
    """One claim row: its estimate coloured by verdict, its 95% interval as an error bar."""
    y = y_of[row.setting] + OPTIMIZER_OFFSET.get(row.optimizer, 0.0)
    color = VERDICT_MARKERS.get(row.verdict, "#7f7f7f")
    has = math.isfinite(row.low)
    return go.Scatter(
        x=[row.estimate],
        y=[y],
        mode="markers",
        showlegend=False,
        marker=dict(color=color, size=9, symbol=OPTIMIZER_SYMBOL.get(row.optimizer, "circle")),
        error_x=dict(
            type="data",
            symmetric=False,
            array=[row.high - row.estimate if has else 0],
            arrayminus=[row.estimate - row.low if has else 0],
            color=color,
            thickness=1.5,
        ),
        meta={"claim": claim, "setting": row.setting, "optimizer": row.optimizer, "verdict": row.verdict},
        hovertemplate=(
            f"{labels.get(row.setting, row.setting)} {row.optimizer}<br>{row.statistic}<br>"
            f"%{{x:.2f}} [{row.low:.2f}, {row.high:.2f}] {row.verdict} "
            f"({row.diverged} diverged)<extra></extra>"
        ),
    )


def forest_figure(
    table: pd.DataFrame, claims: list | None = None, labels: dict | None = None, title: str | None = None
) -> go.Figure:
    """Return the forest plot of a claims table (analysis.claims.claims_table) with several settings.

    One panel per claim (FOREST_CLAIMS, or `claims`: a list of (claim, subject kind, title)); in each,
    a row per setting with the estimate (coloured by verdict) and its 95% interval, AdamW (circle)
    and SGD (diamond) side by side where the claim is per optimizer. The shaded region is where the
    paper's finding lies: right of 0 for difference claims, inside the margin for ViT_C's gap.
    `labels` renames settings on the y-axis (default: short_setting). Raises ConfigError when the table has no such rows.
    """
    claims = claims or FOREST_CLAIMS
    shown = [(c, s, t, _panel_rows(table, c, s)) for c, s, t in claims]
    shown = [p for p in shown if not p[3].empty]
    if not shown:
        raise ConfigError(
            "no rows of the forest plot's claims in the table; "
            f"allowed claims: {', '.join(c for c, _, _ in FOREST_CLAIMS)}"
        )
    settings = sorted(set().union(*[set(p[3]["setting"]) for p in shown]))
    labels = labels or {s: short_setting(s) for s in settings}
    y_of = {s: i for i, s in enumerate(settings)}
    cols = min(3, len(shown))
    nrows = math.ceil(len(shown) / cols)
    fig = make_subplots(
        rows=nrows,
        cols=cols,
        subplot_titles=[p[2] for p in shown],
        shared_yaxes=True,
        horizontal_spacing=0.04,
        vertical_spacing=0.16,
    )
    for i, (claim, _, _, rows) in enumerate(shown):
        r, c = i // cols + 1, i % cols + 1
        for row in rows.itertuples():
            fig.add_trace(_claim_marker(row, claim, y_of, labels), row=r, col=c)
        _reference(fig, rows, c, r)  # after the traces: plotly skips shapes on empty subplots
        fig.update_xaxes(range=_x_range(rows), zeroline=False, row=r, col=c)
    fig.update_yaxes(
        tickvals=list(range(len(settings))),
        ticktext=[labels.get(s, s) for s in settings],
        range=[len(settings) - 0.5, -0.5],
        showgrid=False,
    )
    for verdict, color in VERDICT_MARKERS.items():  # legend: verdict colours and optimizer symbols
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=verdict, marker=dict(color=color, size=9)))
    for opt, symbol in (("AdamW", "circle"), ("SGD", "diamond")):
        fig.add_trace(
            go.Scatter(x=[None], y=[None], mode="markers", name=opt, marker=dict(color="#444", size=9, symbol=symbol))
        )
    fig.update_layout(
        template=TEMPLATE,
        height=170 + nrows * (60 + 34 * len(settings)),
        title=title or "Claims per regime (95% intervals; shaded: the paper's finding)",
        legend=dict(orientation="h", y=-0.08),
        margin=dict(l=10, r=10, t=80, b=40),
    )
    fig.update_annotations(font_size=12)
    return fig


def beside(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Claims tables of several studies as one table for one forest plot, and its y-axis labels:
    each setting becomes "<study> · <setting>", the studies in the dict's order, top to bottom.

        table, labels = beside({"n=6": regimes, "powered": powered})
        forest_figure(table, labels=labels)
    """
    parts, labels = [], {}
    for i, (study, table) in enumerate(tables.items()):
        named = {s: f"{i:02d} {study} · {s}" for s in table["setting"].unique()}
        labels.update({new: f"{study} · {short_setting(s)}" for s, new in named.items()})
        parts.append(table.assign(setting=table["setting"].map(named)))
    return pd.concat(parts, ignore_index=True), labels

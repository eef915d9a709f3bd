"""Stability figures of a sweep: error EDFs, error vs schedule length, optimizer gap, lr/wd maps.

Every builder is a pure function: the collected sweep frame (one row per run) in, a plotly
Figure (or a DataFrame for the tables) out. Diverged runs count at 100% error; failed and
unfinished runs (no error yet) are left out of the statistics and counted separately.
Each trace carries `meta` = {"kind": ..., "group": ...} so callers can find it again.
"""

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.errors import ConfigError, one_of
from analysis.stats import best_of_quantiles
from analysis.claims import MIN_RUNS, group_name, group_stat, interval, make_group
from analysis.frame import (
    DIVERGED_ERROR,
    as_columns,
    check_frame,
    counted_errors,
    diverged_mask,
    groups,
)
from analysis.plots.style import DIVERGED_COLOR, TEMPLATE, group_label, group_styles, head_stems, log_ticks, with_alpha

DEFAULT_BY = ("model", "optimizer")
STATS = ("best", "median", "mean")
BOOTSTRAP_STYLES = ("band", "errorbar")
# the lr/wd figure in pixels: one row of subplots, the gap between rows, the top and bottom margins
ROW_PX, GAP_PX, TOP_PX, BOTTOM_PX = 300, 60, 80, 70


# ---------------------------------------------------------------- numbers


def edf(errors: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Return (x, y) of the empirical distribution of `errors` as step points.

    x is the sorted errors, y[i] = (i + 1) / n: F(e) = fraction of runs with error < e,
    read just to the right of x[i]. Draw with line_shape="hv".
    """
    x = np.sort(np.asarray(errors, dtype=float))
    if x.size == 0:
        return x, x.copy()
    return x, np.arange(1, x.size + 1) / x.size


def bootstrap_best(errors: Sequence[float], subsample: float = 0.25) -> np.ndarray:
    """Return the 2.5/50/97.5 percentiles of pycls' best-of-`subsample` bootstrap of the errors
    (the best of max(1, round(subsample * n)) runs drawn with replacement), computed exactly by
    analysis.stats.best_of_quantiles: the same numbers the claims table's best-of statistics use."""
    e = np.asarray(errors, dtype=float)
    if e.size == 0:
        raise ConfigError("bootstrap needs at least one run with an error")
    if not 0 < subsample <= 1:
        raise ConfigError(f"bootstrap subsample must be in (0, 1], got {subsample}")
    return best_of_quantiles(e, subsample)


def _stat(values: pd.Series, stat: str) -> float:
    if stat not in STATS:
        raise one_of("stat", stat, STATS)
    if values.empty:
        return float("nan")
    return float({"best": values.min, "median": values.median, "mean": values.mean}[stat]())


def summary_table(df: pd.DataFrame, by: str | Sequence[str] = DEFAULT_BY, within: float = 4.0) -> pd.DataFrame:
    """Return one row per group with the sweep's stability numbers.

    Columns: the `by` columns, n (runs with an error, diverged at 100), best, median, mean,
    within_<N> (fraction of the n runs within `within` points of the group's best),
    diverged_frac (fraction of the n runs that diverged), failed (runs with status
    "failed"), unfinished (running or pending runs).
    """
    columns = as_columns(by)
    check_frame(df, [*columns, "error"])
    rows = []
    for key, g in groups(df, columns):
        err = counted_errors(g)
        best = err.min() if len(err) else np.nan
        status = g["status"].astype("string") if "status" in g.columns else pd.Series(dtype="string")
        rows.append(
            {
                **dict(zip(columns, key if isinstance(key, tuple) else (key,))),
                "n": len(err),
                "best": best,
                "median": err.median() if len(err) else np.nan,
                "mean": err.mean() if len(err) else np.nan,
                f"within_{within:g}": float((err <= best + within).mean()) if len(err) else np.nan,
                "diverged_frac": float(diverged_mask(g).loc[err.index].mean()) if len(err) else np.nan,
                "failed": int(status.eq("failed").sum()),
                "unfinished": int(status.isin(["running", "pending"]).sum()),
            }
        )
    return pd.DataFrame(rows)


def epochs_table(df: pd.DataFrame, by: str | Sequence[str] = DEFAULT_BY, stat: str = "best") -> pd.DataFrame:
    """Return the `stat` error per group and schedule length.

    Columns: the `by` columns, epochs, error (best/median/mean over the counted runs),
    n (counted runs), diverged (how many of them diverged).
    """
    columns = as_columns(by)
    check_frame(df, [*columns, "epochs", "error"])
    if stat not in STATS:
        raise one_of("stat", stat, STATS)
    rows = []
    for key, g in groups(df, [*columns, "epochs"]):
        err = counted_errors(g)
        if err.empty:
            continue
        rows.append(
            {
                **dict(zip([*columns, "epochs"], key)),
                "error": _stat(err, stat),
                "n": len(err),
                "diverged": int(diverged_mask(g).loc[err.index].sum()),
            }
        )
    if not rows:
        raise ConfigError("no run in the sweep frame has an error yet (all failed or unfinished)")
    return pd.DataFrame(rows)


def optimizer_gap_table(
    df: pd.DataFrame,
    a: str = "sgd",
    b: str = "adamw",
    by: str | Sequence[str] = "model",
    stat: str = "median",
    resamples: int = 2000,
    seed: int = 0,
    subsample: float = 0.25,
) -> pd.DataFrame:
    """Return the error gap `a` minus `b` per group and schedule length, with a 95% bootstrap interval.

    `stat` (analysis.claims.group_stat): "median" (default), "best", "mean" or "best_of" (pycls'
    bootstrap best of a `subsample` fraction of the runs). The interval resamples the runs of each
    group x optimizer as analysis.claims does, with the same seeds: by="model" gives the intervals
    of the claims table's optimizer_gap rows. Columns: the `by` columns, epochs, err_<a>, err_<b>,
    gap (err_<a> - err_<b>; positive means optimizer `a` is worse), low, high (NaN when either
    group has fewer than analysis.claims.MIN_RUNS runs), n_<a>, n_<b> (counted runs). Groups where
    either optimizer has no counted run are left out.
    """

    columns = as_columns(by)
    check_frame(df, [*columns, "optimizer", "epochs", "error"])
    present = sorted(df["optimizer"].dropna().astype(str).unique())
    for name in (a, b):
        if name not in present:
            raise one_of("optimizer", name, present)
    f = group_stat(stat, subsample)
    cells = {}
    for key, g in groups(df, [*columns, "optimizer", "epochs"]):
        cells[key] = make_group(g, group_name(key), resamples, seed)
    rows = []
    for (*key, opt, epochs), ga in cells.items():
        gb = cells.get((*key, b, epochs))
        if opt != a or gb is None or not len(ga.errors) or not len(gb.errors):
            continue
        err_a, err_b = float(f(ga.errors[None, :])[0]), float(f(gb.errors[None, :])[0])
        small = min(len(ga.errors), len(gb.errors)) < MIN_RUNS
        low, high = (np.nan, np.nan) if small else interval(f(ga.boot) - f(gb.boot))
        rows.append(
            {
                **dict(zip(columns, key)),
                "epochs": epochs,
                f"err_{a}": err_a,
                f"err_{b}": err_b,
                "gap": err_a - err_b,
                "low": low,
                "high": high,
                f"n_{a}": len(ga.errors),
                f"n_{b}": len(gb.errors),
            }
        )
    if not rows:
        raise ConfigError(f"optimizers {a!r} and {b!r} have no finished runs to compare")
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- figures


def _legend_label(key: Hashable, err: pd.Series, n_div: int) -> str:
    label = f"{group_label(key)}  n={len(err)} min={err.min():.1f} mean={err.mean():.1f}"
    return label + (f" div={n_div}" if n_div else "")


def _default_x_range(values: list[pd.Series], diverged: list[pd.Series]) -> list[float] | None:
    """The finished runs' errors with a margin, so the first and last steps do not sit on the axes;
    this clips the axis before the diverged pile-up at 100 when there is one."""
    finite = pd.concat([v[~d] for v, d in zip(values, diverged)])
    if finite.empty:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    pad = max(0.05 * (hi - lo), 0.5)
    return [lo - pad, hi + pad]


def edf_figure(
    df: pd.DataFrame,
    by: str | Sequence[str] = DEFAULT_BY,
    relative: bool = False,
    bootstrap: str | None = None,
    x_range: Sequence[float] | None = None,
    colors: dict | None = None,
    dashes: dict | None = None,
    subsample: float = 0.25,
    title: str | None = None,
) -> go.Figure:
    """Return the EDF of error per group: F(e) = fraction of the group's runs with error < e.

    relative=True plots error minus the group's best run (delta top-1). Diverged runs count
    at 100% error, are counted in the legend ("div=k") and marked with a triangle at the right
    edge of the x range. bootstrap="band" shades, bootstrap="errorbar" draws below the axis,
    the 2.5-97.5 percentile range of the best-of-`subsample` bootstrap (median marked; exact, see
    bootstrap_best). Per group the
    traces are, in order: "edf", "diverged" (possibly empty) and, if asked, "bootstrap".
    Groups with no counted run are left out; a frame without any raises ConfigError.
    """
    columns = as_columns(by)
    check_frame(df, [*columns, "error"])
    if bootstrap is not None and bootstrap not in BOOTSTRAP_STYLES:
        raise one_of("bootstrap style", bootstrap, BOOTSTRAP_STYLES)
    if x_range is not None and len(x_range) != 2:
        raise ConfigError(f"x_range must be (low, high), got {x_range!r}")

    parts = _edf_parts(df, columns, relative)
    styles = group_styles([p[0] for p in parts], colors, dashes, head_stems(df, columns))
    if x_range is None:
        x_range = _default_x_range([p[2] for p in parts], [p[3] for p in parts])
    right_edge = x_range[1] if x_range is not None else None

    fig = go.Figure()
    for i, (key, err, values, div) in enumerate(parts):
        label, color = group_label(key), styles[key][0]
        fig.add_trace(_edf_trace(key, err, values, div, styles[key]))
        edge = right_edge if right_edge is not None else (DIVERGED_ERROR - (err.min() if relative else 0))
        fig.add_trace(_diverged_trace(label, color, int(div.sum()), len(err), edge))
        if bootstrap is not None:
            lo, med, hi = bootstrap_best(values, subsample)
            fig.add_trace(_bootstrap_trace(label, color, bootstrap, (lo, med, hi), subsample, row=i + 1))

    _edf_layout(fig, len(parts), relative, bootstrap, x_range, title)
    return fig


def _edf_parts(df: pd.DataFrame, columns: list[str], relative: bool) -> list[tuple]:
    """(key, counted errors, plotted values, diverged mask) per group with a counted run."""
    parts = []
    for key, g in groups(df, columns):
        err = counted_errors(g)
        if err.empty:
            continue
        div = diverged_mask(g).loc[err.index]
        values = err - err.min() if relative else err
        parts.append((key, err, values, div))
    if not parts:
        raise ConfigError("no run in the sweep frame has an error yet (all failed or unfinished)")
    return parts


def _edf_layout(
    fig: go.Figure,
    n_groups: int,
    relative: bool,
    bootstrap: str | None,
    x_range: Sequence[float] | None,
    title: str | None,
) -> None:
    """Axes, legend and size of the EDF figure; error bars below the axis get one row per group."""
    y_low = -0.04 * (n_groups + 1) if bootstrap == "errorbar" else -0.02
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        xaxis=dict(title="error - best error (%)" if relative else "top-1 error (%)", range=x_range),
        yaxis=dict(title="cumulative prob.", range=[y_low, 1.02]),
        legend=dict(font=dict(family="monospace"), orientation="h", x=0, xanchor="left", y=-0.2, yanchor="top"),
        margin=dict(b=60 + 22 * n_groups),
        height=380 + 22 * n_groups,
    )


def _edf_trace(key, err: pd.Series, values: pd.Series, div: pd.Series, style: tuple) -> go.Scatter:
    """One group's EDF as a step line starting at F = 0."""
    label, (color, dash) = group_label(key), style
    x, y = edf(values)
    return go.Scatter(
        x=np.concatenate([x[:1], x]),
        y=np.concatenate([[0.0], y]),
        mode="lines",
        line=dict(shape="hv", color=color, dash=dash, width=2),
        name=_legend_label(key, err, int(div.sum())),
        legendgroup=label,
        meta={"kind": "edf", "group": label},
        hovertemplate="error %{x:.2f}<br>F %{y:.3f}<extra>" + label + "</extra>",
    )


def _diverged_trace(label: str, color: str, n_div: int, n: int, edge: float) -> go.Scatter:
    """A triangle at the right edge where a group's EDF stops short of 1 (empty when none diverged)."""
    return go.Scatter(
        x=[edge] if n_div else [],
        y=[1.0 - n_div / n] if n_div else [],
        mode="markers+text" if n_div else "markers",
        marker=dict(symbol="triangle-right", size=11, color=color, line=dict(color=DIVERGED_COLOR, width=1)),
        text=[f"{n_div} div"] if n_div else [],
        textposition="top left",
        textfont=dict(color=color),
        cliponaxis=False,  # the marker sits on the x range's edge: drawn whole, not cut in half
        showlegend=False,
        legendgroup=label,
        meta={"kind": "diverged", "group": label, "count": n_div},
        hovertemplate=f"{label}: {n_div} diverged runs (counted at 100% error)<extra></extra>",
    )


def _bootstrap_trace(label: str, color: str, style: str, percentiles: tuple, frac: float, row: int) -> go.Scatter:
    """The best-of-`frac` bootstrap range as a shaded band or an error bar below the axis."""
    lo, med, hi = percentiles
    if style == "band":
        trace = go.Scatter(
            x=[lo, hi, hi, lo, lo, None, med, med],
            y=[0, 0, 1, 1, 0, None, 0, 1],
            mode="lines",
            fill="toself",
            fillcolor=with_alpha(color, 0.12),
            line=dict(color=with_alpha(color, 0.5), width=1, dash="dot"),
            hoveron="fills+points",
        )
    else:
        trace = go.Scatter(
            x=[med],
            y=[-0.04 * row],
            mode="markers",
            marker=dict(color=color, size=8, symbol="diamond"),
            error_x=dict(type="data", symmetric=False, array=[hi - med], arrayminus=[med - lo], color=color),
        )
    meta = {"kind": "bootstrap", "group": label, "percentiles": [float(lo), float(med), float(hi)]}
    hover = f"{label}: best of {frac:.0%} bootstrap {lo:.2f} / {med:.2f} / {hi:.2f}<extra></extra>"
    trace.update(showlegend=False, legendgroup=label, meta=meta, hovertemplate=hover)
    return trace


def epochs_figure(
    df: pd.DataFrame,
    by: str | Sequence[str] = DEFAULT_BY,
    stat: str = "best",
    colors: dict | None = None,
    dashes: dict | None = None,
    title: str | None = None,
) -> go.Figure:
    """Return error vs training length (log x), one line per group, `stat` over its runs.

    Hover shows n and the number of diverged runs (counted at 100%) per point.
    """
    columns = as_columns(by)
    table = epochs_table(df, by=columns, stat=stat)
    keyed = groups(table, columns)
    styles = group_styles([k for k, _ in keyed], colors, dashes, head_stems(df, columns))
    fig = go.Figure()
    for key, g in keyed:
        g = g.sort_values("epochs")
        color, dash = styles[key]
        fig.add_trace(
            go.Scatter(
                x=g["epochs"],
                y=g["error"],
                mode="lines+markers",
                line=dict(color=color, dash=dash),
                name=group_label(key),
                customdata=np.stack([g["n"], g["diverged"]], axis=1),
                hovertemplate="%{x} epochs: %{y:.2f}%<br>n=%{customdata[0]} diverged=%{customdata[1]}<extra></extra>",
                meta={"kind": "epochs", "group": group_label(key)},
            )
        )
    ticks = sorted(table["epochs"].unique())
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        xaxis=dict(title="epochs", type="log", tickvals=ticks, ticktext=[str(t) for t in ticks]),
        yaxis=dict(title=f"top-1 error (%), {stat} run"),
    )
    return fig


def optimizer_gap_figure(
    df: pd.DataFrame,
    a: str = "sgd",
    b: str = "adamw",
    by: str | Sequence[str] = "model",
    stat: str = "median",
    colors: dict | None = None,
    title: str | None = None,
    resamples: int = 2000,
    seed: int = 0,
) -> go.Figure:
    """Return the `a` minus `b` error gap per group with its 95% bootstrap interval as error bars
    (`optimizer_gap_table`; by default the median gap of the claims table): bars for one schedule
    length, else lines vs epochs. Groups too small for an interval are drawn without error bars."""
    columns = as_columns(by)
    table = optimizer_gap_table(df, a=a, b=b, by=columns, stat=stat, resamples=resamples, seed=seed)
    table["plus"] = (table["high"] - table["gap"]).fillna(0.0)
    table["minus"] = (table["gap"] - table["low"]).fillna(0.0)
    keyed = groups(table, columns)
    styles = group_styles([k for k, _ in keyed], colors, stems=head_stems(df, columns))
    hover = "%{y:+.2f} points (95% interval %{customdata[0]:.2f} to %{customdata[1]:.2f})<extra></extra>"
    fig = go.Figure()
    if table["epochs"].nunique() == 1:
        fig.add_trace(_gap_bars(keyed, styles, f"{a} - {b}", "%{x}: " + hover))
        fig.update_xaxes(title=" ".join(columns))
    else:
        for key, g in keyed:
            fig.add_trace(_gap_line(key, g.sort_values("epochs"), styles[key], "%{x} epochs: " + hover))
        ticks = sorted(table["epochs"].unique())
        fig.update_xaxes(title="epochs", type="log", tickvals=ticks, ticktext=[str(t) for t in ticks])
    fig.add_hline(y=0, line=dict(color="gray", width=1))
    fig.update_layout(
        template=TEMPLATE, title=title, yaxis_title=f"error {a} - error {b} ({stat}, points; 95% bootstrap interval)"
    )
    return fig


def _gap_bars(keyed: list[tuple[Hashable, pd.DataFrame]], styles: dict, name: str, hover: str) -> go.Bar:
    """One bar per group: the gap at the sweep's single schedule length, with its interval."""
    labels = [group_label(k) for k, _ in keyed]
    rows = pd.concat([g for _, g in keyed])
    return go.Bar(
        x=labels,
        y=rows["gap"].tolist(),
        error_y=dict(
            type="data",
            symmetric=False,
            array=rows["plus"].tolist(),
            arrayminus=rows["minus"].tolist(),
            color="#444",
        ),
        customdata=rows[["low", "high"]].to_numpy(),
        marker_color=[styles[k][0] for k, _ in keyed],
        name=name,
        meta={"kind": "gap", "group": labels},
        hovertemplate=hover,
    )


def _gap_line(key: Hashable, g: pd.DataFrame, style: tuple, hover: str) -> go.Scatter:
    """One group's gap against schedule length (`g` sorted by epochs), with its intervals."""
    return go.Scatter(
        x=g["epochs"],
        y=g["gap"],
        error_y=dict(type="data", symmetric=False, array=g["plus"].tolist(), arrayminus=g["minus"].tolist()),
        customdata=g[["low", "high"]].to_numpy(),
        mode="lines+markers",
        line=dict(color=style[0], dash=style[1]),
        name=group_label(key),
        meta={"kind": "gap", "group": group_label(key)},
        hovertemplate=hover,
    )


def _sensitivity_cells(df, panel, row, panels, rows, relative) -> list:
    """(row number, column number, finished runs, their values, diverged runs) per subplot."""
    cells = []
    for r, row_value in enumerate(rows, start=1):
        for c, panel_value in enumerate(panels, start=1):
            sel = df[panel].eq(panel_value)
            if row:
                sel &= df[row].eq(row_value)
            g = df[sel.fillna(False).astype(bool)]
            err = counted_errors(g) if not g.empty else pd.Series(dtype=float)
            div = diverged_mask(g).loc[err.index] if not g.empty else pd.Series(dtype=bool)
            values = err - err.min() if relative and len(err) else err
            cells.append((r, c, g.loc[err.index[~div.to_numpy()]], values[~div], g.loc[err.index[div.to_numpy()]]))
    return cells


def sensitivity_figure(
    df: pd.DataFrame,
    panel: str = "stem",
    row: str | None = "optimizer",
    relative: bool = False,
    panels: Sequence | None = None,
    rows: Sequence | None = None,
    color_range: Sequence[float] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Return error over log lr (x) and log wd (y), one subplot per `panel` value and `row` value.

    All subplots share one colour scale (error, or error minus the subplot's best run when
    relative=True; by default from the finished runs' range). Diverged runs are black crosses.
    `panels` / `rows` fix the grid (e.g. to keep it stable while filtering); each subplot holds
    two traces, "runs" and "diverged", possibly empty.
    """
    needed = [panel, "lr", "wd", "error"] + ([row] if row else [])
    check_frame(df, needed)
    panels = list(panels) if panels is not None else sorted(df[panel].dropna().unique().tolist())
    rows = (list(rows) if rows is not None else sorted(df[row].dropna().unique().tolist())) if row else [None]
    if not panels or not rows:
        raise ConfigError(f"no values in column {panel!r}" + (f" or {row!r}" if row else ""))

    fig = _sensitivity_grid(panels, rows)
    cells = _sensitivity_cells(df, panel, row, panels, rows, relative)

    if color_range is None:
        finished = pd.concat([cell[3] for cell in cells])
        color_range = [float(finished.min()), float(finished.max())] if len(finished) else [0.0, 1.0]
    _sensitivity_panels(fig, df, row, panels, rows, cells)

    height = _grid_height(len(rows))
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        coloraxis=dict(
            colorscale="Viridis_r",
            cmin=color_range[0],
            cmax=color_range[1],
            colorbar=dict(title="error - best" if relative else "error (%)"),
        ),
        height=height,
        margin=dict(t=TOP_PX, b=BOTTOM_PX),
        legend=dict(orientation="h", x=0, y=-BOTTOM_PX / 2 / (height - TOP_PX - BOTTOM_PX), yanchor="top"),
    )
    return fig


def _grid_height(n_rows: int) -> int:
    """Height in pixels of the lr/wd figure with `n_rows` rows of subplots."""
    return TOP_PX + BOTTOM_PX + ROW_PX * n_rows + GAP_PX * (n_rows - 1)


def _sensitivity_grid(panels: list, rows: list) -> go.Figure:
    """The empty subplot grid, one row per `rows` value and one column per `panels` value.

    One optimizer per row: rows have their own lr/wd ranges, panels in a row share them; the axes
    are named in the subplot titles, so no axis title runs into the row below.
    """
    titles = [(str(p) if r is None else f"{p} · {r}") + ": lr (x), wd (y)" for r in rows for p in panels]
    return make_subplots(
        rows=len(rows),
        cols=len(panels),
        subplot_titles=titles,
        shared_yaxes=True,
        horizontal_spacing=0.04,
        vertical_spacing=GAP_PX / (_grid_height(len(rows)) - TOP_PX - BOTTOM_PX),
    )


def _sensitivity_panels(
    fig: go.Figure, df: pd.DataFrame, row: str | None, panels: list, rows: list, cells: list
) -> None:
    """Add each subplot's traces and its log axes; a row's subplots share its lr and wd ticks and
    its lr range. The diverged runs' legend entry is shown once."""
    ticks = {}  # row -> (lr ticks, wd ticks)
    for r, row_value in enumerate(rows, start=1):
        in_row = df[df[row].eq(row_value).fillna(False).astype(bool)] if row else df
        ticks[r] = (log_ticks(*_span(in_row["lr"])), log_ticks(*_span(in_row["wd"])))
    legend_shown = False
    for r, c, done, values, diverged in cells:
        where = f"{panels[c - 1]}" + (f" · {rows[r - 1]}" if row else "")
        for trace in _sensitivity_traces(done, values, diverged, where, show_legend=not legend_shown):
            fig.add_trace(trace, row=r, col=c)
        legend_shown |= bool(len(diverged))
        first = (r - 1) * len(panels) + 1  # axis number of the row's first subplot
        fig.update_xaxes(
            type="log", row=r, col=c, matches=None if c == 1 else f"x{first if first > 1 else ''}", **ticks[r][0]
        )
        fig.update_yaxes(type="log", row=r, col=c, **ticks[r][1])


def _sensitivity_traces(
    done: pd.DataFrame, values: pd.Series, diverged: pd.DataFrame, where: str, show_legend: bool
) -> tuple[go.Scatter, go.Scatter]:
    """One subplot's finished runs (coloured by error) and diverged runs (crosses) over lr and wd."""
    runs = go.Scatter(
        x=done["lr"],
        y=done["wd"],
        mode="markers",
        marker=dict(color=values, coloraxis="coloraxis", size=9, line=dict(color="white", width=0.5)),
        text=done["run"] if "run" in done.columns else None,
        hovertemplate="%{text}<br>lr %{x:.3g}<br>wd %{y:.3g}<br>error %{marker.color:.2f}<extra></extra>",
        showlegend=False,
        meta={"kind": "runs", "group": where},
    )
    crosses = go.Scatter(
        x=diverged["lr"],
        y=diverged["wd"],
        mode="markers",
        marker=dict(symbol="x", color=DIVERGED_COLOR, size=9),
        text=diverged["run"] if "run" in diverged.columns else None,
        hovertemplate="%{text}<br>lr %{x:.3g}<br>wd %{y:.3g}<br>diverged<extra></extra>",
        name="diverged",
        legendgroup="diverged",
        showlegend=bool(len(diverged)) and show_legend,
        meta={"kind": "diverged", "group": where},
    )
    return runs, crosses


def _span(values: pd.Series) -> tuple[float, float]:
    """(min, max) of the positive values (0, 0 when there are none)."""
    v = pd.to_numeric(values, errors="coerce")
    v = v[v > 0]
    return (float(v.min()), float(v.max())) if len(v) else (0.0, 0.0)

"""Training curves of chosen runs, read from each run directory's metrics.jsonl."""

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis import rundir
from analysis.errors import ConfigError, one_of
from analysis.frame import check_frame
from analysis.plots.style import TEMPLATE, color_map, head_stems, integer_ticks
from analysis.rundir import METRIC_KEYS

MAX_POINTS = 2000  # points per curve at most (evenly spaced epochs, the last one kept)
TITLES = {
    "train_loss": "train loss",
    "test_top1_err": "top-1 error (%)",
    "test_top5_err": "top-5 error (%)",
    "ema_top1_err": "EMA top-1 error (%)",
    "ema_top5_err": "EMA top-5 error (%)",
    "lr": "learning rate",
    "seconds": "epoch time (s)",
    "images_per_s": "images / s",
    "elapsed": "elapsed (s)",
    "step": "step",
    "epoch": "epoch",
}


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """Return a run's metrics.jsonl as a DataFrame, one row per epoch (nulls become NaN), read by
    rundir.read_metrics: the last row per epoch kept, torn or malformed lines skipped.

    A run that has not written an epoch yet gives an empty frame with the standard columns; the
    reader streams the file in bounded memory and skips invalid rows (non-finite or out-of-range numbers).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {str(run_dir)!r} does not exist")
    records = rundir.read_metrics(run_dir)
    if not records:
        return pd.DataFrame(columns=list(METRIC_KEYS), dtype=float)
    frame = pd.DataFrame.from_records(records)
    for key in METRIC_KEYS:
        if key not in frame.columns:
            frame[key] = float("nan")
    return frame.apply(pd.to_numeric, errors="coerce")


def _runs(runs: pd.DataFrame | Iterable[str | Path], labels: Sequence[str] | None) -> list[tuple[str, Path]]:
    """Return [(label, run_dir)] from a sweep frame (columns run_dir, run) or a list of paths."""
    if isinstance(runs, pd.DataFrame):
        check_frame(runs, ["run_dir"], what="runs frame")
        dirs = [Path(d) for d in runs["run_dir"]]
        names = [str(r) for r in runs["run"]] if "run" in runs.columns else [d.name for d in dirs]
    else:
        dirs = [Path(d) for d in ([runs] if isinstance(runs, (str, Path)) else runs)]
        names = [d.name for d in dirs]
    if not dirs:
        raise ConfigError("no runs given: pass run directories or rows of the sweep frame")
    if labels is not None:
        if len(labels) != len(dirs):
            raise ConfigError(f"got {len(labels)} labels for {len(dirs)} runs")
        names = [str(label) for label in labels]
    return list(zip(names, dirs))


def curves_figure(
    runs: pd.DataFrame | Iterable[str | Path],
    metrics: Sequence[str] = ("train_loss", "test_top1_err", "lr"),
    labels: Sequence[str] | None = None,
    x: str = "epoch",
    log_y: Sequence[str] = (),
    title: str | None = None,
) -> go.Figure:
    """Return stacked panels (one per metric, shared x) of the chosen runs' curves, overlaid.

    `runs` is rows of the sweep frame (their run_dir, labelled by run) or run directories.
    One trace per run and metric, a run keeps its colour across panels (the colour of its row's
    `stem`, else of the stem its label names; see `style.color_map`), epochs tick on whole numbers;
    trace meta holds {"kind": metric, "group": label}. Runs without epochs yet give empty traces. Metrics
    named in `log_y` get a log y axis.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    for name in [*metrics, x, *log_y]:
        if name not in METRIC_KEYS:
            raise one_of("metric", name, METRIC_KEYS)
    chosen = _runs(runs, labels)
    stems = {}
    if isinstance(runs, pd.DataFrame):  # colour by the frame's stem column
        stems = head_stems(runs.assign(label=[label for label, _ in chosen]), "label")
    colors = color_map((label for label, _ in chosen), stems)
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, vertical_spacing=0.04)
    longest = 1.0
    for label, run_dir in chosen:
        frame = read_metrics(run_dir)
        if len(frame) > MAX_POINTS:  # at most MAX_POINTS per curve, the last epoch kept
            frame = frame.iloc[sorted({*range(0, len(frame), -(-len(frame) // MAX_POINTS)), len(frame) - 1})]
        color = colors[label]
        longest = max(longest, float(frame[x].max()) if len(frame) else 1.0)
        for r, metric in enumerate(metrics, start=1):
            fig.add_trace(
                go.Scatter(
                    x=frame[x],
                    y=frame[metric],
                    mode="lines+markers",
                    line=dict(color=color),
                    name=label,
                    legendgroup=label,
                    showlegend=r == 1,
                    meta={"kind": metric, "group": label},
                    hovertemplate=f"{label}<br>{x} %{{x}}<br>{metric} %{{y:.4g}}<extra></extra>",
                ),
                row=r,
                col=1,
            )
            fig.update_yaxes(title=TITLES[metric], type="log" if metric in log_y else None, row=r, col=1)
    fig.update_xaxes(title=TITLES[x], row=len(metrics), col=1)
    if x == "epoch":
        fig.update_xaxes(**integer_ticks(longest))
    fig.update_layout(template=TEMPLATE, title=title, height=max(300, 230 * len(metrics)))
    return fig

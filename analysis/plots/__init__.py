"""Figure builders: pure functions, a DataFrame (or run directories) in, a plotly Figure out."""

from analysis.plots.curves import curves_figure, read_metrics
from analysis.plots.forest import beside, forest_figure
from analysis.plots.stability import (
    bootstrap_best,
    edf,
    edf_figure,
    epochs_figure,
    epochs_table,
    optimizer_gap_figure,
    optimizer_gap_table,
    sensitivity_figure,
    summary_table,
)

__all__ = [
    "beside",
    "bootstrap_best",
    "curves_figure",
    "edf",
    "edf_figure",
    "forest_figure",
    "epochs_figure",
    "epochs_table",
    "optimizer_gap_figure",
    "optimizer_gap_table",
    "read_metrics",
    "sensitivity_figure",
    "summary_table",
]

"""Interactive widgets for JupyterLab (ipywidgets 8; plotly figures shown in `FigureOutput`s).

- `SensitivityExplorer`, `AttentionExplorer`, `FilterExplorer` (explorers.py): explore a sweep's
  results and trained runs.
- `SweepMonitor` (monitor.py): watch a running sweep live, from a background thread that keeps
  the kernel free; cancel and resubmit runs. Its parts: refresher.py (the background thread, its
  lock and change detection), and the panels: the counts header and the runs table (monitor.py),
  the curves and the finished runs' EDF and claims (figures.py), the buttons (actions.py).
- base.py: the shared pieces (control factories, frame filtering, in-place figure syncing,
  `FigureOutput`).
"""

from analysis.widgets.base import (
    Explorer,
    FigureOutput,
    LogRangeSlider,
    filter_frame,
    log_range_slider,
    message_figure,
    multi_select,
    sync_figure,
)
from analysis.widgets.explorers import AttentionExplorer, FilterExplorer, SensitivityExplorer, run_labels
from analysis.widgets.monitor import SweepMonitor

__all__ = [
    "AttentionExplorer",
    "Explorer",
    "FigureOutput",
    "FilterExplorer",
    "LogRangeSlider",
    "SensitivityExplorer",
    "SweepMonitor",
    "filter_frame",
    "log_range_slider",
    "message_figure",
    "multi_select",
    "run_labels",
    "sync_figure",
]

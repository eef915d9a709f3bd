"""Interactive explorers for JupyterLab (ipywidgets 8 + plotly FigureWidget).

Each explorer composes figure builders from `analysis.plots`: its controls filter the input,
the builders make fresh figures, and `sync_figure` copies them into long-lived FigureWidgets
so the displayed widgets update in place. The generic pieces (control factories, frame
filtering, figure syncing, the `Explorer` base) are meant to be shared by every explorer.
"""

import html
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.errors import ConfigError
from analysis.plots.frame import as_columns, check_frame, counted_errors, diverged_mask, group_keys, positive_range
from analysis.plots.stability import DEFAULT_BY, edf_figure, sensitivity_figure
from analysis.plots.style import style_maps

# ---------------------------------------------------------------- generic helpers


def _plain(value):
    """Return numpy scalars as Python scalars (widget options must serialise)."""
    return value.item() if isinstance(value, np.generic) else value


def multi_select(values: Sequence, description: str, rows: int | None = None) -> widgets.SelectMultiple:
    """Return a SelectMultiple over the distinct sorted `values`, all selected."""
    options = sorted({_plain(v) for v in values if not pd.isna(v)})
    return widgets.SelectMultiple(
        options=[(str(v), v) for v in options],
        value=tuple(options),
        description=description,
        rows=rows or min(6, max(2, len(options))),
        layout=widgets.Layout(width="auto"),
        style={"description_width": "initial"},
    )


def log_range_sliders(values: Sequence[float], description: str,
                      step: float = 0.05) -> tuple[widgets.FloatLogSlider, widgets.FloatLogSlider] | None:
    """Return (low, high) FloatLogSliders spanning the positive `values`, set to include all.

    None when there is no positive value. Sliders only report on release
    (continuous_update=False), so dragging does not redraw at every step.
    """
    span = positive_range(pd.Series(values))
    if span is None:
        return None
    lo = math.floor(math.log10(span[0]) / step) * step
    hi = math.ceil(math.log10(span[1]) / step) * step
    hi = max(hi, lo + step)
    common = dict(base=10, min=lo, max=hi, step=step, readout_format=".2e", continuous_update=False,
                  style={"description_width": "initial"})
    return (widgets.FloatLogSlider(value=10**lo, description=f"{description} from", **common),
            widgets.FloatLogSlider(value=10**hi, description=f"{description} to", **common))


def filter_frame(df: pd.DataFrame, selections: dict[str, Sequence] | None = None,
                 ranges: dict[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """Return the rows of `df` whose values are in `selections[col]` and within `ranges[col]`.

    Ranges are closed; a small relative tolerance keeps values on a slider's end. Rows with a
    missing value in a filtered column are dropped.
    """
    keep = pd.Series(True, index=df.index)
    for column, allowed in (selections or {}).items():
        check_frame(df, [column])
        keep &= df[column].isin(list(allowed)).fillna(False).astype(bool)
    for column, (lo, hi) in (ranges or {}).items():
        check_frame(df, [column])
        v = pd.to_numeric(df[column], errors="coerce")
        keep &= ((v >= lo * (1 - 1e-9)) & (v <= hi * (1 + 1e-9))).fillna(False).astype(bool)
    return df[keep]


def _plain_json(trace) -> dict:
    out = trace.to_plotly_json()
    out.pop("uid", None)
    return out


def sync_figure(target: go.FigureWidget, source: go.Figure) -> None:
    """Make the FigureWidget `target` show `source`, changing it in place.

    When both have the same trace types in the same order, each trace's properties are
    overwritten (old ones the source lacks are cleared), so the frontend gets a restyle;
    otherwise the traces are swapped. The layout is overwritten key by key.
    """
    with target.batch_update():
        same = len(target.data) == len(source.data) and all(
            t.type == s.type for t, s in zip(target.data, source.data))
        if same:
            for t, s in zip(target.data, source.data):
                new = _plain_json(s)
                for key in _plain_json(t):
                    new.setdefault(key, None)
                new.pop("type", None)
                t.update(new, overwrite=True)
        else:
            target.data = ()
            target.add_traces(list(source.data))
        old_layout = target.layout.to_plotly_json()
        new_layout = source.layout.to_plotly_json()
        changes = {k: v for k, v in new_layout.items() if old_layout.get(k) != v}
        changes.update({k: None for k in old_layout if k not in new_layout and k != "template"})
        if changes:
            target.layout.update(changes, overwrite=True)


def clear_figure(target: go.FigureWidget, keep_traces: bool = True) -> None:
    """Empty the FigureWidget: blank each trace's x/y (keep_traces) or drop all traces."""
    with target.batch_update():
        if keep_traces:
            for t in target.data:
                t.update(x=[], y=[], text=None)
        else:
            target.data = ()


class Explorer(ABC):
    """Base of the explorers: named controls, a status line, a container widget, notebook display.

    Subclasses fill `self.controls` (name -> widget with a `value`), build `self.widget`
    and implement `update()`; `watch()` makes every control change call `update()`.
    """

    def __init__(self) -> None:
        self.controls: dict[str, widgets.ValueWidget] = {}
        self.status = widgets.HTML()
        self.widget: widgets.Box = widgets.VBox()

    def watch(self) -> None:
        """Call `update()` whenever a control's value changes."""
        for control in self.controls.values():
            control.observe(lambda _change: self.update(), names="value")

    def set_status(self, text: str) -> None:
        """Show one line of text under the controls."""
        self.status.value = f"<span style='font-family:monospace'>{html.escape(text)}</span>"

    @abstractmethod
    def update(self) -> None:
        """Redraw the figures from the controls' current values."""

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


# ---------------------------------------------------------------- hyperparameter sensitivity


class SensitivityExplorer(Explorer):
    """Explore how error depends on stem, optimizer, schedule length, lr and wd.

    Controls (in `.controls`): multi-selects "stem", "model", "optimizer", "epochs", "preset"
    (those the frame has), log sliders "lr_min"/"lr_max" and "wd_min"/"wd_max", a "relative"
    toggle (delta to each group's best) and a "bootstrap" toggle (pycls band on the EDF).
    Figures: `.edf_fig` (EDF per `by` group) and `.scatter_fig` (error over lr x wd, one panel
    per `panel` value and `row` value), both FigureWidgets updated in place. `.filtered()`
    gives the runs currently shown. Colours, dashes, the panel grid and the colour scale come
    from the full frame so they stay put while filtering.
    """

    SELECTS = ("stem", "model", "optimizer", "epochs", "preset")

    def __init__(self, df: pd.DataFrame, by: str | Sequence[str] = DEFAULT_BY, panel: str = "stem",
                 row: str | None = "optimizer") -> None:
        super().__init__()
        self.by = as_columns(by)
        self.panel, self.row = panel, row
        check_frame(df, [*self.by, panel, "lr", "wd", "error"] + ([row] if row else []))
        self.df = df

        for name in self.SELECTS:
            if name in df.columns and df[name].notna().any():
                self.controls[name] = multi_select(df[name], name)
        for name in ("lr", "wd"):
            sliders = log_range_sliders(df[name], name)
            if sliders is not None:
                self.controls[f"{name}_min"], self.controls[f"{name}_max"] = sliders
        self.controls["relative"] = widgets.ToggleButton(value=False, description="relative to best",
                                                         tooltip="error minus each group's best run")
        self.controls["bootstrap"] = widgets.ToggleButton(value=False, description="bootstrap band",
                                                          tooltip="2.5-97.5% of the best of 25% resamples")

        self.colors, self.dashes = style_maps(group_keys(df, self.by))
        self.panels = sorted(df[panel].dropna().unique().tolist())
        self.rows = sorted(df[row].dropna().unique().tolist()) if row else None
        self.color_ranges = {rel: self._color_range(rel) for rel in (False, True)}

        self.edf_fig = go.FigureWidget()
        self.scatter_fig = go.FigureWidget(self._scatter(df))
        selects = [self.controls[n] for n in self.SELECTS if n in self.controls]
        sliders = [self.controls[n] for n in ("lr_min", "lr_max", "wd_min", "wd_max") if n in self.controls]
        self.widget = widgets.VBox([
            widgets.HBox(selects),
            widgets.HBox([widgets.VBox(sliders), widgets.VBox([self.controls["relative"],
                                                               self.controls["bootstrap"]])]),
            self.status,
            self.edf_fig,
            self.scatter_fig,
        ])
        self.update()
        self.watch()

    def _color_range(self, relative: bool) -> list[float]:
        try:
            fig = sensitivity_figure(self.df, panel=self.panel, row=self.row, relative=relative)
        except ConfigError:
            return [0.0, 1.0]
        return [fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax]

    def _scatter(self, df: pd.DataFrame, relative: bool = False) -> go.Figure:
        return sensitivity_figure(df, panel=self.panel, row=self.row, relative=relative, panels=self.panels,
                                  rows=self.rows, color_range=self.color_ranges[relative])

    def selections(self) -> dict[str, tuple]:
        """Return {column: selected values} of the multi-selects."""
        return {n: tuple(self.controls[n].value) for n in self.SELECTS if n in self.controls}

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Return {column: (low, high)} of the lr / wd sliders."""
        return {n: (self.controls[f"{n}_min"].value, self.controls[f"{n}_max"].value)
                for n in ("lr", "wd") if f"{n}_min" in self.controls}

    def filtered(self) -> pd.DataFrame:
        """Return the runs the controls currently select."""
        return filter_frame(self.df, self.selections(), self.ranges())

    def update(self) -> None:
        """Redraw both figures from the current selection (in place)."""
        df = self.filtered()
        relative = self.controls["relative"].value
        bootstrap = "band" if self.controls["bootstrap"].value else None
        if df.empty:
            clear_figure(self.edf_fig, keep_traces=False)
            clear_figure(self.scatter_fig)
            self.set_status(f"no runs selected (of {len(self.df)})")
            return
        try:
            sync_figure(self.edf_fig, edf_figure(df, by=self.by, relative=relative, bootstrap=bootstrap,
                                                 colors=self.colors, dashes=self.dashes))
        except ConfigError as err:
            clear_figure(self.edf_fig, keep_traces=False)
            self.set_status(f"{len(df)} runs selected: {err}")
            clear_figure(self.scatter_fig)
            return
        sync_figure(self.scatter_fig, self._scatter(df, relative))
        counted = counted_errors(df)
        n_div = int(diverged_mask(df).loc[counted.index].sum())
        self.set_status(f"{len(counted)} runs shown of {len(self.df)}: {n_div} diverged, "
                        f"{len(df) - len(counted)} failed or unfinished in the selection")


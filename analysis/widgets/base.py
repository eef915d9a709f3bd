"""Pieces every widget here shares: control factories, frame filtering, in-place figure syncing,
the `FigureOutput` that shows a figure, a figure's centred message and the `Explorer` base."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import traitlets

from analysis.frame import check_frame, positive_range
from analysis.plots.style import TEMPLATE


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
        rows=rows or min(6, max(1, len(options))),  # one line for one value
        layout=widgets.Layout(width="auto"),
        style={"description_width": "initial"},
    )


def button(description: str, icon: str, action, style: str = "") -> widgets.Button:
    """Return a Button as wide as its label that calls `action()` on a click."""
    widget = widgets.Button(
        description=description, icon=icon, button_style=style, layout=widgets.Layout(width="auto", flex="0 0 auto")
    )
    widget.on_click(lambda _b: action())
    return widget


class LogRangeSlider(widgets.HBox):
    """A range slider over the log10 of positive values, with the real values as its readout.

    `.value` is (low, high) in real units and can be set; the slider steps in `step` decades and
    only reports on release (continuous_update=False), so dragging does not redraw at every step.
    """

    value = traitlets.Tuple(traitlets.Float(), traitlets.Float())

    def __init__(self, low: float, high: float, description: str, step: float = 0.05) -> None:
        lo = math.floor(math.log10(low) / step) * step
        hi = max(math.ceil(math.log10(high) / step) * step, lo + step)
        self.slider = widgets.FloatRangeSlider(
            min=lo,
            max=hi,
            step=step,
            value=(lo, hi),
            description=description,
            readout=False,
            continuous_update=False,
            style={"description_width": "initial"},
            layout=widgets.Layout(width="250px"),
        )
        self.readout = widgets.Label(layout=widgets.Layout(width="125px"))
        super().__init__([self.slider, self.readout])
        self._syncing = False
        self.slider.observe(self._from_slider, names="value")
        self.observe(self._to_slider, names="value")
        self.value = (10**lo, 10**hi)

    @property
    def bounds(self) -> tuple[float, float]:
        """(lowest, highest) value the slider reaches."""
        return 10**self.slider.min, 10**self.slider.max

    def _from_slider(self, change) -> None:
        if not self._syncing:
            self.value = (10 ** change["new"][0], 10 ** change["new"][1])

    def _to_slider(self, change) -> None:
        low, high = change["new"]
        self.readout.value = f"{low:.2g} to {high:.2g}"
        self._syncing = True
        try:
            self.slider.value = (math.log10(max(low, 1e-300)), math.log10(max(high, 1e-300)))
        finally:
            self._syncing = False


def log_range_slider(values: Sequence[float], description: str, step: float = 0.05) -> LogRangeSlider | None:
    """Return a LogRangeSlider spanning the positive `values`, set to include all; None when there
    is no positive value."""
    span = positive_range(pd.Series(values))
    return None if span is None else LogRangeSlider(span[0], span[1], description, step)


def filter_frame(
    df: pd.DataFrame,
    selections: dict[str, Sequence] | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> pd.DataFrame:
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


def sync_figure(target: go.Figure, source: go.Figure) -> None:
    """Make the figure `target` show `source`, changing it in place (its trace objects are kept).

    When both have the same trace types in the same order, each trace's properties are
    overwritten (old ones the source lacks are cleared); otherwise the traces are swapped.
    The layout is overwritten key by key.
    """
    with target.batch_update():
        same = len(target.data) == len(source.data) and all(t.type == s.type for t, s in zip(target.data, source.data))
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


PLOTLY_MIME = "application/vnd.plotly.v1+json"


class FigureOutput(widgets.Output):
    """An ipywidgets Output that shows one plotly figure: `show(fig)` replaces its output with the
    figure's current state (a plain plotly mime bundle, drawn by JupyterLab's plotly renderer).

    Used instead of plotly FigureWidgets, whose front-end model loads the plotly bundle on its own:
    JupyterLab's widget manager waits 2 s for a model a view refers to, so FigureWidgets created
    while the page is busy (a running sweep, a long notebook) stayed blank. An Output's model is
    small, and a new output per change re-renders wherever the cell is, after scrolling included.
    Setting `outputs` is a trait change, so `show` also works from a background thread.
    """

    def __init__(self, fig: go.Figure | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shown: dict | None = None  # the figure's JSON now on the page
        if fig is not None:
            self.show(fig)

    def show(self, fig: go.Figure) -> bool:
        """Show `fig` as it is now; return False (sending nothing) when the page already shows it."""
        data = json.loads(pio.to_json(fig, validate=False))
        if data == self.shown:
            return False
        self.shown = data
        bundle = {PLOTLY_MIME: {**data, "config": {"displaylogo": False}}, "text/plain": "plotly figure"}
        self.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)
        return True


def message_figure(text: str, height: int = 240, width: int | None = None) -> go.Figure:
    """Return a figure without traces or axes that shows `text` in its middle (an empty selection,
    nothing finished yet): what a FigureOutput shows instead of stale axes."""
    fig = go.Figure()
    fig.update_layout(
        template=TEMPLATE,
        height=height,
        width=width,
        xaxis=dict(visible=False),
        yaxis=dict(visible=False),
        margin=dict(l=20, r=20, t=20, b=20),
        annotations=[centred_note(html.escape(text))],
    )
    return fig


def centred_note(text: str) -> dict:
    """Return a plotly annotation showing `text` (plotly's HTML subset: escape what a folder gave)
    grey in the middle of the figure, in place of its axes."""
    return dict(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=15, color="#666"))


class Explorer(widgets.VBox):
    """Base of the explorers: named controls, a status line and their layout, `self.widget`.

    An explorer is itself a widget (a VBox holding `self.widget`): a cell displays it, and it goes
    into any ipywidgets layout (`widgets.HBox([explorer, monitor])`). Subclasses fill
    `self.controls` (name -> widget with a `value`), build `self.widget` and implement `update()`;
    `watch()` makes every control change call `update()`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.controls: dict[str, widgets.Widget] = {}
        self.status = widgets.HTML()
        self.widget = widgets.VBox()

    @property
    def widget(self) -> widgets.Box:
        """The explorer's layout of controls and figures (its one child)."""
        return self._body

    @widget.setter
    def widget(self, box: widgets.Box) -> None:
        self._body = box
        self.children = (box,)

    def watch(self) -> None:
        """Call `update()` whenever a control's value changes."""
        for control in self.controls.values():
            control.observe(lambda _change: self.update(), names="value")

    def set_status(self, text: str) -> None:
        """Show one line of text under the controls."""
        self.status.value = f"<span style='font-family:monospace'>{html.escape(text)}</span>"

    def update(self) -> None:
        """Redraw the figures from the controls' current values."""
        raise NotImplementedError

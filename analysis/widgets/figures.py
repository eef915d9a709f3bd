"""The sweep monitor's figure panels: the training curves of the selected runs (`Curves`) and the
finished runs' error EDF and the paper's claims (`Results`). Both draw from a SweepWatcher."""

from __future__ import annotations

import html

import ipywidgets as widgets
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.plots.stability import edf_figure
from analysis.plots.style import TEMPLATE, color_map, head_stems, integer_ticks, style_maps
from analysis.sweeps.watch import SweepWatcher
from analysis.widgets.base import FigureOutput, centred_note, message_figure, sync_figure

CURVES = (("train_loss", "train loss"), ("test_top1_err", "top-1 test error (%)"))
NO_CURVES = "the curves of the selected runs appear here after their first epoch"
NO_EDF = "no finished runs yet: the EDF fills in as runs end"


def _curves_message(fig: go.Figure, empty: bool) -> go.Figure:
    """Show a line in place of the curves' axes while no selected run has an epoch (same traces)."""
    fig.update_xaxes(visible=not empty)
    fig.update_yaxes(visible=not empty)
    titles = [a for a in fig.layout.annotations if a.text != NO_CURVES]
    fig.update_layout(annotations=titles + ([centred_note(NO_CURVES)] if empty else []))
    for a in fig.layout.annotations:  # the panel titles
        if a.text != NO_CURVES:
            a.visible = not empty
    return fig


class Curves:
    """The runs selector (`.select`) and the training curves of the selected runs (`.fig`, shown by
    `.view`): one pair of traces per run (train loss, test error) that gain points in place. Until
    the user picks runs, runs that start training join the selection, up to `follow` of them."""

    def __init__(self, watcher: SweepWatcher, run_ids, plan, follow: int, width: int) -> None:
        self.watcher, self.follow, self.width = watcher, follow, width
        self.run_colors = color_map(run_ids, head_stems(plan, "run"))
        self.select = widgets.SelectMultiple(
            options=list(run_ids), rows=6, description="runs", layout=widgets.Layout(width="340px")
        )
        self._following, self._muted = True, False
        self.fig = self._layout(plan)
        self.view = FigureOutput(self.fig)

    def _layout(self, plan) -> go.Figure:
        fig = make_subplots(rows=1, cols=2, subplot_titles=[title for _, title in CURVES], horizontal_spacing=0.1)
        longest = max(plan["epochs"].max(), 1) if len(plan) else 1
        fig.update_xaxes(title="epoch", rangemode="tozero", **integer_ticks(longest))
        fig.update_layout(
            template=TEMPLATE,
            width=self.width,
            height=340,
            margin=dict(t=40, b=40),
            title=None,
            legend=dict(orientation="h", x=0, y=-0.25, yanchor="top"),
        )
        return _curves_message(fig, True)

    def follow_running(self) -> None:
        """Until the user picks runs, add runs that start training to the selection (up to `follow`)."""
        if not self._following or len(self.select.value) >= self.follow:
            return
        started = [r for r, w in self.watcher.runs.items() if w.state == "running" or w.rows]
        picked = list(self.select.value) + [r for r in started if r not in self.select.value]
        if picked != list(self.select.value):
            self._muted = True
            try:
                self.select.value = tuple(picked[: self.follow])
            finally:
                self._muted = False

    def picked(self) -> None:
        """The selection changed: a change the user made ends the following of running runs."""
        if not self._muted:
            self._following = False

    def _traces(self, run: str) -> list[go.Scatter]:
        color = self.run_colors[run]
        return [
            go.Scatter(
                x=[],
                y=[],
                mode="lines+markers",
                name=run,
                legendgroup=run,
                showlegend=i == 0,
                line=dict(color=color, width=2),
                marker=dict(size=5),
                meta={"kind": key, "group": run},
                hovertemplate=f"{html.escape(run)}<br>epoch %{{x}}: %{{y:.4g}}<extra></extra>",
            )
            for i, (key, _) in enumerate(CURVES)
        ]

    def _follow_selection(self, wanted: list[str]) -> None:
        """Keep one pair of traces per selected run, in the selection's order (kept traces stay the same objects)."""
        fig = self.fig
        have = [t.meta["group"] for t in fig.data[::2]]
        if have == wanted:
            return
        fig.data = [t for t in fig.data if t.meta["group"] in wanted]
        for run in wanted:
            if run not in have:
                fig.add_traces(self._traces(run), rows=[1, 1], cols=[1, 2])
        order = {run: i for i, run in enumerate(wanted)}
        fig.data = sorted(fig.data, key=lambda t: (order[t.meta["group"]], t.meta["kind"] != CURVES[0][0]))

    def draw(self, changed: set[str]) -> None:
        """Follow the selection; give a run's traces its new epochs in place."""
        fig = self.fig
        with fig.batch_update():
            self._follow_selection(list(self.select.value))
            for trace in fig.data:
                rows = self.watcher.runs[trace.meta["group"]].rows
                if len(trace.x) != len(rows) or trace.meta["group"] in changed:
                    trace.x = [r["epoch"] for r in rows]
                    trace.y = [r.get(trace.meta["kind"]) for r in rows]
            empty = not any(len(t.x) for t in fig.data)
            if empty != (fig.layout.xaxis.visible is False):
                _curves_message(fig, empty)
        self.view.show(fig)


class Results:
    """The finished runs: their error EDF per model and optimizer (`.edf_fig`, shown by `.edf_view`;
    traces appear as groups finish) and the paper's claims (`.claims`, analysis.claims) once every
    model and optimizer has `min_runs` finished runs (`within` points for within_k)."""

    def __init__(self, watcher: SweepWatcher, plan, min_runs: int, within: float, width: int) -> None:
        self.watcher, self.plan, self.min_runs, self.within, self.width = watcher, plan, min_runs, within, width
        self.colors, self.dashes = style_maps(
            plan.groupby(["model", "optimizer"]).size().index, head_stems(plan, "model")
        )
        self.edf_fig = message_figure(NO_EDF, width=width)
        self.edf_view = FigureOutput(self.edf_fig)
        self.claims = widgets.HTML()

    def draw(self) -> None:
        frame = self.watcher.frame()
        counted = frame[frame["error"].notna()] if len(frame) else frame
        if counted.empty:
            sync_figure(self.edf_fig, message_figure(NO_EDF, width=self.width))
        else:
            fig = edf_figure(
                counted, colors=self.colors, dashes=self.dashes, title=f"error EDF of the {len(counted)} finished runs"
            )
            sync_figure(self.edf_fig, fig.update_layout(width=self.width))
        self.edf_view.show(self.edf_fig)
        self.claims.value = self._claims_html(counted)

    def _claims_html(self, counted) -> str:
        """The claims table (analysis.claims) once every model and optimizer has min_runs finished
        runs, else which groups it waits for."""
        from analysis.claims import claims_html, claims_table

        planned = self.plan.groupby(["model", "optimizer"]).size()
        have = counted.groupby(["model", "optimizer"]).size() if len(counted) else {}
        short = [
            f"{m} {o} {int(have.get((m, o), 0))}/{min(self.min_runs, n)}"
            for (m, o), n in planned.items()
            if have.get((m, o), 0) < min(self.min_runs, n)
        ]
        if short:
            return (
                "<div style='color:#666'>the paper's claims: once each model and optimizer has "
                f"{self.min_runs} finished runs (now {html.escape(', '.join(short))})</div>"
            )
        table = claims_table(counted, within=self.within)
        return (
            f"<div style='max-width:{self.width}px;font-size:12px'>"  # the table scrolls instead of being cut
            "<b>the paper's claims on the finished runs</b> "
            f"(95% bootstrap intervals; within {self.within:g} points){claims_html(table)}</div>"
        )

"""SweepMonitor: a running sweep, live in JupyterLab, while the kernel stays free.

    monitor = sweep.monitor()        # or SweepMonitor(sweep, interval=5)
    monitor                          # displays it; it refreshes itself from a background thread

A background thread refreshes the view every `interval` seconds through
`analysis.sweeps.watch.SweepWatcher` (one scheduler query, then only the run files that changed)
and stops by itself once no run is pending or running, or on the Stop button. Widget updates from
the thread reach the page through the kernel's IOPub channel, so other cells run meanwhile.
"""

from __future__ import annotations

import html
import threading
import time
import warnings
from pathlib import Path

import ipywidgets as widgets
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.claims import MIN_RUNS
from analysis.errors import UserError
from analysis.plots.stability import edf_figure
from analysis.plots.style import TEMPLATE, color_map, head_stems, integer_ticks, style_maps
from analysis.rundir.reader import COLORS, COUNTED, KEEP, ORDER
from analysis.sweeps.watch import SweepWatcher
from analysis.widgets.base import FigureOutput, message_figure, sync_figure

LISTS = ("active first", "all", *COUNTED, "not_launched")  # what the runs table lists
CURVES = (("train_loss", "train loss"), ("test_top1_err", "top-1 test error (%)"))
BAR = "#1976d2"
TABLE_CSS = (
    "<style>.stemlab-runs{font-size:12px;overflow-x:auto}.stemlab-runs table{border-collapse:collapse}"
    ".stemlab-runs td,.stemlab-runs th{padding:1px 6px;white-space:nowrap;text-align:left}</style>"
)


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h {rest // 60:02d}m" if h else f"{rest // 60}m {rest % 60:02d}s"


def progress_cell(w, now: float) -> str:
    """HTML of one run's progress: a bar (epochs done, and lighter the estimated part of the running
    epoch) and "epochs · step of total" ("~" marks a step estimated from the epoch times)."""
    done, est = w.progress(now)
    text = f"{w.epoch}/{w.epochs} ep"
    spe = w.steps_per_epoch
    if spe:
        total = spe * w.epochs
        step = f"~{round(est * total)}" if est > done else str(w.last.get("step"))
        text += f" · step {step}/{total}"
    return (
        f'<div style="display:inline-block;vertical-align:middle;background:#ddd;width:90px;height:9px">'
        f'<div style="float:left;background:{BAR};width:{done * 100:.0f}%;height:9px"></div>'
        f'<div style="float:left;background:#90caf9;width:{(est - done) * 100:.0f}%;height:9px"></div></div>'
        f" <span>{html.escape(text)}</span>"
    )


def _note(w) -> str:
    if w.result and w.result.get("reason"):
        return str(w.result["reason"])
    return "" if w.state in KEEP or w.state == "not_launched" else f"job {w.job_id}: {w.state}"


def runs_table_html(
    watcher: SweepWatcher, listing: str = "active first", max_rows: int = 30, now: float | None = None
) -> str:
    """HTML table of the runs `listing` picks (see LISTS), at most `max_rows` of them: state,
    progress, latest train loss and test error, images/s, job and a note (failure reason)."""
    now = now or time.time()
    runs = list(watcher.runs.values())
    if listing == "active first":
        runs.sort(key=lambda w: ORDER.get(w.state, 1))
    elif listing != "all":
        runs = [w for w in runs if w.state == listing]
    head = "".join(f"<th>{h}</th>" for h in ("run", "state", "progress", "loss", "error %", "img/s", "job", "note"))
    body = []
    for w in runs[:max_rows]:
        last = w.last
        values = [
            html.escape(w.run),
            w.state,
            progress_cell(w, now),
            _fmt(last.get("train_loss"), ".3f"),
            _fmt(last.get("test_top1_err"), ".2f"),
            _fmt(last.get("images_per_s"), ".0f"),
            html.escape(w.job_id or ""),
            html.escape(_note(w)[:90]),
        ]
        row = "".join(f"<td>{v}</td>" for v in values)
        body.append(f'<tr style="background:{COLORS.get(w.state, "#ffffff")}">{row}</tr>')
    more = len(runs) - max_rows
    foot = f"<div>… and {more} more (pick a list above)</div>" if more > 0 else ""
    if not runs:
        foot = f"<div>no run is {html.escape(listing)}</div>"
    return (
        f'<div class="stemlab-runs">{TABLE_CSS}<table>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{foot}</div>"
    )


class SweepMonitor(widgets.VBox):
    """A live view of a sweep (ipywidgets 8 + plotly figures in FigureOutputs), refreshed in the background.

    Shows a header (runs per state, epochs done of planned, elapsed time since the first launch),
    a table of runs (state, progress, latest train loss and test error, images/s, failure reason),
    the training curves of the selected runs (the same traces gain points as metrics.jsonl grows),
    the EDF of the finished runs per model and optimizer (traces appear as groups finish) and the
    paper's claims (analysis.claims, with bootstrap intervals; `within` points for within_k) once
    every model and optimizer has `min_runs` finished runs.
    Buttons: stop/resume the refresh, show the selected runs' log tails, cancel the selected runs,
    resubmit failed ones (both through the Sweep API, after a confirmation line).

    interval: seconds between refreshes. curves: runs followed in the curves until the user
    selects runs. max_rows: rows of the runs table. resubmit_options: keyword arguments of
    `Sweep.resubmit` (e.g. cluster, parallel). start=False: no background refresh (call
    `refresh()` yourself). The monitor is itself a widget (a VBox holding `self.widget`): a cell
    displays it, and it goes into any ipywidgets layout.
    """

    _live: dict[Path, "SweepMonitor"] = {}  # the refreshing monitor of each sweep folder

    def __init__(
        self,
        sweep,
        interval: float = 5.0,
        curves: int = 4,
        max_rows: int = 30,
        min_runs: int = MIN_RUNS,
        within: float = 4.0,
        width: int = 860,
        resubmit_options: dict | None = None,
        start: bool = True,
    ) -> None:
        super().__init__()
        self.sweep, self.interval, self.max_rows, self.min_runs = sweep, interval, max_rows, min_runs
        self.within = within
        self.n_curves, self.width = curves, width
        self.resubmit_options = dict(resubmit_options or {})
        self.watcher = SweepWatcher(sweep)
        self.plan = self.watcher.plan()
        self.colors, self.dashes = style_maps(
            self.plan.groupby(["model", "optimizer"]).size().index, head_stems(self.plan, "model")
        )
        self.run_colors = color_map(sweep.run_ids, head_stems(self.plan, "run"))
        self.refreshes, self.last_error, self.ended = 0, None, None
        self._lock, self._stop = threading.RLock(), threading.Event()
        self._thread: threading.Thread | None = None
        self._follow, self._muted, self._pending = True, False, None
        self._results: dict[str, str] = {}
        self._build()
        self.refresh()
        if start and self.watcher.active():
            self.start()
        else:
            self.ended = "no run is pending or running" if start else "not started (start=False)"
            self._draw_header()

    # -- widgets ---------------------------------------------------------------------------------
    def _button(self, description: str, icon: str, action, style: str = "") -> widgets.Button:
        button = widgets.Button(
            description=description, icon=icon, button_style=style, layout=widgets.Layout(width="auto", flex="0 0 auto")
        )
        button.on_click(lambda _b: action())
        return button

    def _build(self) -> None:
        self.header = widgets.HTML(layout=widgets.Layout(flex="1 1 auto"))
        self.stop_button = self._button("stop", "stop", self._toggle)
        self.listing = widgets.Dropdown(
            options=list(LISTS), value="active first", description="list", layout=widgets.Layout(width="220px")
        )
        self.listing.observe(lambda _c: self._draw_table(), names="value")
        self.table = widgets.HTML()
        self.select = widgets.SelectMultiple(
            options=list(self.sweep.run_ids), rows=6, description="runs", layout=widgets.Layout(width="340px")
        )
        self.select.observe(self._selected, names="value")
        self.logs_button = widgets.ToggleButton(
            description="logs of selected", icon="file-text-o", layout=widgets.Layout(width="auto")
        )
        self.logs_button.observe(lambda _c: self._draw_logs(), names="value")
        self.cancel_button = self._button("cancel selected", "ban", self._ask_cancel, "warning")
        self.resubmit_button = self._button("resubmit failed", "repeat", self._ask_resubmit)
        self.confirm_button = self._button("confirm", "check", self._confirm, "danger")
        self.back_button = self._button("back", "times", self._clear_pending)
        self.confirm_box = widgets.HBox([self.confirm_button, self.back_button], layout=widgets.Layout(display="none"))
        self.message, self.logs, self.claims = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.curves_fig = self._curves_layout()
        self.edf_fig = message_figure("no finished runs yet: the EDF fills in as runs end", width=self.width)
        self.curves_view, self.edf_view = FigureOutput(self.curves_fig), FigureOutput(self.edf_fig)
        actions = widgets.VBox(
            [
                widgets.HBox([self.logs_button, self.cancel_button, self.resubmit_button]),
                widgets.HBox([self.message, self.confirm_box]),
                self.logs,
            ]
        )
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.header, self.stop_button], layout=widgets.Layout(justify_content="space-between")),
                self.listing,
                self.table,
                widgets.HBox([self.select, actions]),
                self.curves_view,
                self.edf_view,
                self.claims,
            ],
            layout=widgets.Layout(width=f"{self.width + 20}px"),
        )
        self.children = (self.widget,)

    def _curves_layout(self) -> go.Figure:
        fig = make_subplots(rows=1, cols=2, subplot_titles=[title for _, title in CURVES], horizontal_spacing=0.1)
        longest = max(self.plan["epochs"].max(), 1) if len(self.plan) else 1
        fig.update_xaxes(title="epoch", rangemode="tozero", **integer_ticks(longest))
        fig.update_layout(
            template=TEMPLATE,
            width=self.width,
            height=340,
            margin=dict(t=40, b=40),
            title=None,
            legend=dict(orientation="h", x=0, y=-0.25, yanchor="top"),
        )
        return self._curves_message(fig, True)

    @staticmethod
    def _curves_message(fig, empty: bool):
        """Show a line in place of the curves' axes while no selected run has an epoch (same traces)."""
        text = "the curves of the selected runs appear here after their first epoch"
        fig.update_xaxes(visible=not empty)
        fig.update_yaxes(visible=not empty)
        fig.update_layout(
            annotations=[a for a in fig.layout.annotations if a.text != text]
            + (
                [
                    dict(
                        text=text,
                        x=0.5,
                        y=0.5,
                        xref="paper",
                        yref="paper",
                        showarrow=False,
                        font=dict(size=15, color="#666"),
                    )
                ]
                if empty
                else []
            )
        )
        for a in fig.layout.annotations:  # the panel titles
            if a.text != text:
                a.visible = not empty
        return fig

    # -- the background refresh ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the background refresh runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start (or resume) the background refresh; another monitor of this sweep is stopped."""
        with self._lock:
            if self.running:
                return
            other = SweepMonitor._live.get(self.sweep.dir)
            if other is not None and other is not self:
                other.stop(wait=False)
            SweepMonitor._live[self.sweep.dir] = self
            self._stop.clear()
            self.ended = None
            self._thread = threading.Thread(target=self._loop, name=f"monitor {self.sweep.name}", daemon=True)
            self._thread.start()
            self._draw_header()

    def stop(self, wait: bool = True) -> None:
        """Stop the background refresh (wait: until its current refresh has finished)."""
        self._stop.set()
        thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()
        if not self.running:
            self._draw_header()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the background refresh has ended (the sweep ended, or stop()); True if it has."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001 - shown in the widget; the next refresh tries again
                self.last_error = f"{type(e).__name__}: {e}"
                self._say(f"refresh failed: {self.last_error}")
            if not self.watcher.active():
                self.ended = "the sweep has ended: no run is pending or running"
                break
        else:
            self.ended = "stopped"
        with self._lock:
            self._thread = None if self._thread is threading.current_thread() else self._thread
            self._draw_header()

    def _toggle(self) -> None:
        if self.running:
            self.stop(wait=False)
        else:
            self.start()

    # -- refreshing --------------------------------------------------------------------------------
    def refresh(self) -> set[str]:
        """Read what changed and update every part of the view; return the runs that changed."""
        with self._lock:
            changed = self.watcher.refresh()
            self.refreshes += 1
            self._follow_running()
            self._draw_header()
            self._draw_table()
            self._draw_curves(changed)
            self._draw_results()
            if self.logs_button.value and changed & set(self.select.value):
                self._draw_logs()
        return changed

    def _draw_header(self) -> None:
        w = self.watcher
        chips = " ".join(
            f'<span style="background:{COLORS.get(s, "#fff")};padding:1px 5px;border-radius:3px">{s} {n}</span>'
            for s, n in w.counts().items()
        )
        done, planned = w.epochs_done()
        first, latest = w.launched(first=True), w.launched()
        if first is None:
            timing = "not launched"
        else:  # the sweep's whole time: from its first launch, resubmissions included
            end = time.time() if w.active() else (w.last_result_time() or time.time())
            timing = f"elapsed {_duration(end - first.timestamp())} since {first:%H:%M:%S}"
            if latest != first:
                timing += f" (resubmitted {latest:%H:%M:%S})"
        if self.running and not self._stop.is_set():
            live = f"refreshing every {self.interval:g} s (last {time.strftime('%H:%M:%S')})"
        else:
            live = f"not refreshing: {self.ended or 'stopped'}"
        live_now = self.running and not self._stop.is_set()
        self.stop_button.description = "stop" if live_now else "resume" if w.active() else "refresh"
        self.stop_button.icon = {"stop": "stop", "resume": "play", "refresh": "refresh"}[self.stop_button.description]
        self.header.value = (
            f'<div style="line-height:1.7"><b>{html.escape(self.sweep.name)}</b>: {len(w.runs)} runs {chips}<br>'
            f'<span class="monitor-progress">epochs {done}/{planned}</span> · {timing} · {html.escape(live)}</div>'
        )

    def _draw_table(self) -> None:
        text = runs_table_html(self.watcher, self.listing.value, self.max_rows)
        if text != self.table.value:
            self.table.value = text

    def _say(self, text: str, pending: bool = False) -> None:
        self.message.value = f"<span style='font-family:monospace'>{html.escape(text)}</span>"
        self.confirm_box.layout.display = None if pending else "none"

    # -- curves of the selected runs -------------------------------------------------------------------
    def _follow_running(self) -> None:
        """Until the user picks runs, add runs that start training to the selection (up to `curves`)."""
        if not self._follow or len(self.select.value) >= self.n_curves:
            return
        started = [r for r, w in self.watcher.runs.items() if w.state == "running" or w.rows]
        picked = list(self.select.value) + [r for r in started if r not in self.select.value]
        if picked != list(self.select.value):
            self._muted = True
            try:
                self.select.value = tuple(picked[: self.n_curves])
            finally:
                self._muted = False

    def _selected(self, _change) -> None:
        with self._lock:
            if not self._muted:
                self._follow = False
            self._draw_curves(set())
            if self.logs_button.value:
                self._draw_logs()

    def _curve_traces(self, run: str) -> list[go.Scatter]:
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

    def _draw_curves(self, changed: set[str]) -> None:
        """Keep one pair of traces per selected run; give a run's traces its new epochs in place."""
        fig, wanted = self.curves_fig, list(self.select.value)
        have = [t.meta["group"] for t in fig.data[::2]]
        with fig.batch_update():
            if have != wanted:
                keep = [t for t in fig.data if t.meta["group"] in wanted]
                fig.data = keep
                for run in wanted:
                    if run not in have:
                        fig.add_traces(self._curve_traces(run), rows=[1, 1], cols=[1, 2])
                order = {run: i for i, run in enumerate(wanted)}
                fig.data = sorted(fig.data, key=lambda t: (order[t.meta["group"]], t.meta["kind"] != CURVES[0][0]))
            for trace in fig.data:
                rows = self.watcher.runs[trace.meta["group"]].rows
                if len(trace.x) != len(rows) or trace.meta["group"] in changed:
                    trace.x = [r["epoch"] for r in rows]
                    trace.y = [r.get(trace.meta["kind"]) for r in rows]
            empty = not any(len(t.x) for t in fig.data)
            if empty != (fig.layout.xaxis.visible is False):
                self._curves_message(fig, empty)
        self.curves_view.show(fig)

    # -- finished runs: EDF and claims -------------------------------------------------------------
    def _draw_results(self) -> None:
        results = {r: w.result.get("status") for r, w in self.watcher.runs.items() if w.result}
        if results == self._results:
            return
        self._results = results
        frame = self.watcher.frame()
        counted = frame[frame["error"].notna()] if len(frame) else frame
        if counted.empty:
            sync_figure(
                self.edf_fig, message_figure("no finished runs yet: the EDF fills in as runs end", width=self.width)
            )
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

    # -- logs, cancel, resubmit ------------------------------------------------------------------------
    def _draw_logs(self) -> None:
        if not self.logs_button.value:
            self.logs.value = ""
            return
        parts = []
        for run in list(self.select.value)[:6]:
            text = self.watcher.log_tail(run) or "(no log yet)"
            parts.append(
                f"<b>{html.escape(run)}</b> ({self.watcher.runs[run].state})"
                f"<pre style='margin:0 0 6px 0;font-size:11px;white-space:pre-wrap'>{html.escape(text)}</pre>"
            )
        self.logs.value = "".join(parts) or "select runs to see their logs"

    def _clear_pending(self) -> None:
        self._pending = None
        self._say("")

    def _ask_cancel(self) -> None:
        with self._lock:
            runs = [r for r in self.select.value if self.watcher.runs[r].state in ("pending", "running")]
            if not runs:
                return self._say("none of the selected runs is pending or running")
            jobs = sorted({self.watcher.runs[r].job_id for r in runs})
            also = [
                r
                for r, w in self.watcher.runs.items()
                if w.job_id in jobs and r not in runs and w.state in ("pending", "running")
            ]
            text = f"cancel {len(runs)} run(s), job(s) {', '.join(jobs)}"
            if also:
                text += f"; the same job(s) also train {', '.join(also[:5])}{' ...' if len(also) > 5 else ''}"
            self._pending = ("cancel", runs)
            self._say(text + "?", pending=True)

    def _ask_resubmit(self) -> None:
        with self._lock:
            retry = {}
            for w in self.watcher.runs.values():
                if w.state not in KEEP:
                    retry[w.state] = retry.get(w.state, 0) + 1
            if not retry:
                return self._say("nothing to resubmit: no run failed, was cancelled or is unlaunched")
            counts = ", ".join(f"{n} {s}" for s, n in sorted(retry.items()))
            self._pending = ("resubmit", None)
            self._say(f"resubmit {sum(retry.values())} run(s) ({counts})?", pending=True)

    def _confirm(self) -> None:
        action, runs = self._pending or (None, None)
        self._pending = None
        if action == "cancel":
            with self._lock:
                ids = self.sweep.cancel(runs)
            self._say(
                f"cancelled job(s) {', '.join(ids)} ({len(runs)} selected run(s))"
                if ids
                else "nothing cancelled: the selected runs had ended"
            )
        elif action == "resubmit":
            try:
                with self._lock, warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    ids = self.sweep.resubmit(**self.resubmit_options)
            except UserError as e:  # e.g. a stem the sweep names, refused without trust_code: said here
                self._say(f"not resubmitted: {e}")
                return
            note = "; ".join(str(c.message) for c in caught)
            done = f"resubmitted as job(s) {', '.join(ids)}" if ids else "nothing resubmitted"
            self._say(done + (f" ({note})" if note else ""))
        self.refresh()
        if self.watcher.active():
            self.start()

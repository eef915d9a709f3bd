"""SweepMonitor: a running sweep, live in JupyterLab, while the kernel stays free.

    monitor = sweep.monitor()        # or SweepMonitor(sweep, interval=5)
    monitor                          # displays it; it refreshes itself from a background thread

The monitor lays out its panels and wires them to a `Refresher` (refresher.py), whose background
thread refreshes the view every `interval` seconds through `analysis.sweeps.watch.SweepWatcher`
(one scheduler query, then only the run files that changed) and stops by itself once no run is
pending or running, or on the Stop button. Widget updates from the thread reach the page through
the kernel's IOPub channel, so other cells run meanwhile. Panels: the counts header and the runs
table (here), the curves and the finished runs' EDF and claims (figures.py), the buttons (actions.py).
"""

from __future__ import annotations

import html
import time

import ipywidgets as widgets
import pandas as pd

from analysis.claims import MIN_RUNS
from analysis.html import html_table
from analysis.rundir.reader import COLORS, COUNTED, KEEP, ORDER
from analysis.sweeps.watch import SweepWatcher
from analysis.widgets.actions import Actions
from analysis.widgets.base import button
from analysis.widgets.figures import Curves, Results
from analysis.widgets.refresher import Changes, Refresher

LISTS = ("active first", "all", *COUNTED, "not_launched")  # what the runs table lists
RUN_COLUMNS = ("run", "state", "progress", "loss", "error %", "img/s", "job", "note")
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


def _run_row(w, now: float) -> list[str]:
    """One row of the runs table; every cell but the progress bar is plain text."""
    last = w.last
    return [
        w.run,
        w.state,
        progress_cell(w, now),
        _fmt(last.get("train_loss"), ".3f"),
        _fmt(last.get("test_top1_err"), ".2f"),
        _fmt(last.get("images_per_s"), ".0f"),
        w.job_id or "",
        _note(w)[:90],
    ]


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
    shown = runs[:max_rows]
    frame = pd.DataFrame([_run_row(w, now) for w in shown], columns=list(RUN_COLUMNS))
    table = html_table(frame, [COLORS.get(w.state, "#ffffff") for w in shown], markup={"progress"})
    more = len(runs) - max_rows
    foot = f"<div>… and {more} more (pick a list above)</div>" if more > 0 else ""
    if not runs:
        foot = f"<div>no run is {html.escape(listing)}</div>"
    return f'<div class="stemlab-runs">{TABLE_CSS}{table}{foot}</div>'


class RunsTable:
    """The runs table (`.table`) and the dropdown picking which runs it lists (`.listing`)."""

    def __init__(self, watcher: SweepWatcher, max_rows: int) -> None:
        self.watcher, self.max_rows = watcher, max_rows
        self.listing = widgets.Dropdown(
            options=list(LISTS), value="active first", description="list", layout=widgets.Layout(width="220px")
        )
        self.listing.observe(lambda _c: self.draw(), names="value")
        self.table = widgets.HTML()

    def draw(self) -> None:
        text = runs_table_html(self.watcher, self.listing.value, self.max_rows)
        if text != self.table.value:
            self.table.value = text


class Counts:
    """The header (`.header`): runs per state, epochs done of planned, the sweep's elapsed time and
    whether the refresh runs, beside the button that stops, resumes or refreshes (`.stop_button`)."""

    def __init__(self, name: str, watcher: SweepWatcher, refresher: Refresher) -> None:
        self.name, self.watcher, self.refresher = name, watcher, refresher
        self.header = widgets.HTML(layout=widgets.Layout(flex="1 1 auto"))
        self.stop_button = button("stop", "stop", self._toggle)

    def _toggle(self) -> None:
        if self.refresher.running:
            self.refresher.stop(wait=False)
        else:
            self.refresher.start()

    def _timing(self) -> str:
        w = self.watcher
        first, latest = w.launched(first=True), w.launched()
        if first is None:
            return "not launched"
        # the sweep's whole time: from its first launch, resubmissions included
        end = time.time() if w.active() else (w.last_result_time() or time.time())
        timing = f"elapsed {_duration(end - first.timestamp())} since {first:%H:%M:%S}"
        return timing + (f" (resubmitted {latest:%H:%M:%S})" if latest != first else "")

    def draw(self) -> None:
        w, r = self.watcher, self.refresher
        chips = " ".join(
            f'<span style="background:{COLORS.get(s, "#fff")};padding:1px 5px;border-radius:3px">{s} {n}</span>'
            for s, n in w.counts().items()
        )
        done, planned = w.epochs_done()
        if r.live:
            live = f"refreshing every {r.interval:g} s (last {time.strftime('%H:%M:%S')})"
        else:
            live = f"not refreshing: {r.ended or 'stopped'}"
        self.stop_button.description = "stop" if r.live else "resume" if w.active() else "refresh"
        self.stop_button.icon = {"stop": "stop", "resume": "play", "refresh": "refresh"}[self.stop_button.description]
        self.header.value = (
            f'<div style="line-height:1.7"><b>{html.escape(self.name)}</b>: {len(w.runs)} runs {chips}<br>'
            f'<span class="monitor-progress">epochs {done}/{planned}</span> · {self._timing()} · '
            f"{html.escape(live)}</div>"
        )


class SweepMonitor(widgets.VBox):
    """A live view of a sweep (ipywidgets 8 + plotly figures in FigureOutputs), refreshed in the background.

    Panels: `.counts` (runs per state, epochs done of planned, elapsed time since the first launch),
    `.runs_table` (state, progress, latest train loss and test error, images/s, failure reason),
    `.curves` (the training curves of the selected runs: the same traces gain points as
    metrics.jsonl grows), `.results` (the EDF of the finished runs per model and optimizer, traces
    appearing as groups finish, and the paper's claims, analysis.claims, with bootstrap intervals and
    `within` points for within_k, once every model and optimizer has `min_runs` finished runs) and
    `.actions` (show the selected runs' log tails, cancel the selected runs, resubmit failed ones,
    both through the Sweep API after a confirmation line). `.refresher` runs the background refresh.

    interval: seconds between refreshes. curves: runs followed in the curves until the user
    selects runs. max_rows: rows of the runs table. resubmit_options: keyword arguments of
    `Sweep.resubmit` (e.g. cluster, parallel). start=False: no background refresh (call
    `refresh()` yourself). The monitor is itself a widget (a VBox holding `self.widget`): a cell
    displays it, and it goes into any ipywidgets layout.
    """

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
        self.sweep = sweep
        self.watcher = SweepWatcher(sweep)
        plan = self.watcher.plan()
        self.refresher = Refresher(
            self.watcher, sweep.dir, interval, self._draw, lambda: self.counts.draw(), lambda t: self.actions.say(t)
        )
        self.counts = Counts(sweep.name, self.watcher, self.refresher)
        self.runs_table = RunsTable(self.watcher, max_rows)
        self.curves = Curves(self.watcher, sweep.run_ids, plan, curves, width)
        self.curves.select.observe(self._selected, names="value")
        self.results = Results(self.watcher, plan, min_runs, within, width)
        self.actions = Actions(
            sweep, self.watcher, self.curves.select, self.refresher.lock, resubmit_options, self._resume
        )
        self.widget = self._layout(width)
        self.children = (self.widget,)
        self.refresh()
        if start and self.watcher.active():
            self.start()
        else:
            self.refresher.ended = "no run is pending or running" if start else "not started (start=False)"
            self.counts.draw()

    def _layout(self, width: int) -> widgets.VBox:
        return widgets.VBox(
            [
                widgets.HBox(
                    [self.counts.header, self.counts.stop_button],
                    layout=widgets.Layout(justify_content="space-between"),
                ),
                self.runs_table.listing,
                self.runs_table.table,
                widgets.HBox([self.curves.select, self.actions.box]),
                self.curves.view,
                self.results.edf_view,
                self.results.claims,
            ],
            layout=widgets.Layout(width=f"{width + 20}px"),
        )

    @property
    def running(self) -> bool:
        """True while the background refresh runs."""
        return self.refresher.running

    def start(self) -> None:
        """Start (or resume) the background refresh; another monitor of this sweep is stopped."""
        self.refresher.start()

    def stop(self, wait: bool = True) -> None:
        """Stop the background refresh (wait: until its current refresh has finished)."""
        self.refresher.stop(wait)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the background refresh has ended (the sweep ended, or stop()); True if it has."""
        return self.refresher.join(timeout)

    def refresh(self) -> set[str]:
        """Read what changed and update the view; return the runs that changed."""
        return self.refresher.refresh()

    def _draw(self, changes: Changes) -> None:
        """Redraw what a refresh changed (called by the refresher, under its lock)."""
        self.curves.follow_running()
        self.counts.draw()
        self.runs_table.draw()
        self.curves.draw(changes.runs)
        if changes.results:
            self.results.draw()
        self.actions.runs_changed(changes.runs)

    def _selected(self, _change) -> None:
        with self.refresher.lock:
            self.curves.picked()
            self.curves.draw(set())
            self.actions.redraw_logs()

    def _resume(self) -> None:
        """After a cancel or a resubmission: refresh now, and in the background while runs are active."""
        self.refresh()
        if self.watcher.active():
            self.start()

"""The sweep monitor's buttons: the selected runs' log tails, cancelling the selected runs and
resubmitting failed ones (both through the Sweep API, after a confirmation line)."""

from __future__ import annotations

import html
import warnings
from collections.abc import Callable

import ipywidgets as widgets

from analysis.errors import UserError
from analysis.rundir.reader import KEEP
from analysis.sweeps.watch import SweepWatcher
from analysis.widgets.base import button

ACTIVE = ("pending", "running")


class Actions:
    """Buttons acting on the runs selected in `select` (`.box` lays them out): "logs of selected"
    (`.logs_button`, the tails in `.logs`), "cancel selected" and "resubmit failed", which ask
    first in `.message` and act on "confirm" (`.confirm_box` holds confirm and back; `.pending` is
    the action waiting for it).

    lock: held while reading the watcher and calling the sweep (the monitor's refresh lock).
    resubmit_options: keyword arguments of `Sweep.resubmit`. after(): called after each confirmed action
    (not after a refused resubmission).
    """

    def __init__(
        self,
        sweep,
        watcher: SweepWatcher,
        select: widgets.SelectMultiple,
        lock,
        resubmit_options: dict | None,
        after: Callable[[], None],
    ) -> None:
        self.sweep, self.watcher, self.select, self.lock, self.after = sweep, watcher, select, lock, after
        self.resubmit_options = dict(resubmit_options or {})
        self.pending: tuple | None = None
        self.logs_button = widgets.ToggleButton(
            description="logs of selected", icon="file-text-o", layout=widgets.Layout(width="auto")
        )
        self.logs_button.observe(lambda _c: self.draw_logs(), names="value")
        self.cancel_button = button("cancel selected", "ban", self._ask_cancel, "warning")
        self.resubmit_button = button("resubmit failed", "repeat", self._ask_resubmit)
        self.confirm_button = button("confirm", "check", self._confirm, "danger")
        self.back_button = button("back", "times", self._clear_pending)
        self.confirm_box = widgets.HBox([self.confirm_button, self.back_button], layout=widgets.Layout(display="none"))
        self.message, self.logs = widgets.HTML(), widgets.HTML()
        self.box = widgets.VBox(
            [
                widgets.HBox([self.logs_button, self.cancel_button, self.resubmit_button]),
                widgets.HBox([self.message, self.confirm_box]),
                self.logs,
            ]
        )

    def say(self, text: str, pending: bool = False) -> None:
        """Show one line; pending: with the confirm and back buttons beside it."""
        self.message.value = f"<span style='font-family:monospace'>{html.escape(text)}</span>"
        self.confirm_box.layout.display = None if pending else "none"

    def draw_logs(self) -> None:
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

    def redraw_logs(self) -> None:
        """Redraw the logs when they are shown (the selection changed)."""
        if self.logs_button.value:
            self.draw_logs()

    def runs_changed(self, runs: set[str]) -> None:
        """Redraw the logs when they are shown and one of `runs` is selected."""
        if self.logs_button.value and runs & set(self.select.value):
            self.draw_logs()

    def _clear_pending(self) -> None:
        self.pending = None
        self.say("")

    def _ask_cancel(self) -> None:
        with self.lock:
            runs = [r for r in self.select.value if self.watcher.runs[r].state in ACTIVE]
            if not runs:
                return self.say("none of the selected runs is pending or running")
            jobs = sorted({self.watcher.runs[r].job_id for r in runs})
            also = [r for r, w in self.watcher.runs.items() if w.job_id in jobs and r not in runs and w.state in ACTIVE]
            text = f"cancel {len(runs)} run(s), job(s) {', '.join(jobs)}"
            if also:
                text += f"; the same job(s) also train {', '.join(also[:5])}{' ...' if len(also) > 5 else ''}"
            self.pending = ("cancel", runs)
            self.say(text + "?", pending=True)

    def _ask_resubmit(self) -> None:
        with self.lock:
            retry = {}
            for w in self.watcher.runs.values():
                if w.state not in KEEP:
                    retry[w.state] = retry.get(w.state, 0) + 1
            if not retry:
                return self.say("nothing to resubmit: no run failed, was cancelled or is unlaunched")
            counts = ", ".join(f"{n} {s}" for s, n in sorted(retry.items()))
            self.pending = ("resubmit", None)
            self.say(f"resubmit {sum(retry.values())} run(s) ({counts})?", pending=True)

    def _cancel(self, runs: list[str]) -> None:
        with self.lock:
            ids = self.sweep.cancel(runs)
        self.say(
            f"cancelled job(s) {', '.join(ids)} ({len(runs)} selected run(s))"
            if ids
            else "nothing cancelled: the selected runs had ended"
        )

    def _resubmit(self) -> bool:
        """Resubmit the sweep's failed, cancelled and unlaunched runs; False when it refused to."""
        try:
            with self.lock, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ids = self.sweep.resubmit(**self.resubmit_options)
        except UserError as e:  # e.g. a stem the sweep names, refused without trust_code: said here
            self.say(f"not resubmitted: {e}")
            return False
        note = "; ".join(str(c.message) for c in caught)
        done = f"resubmitted as job(s) {', '.join(ids)}" if ids else "nothing resubmitted"
        self.say(done + (f" ({note})" if note else ""))
        return True

    def _confirm(self) -> None:
        action, runs = self.pending or (None, None)
        self.pending = None
        if action == "cancel":
            self._cancel(runs)
        elif action == "resubmit" and not self._resubmit():
            return
        self.after()

"""The background refresh behind SweepMonitor: a thread, its lock and change detection.

Every `interval` seconds the thread asks `analysis.sweeps.watch.SweepWatcher` to refresh (one
scheduler query, then only the run files that changed) and hands what changed to the view, which
redraws only the panels it concerns. The thread stops by itself once no run is pending or running,
or on `stop()`. One lock serialises refreshes, redraws and the view's actions on the sweep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from analysis.sweeps.watch import SweepWatcher


@dataclass(frozen=True)
class Changes:
    """What one refresh found: the runs whose files changed, and whether any run's result did."""

    runs: set[str]
    results: bool


class Refresher:
    """Refreshes a SweepWatcher, now (`refresh()`) or every `interval` seconds in a daemon thread.

    draw(changes): redraws the view from the watcher; called under `lock` after every refresh.
    on_state(): called when the background refresh starts or ends (the view says whether it runs).
    on_error(text): shows a refresh that failed (the thread goes on and tries again).
    Only one refresher of a sweep folder runs at a time: starting one stops the other.
    """

    _live: dict[Path, Refresher] = {}  # the running refresher of each sweep folder

    def __init__(
        self,
        watcher: SweepWatcher,
        folder: Path,
        interval: float,
        draw: Callable[[Changes], None],
        on_state: Callable[[], None],
        on_error: Callable[[str], None],
    ) -> None:
        self.watcher, self.folder, self.interval = watcher, folder, interval
        self.draw, self.on_state, self.on_error = draw, on_state, on_error
        self.lock, self._stop = threading.RLock(), threading.Event()
        self._thread: threading.Thread | None = None
        self._results: dict[str, str] = {}
        self.refreshes, self.last_error, self.ended = 0, None, None

    @property
    def running(self) -> bool:
        """True while the background refresh runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def live(self) -> bool:
        """True while the background refresh runs and has not been asked to stop."""
        return self.running and not self._stop.is_set()

    def refresh(self) -> set[str]:
        """Read what changed, redraw the view; return the runs whose files changed."""
        with self.lock:
            runs = self.watcher.refresh()
            self.refreshes += 1
            results = {r: w.result.get("status") for r, w in self.watcher.runs.items() if w.result}
            changed = results != self._results
            self._results = results
            self.draw(Changes(runs, changed))
        return runs

    def start(self) -> None:
        """Start (or resume) the background refresh; another refresher of this sweep folder is stopped."""
        with self.lock:
            if self.running:
                return
            other = Refresher._live.get(self.folder)
            if other is not None and other is not self:
                other.stop(wait=False)
            Refresher._live[self.folder] = self
            self._stop.clear()
            self.ended = None
            self._thread = threading.Thread(target=self._loop, name=f"monitor {self.folder.name}", daemon=True)
            self._thread.start()
            self.on_state()

    def stop(self, wait: bool = True) -> None:
        """Stop the background refresh (wait: until its current refresh has finished)."""
        self._stop.set()
        thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()
        if not self.running:
            self.on_state()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the background refresh has ended; True if it has."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001 - shown in the view; the next refresh tries again
                self.last_error = f"{type(e).__name__}: {e}"
                self.on_error(f"refresh failed: {self.last_error}")
            if not self.watcher.active():
                self.ended = "the sweep has ended: no run is pending or running"
                break
        else:
            self.ended = "stopped"
        with self.lock:
            self._thread = None if self._thread is threading.current_thread() else self._thread
            self.on_state()

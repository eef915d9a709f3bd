"""Cheap, incremental reading of a sweep's run folders, for views that refresh every few seconds.

    watcher = SweepWatcher(sweep)
    changed = watcher.refresh()     # run ids whose state, metrics or result changed
    watcher.runs["0003-vit_p_fmnist_tiny-sgd"].epoch, watcher.counts()

A refresh asks the scheduler once for every job's state (`status.settle`: one sacct call on SLURM)
and has each unfinished run's RunRecord (analysis.rundir.reader) read what changed in its folder:
a file only when its size or mtime moved, metrics.jsonl from where the last read stopped. A run
with a final result (completed or diverged) is not looked at again. `RunRecord.progress()` gives
the epochs done and an estimate inside the running epoch.
"""

from __future__ import annotations

import time
from datetime import datetime

import pandas as pd

from analysis import rundir
from analysis.rundir.reader import ACTIVE, COUNTED, KEEP, RunRecord
from analysis.sweeps.status import SUBMITIT, job_folders, job_log_tail, settle, tail


class SweepWatcher:
    """Incremental view of a sweep's runs (see the module docstring). `runs` maps run id to
    its RunRecord (analysis.rundir.reader) in the sweep's run order."""

    def __init__(self, sweep) -> None:
        self.sweep = sweep
        self.runs: dict[str, RunRecord] = {
            run: RunRecord(run, sweep.run_dir(run), sweep.configs[run].train.epochs) for run in sweep.run_ids
        }
        self.refreshed: float | None = None  # time.time() of the last refresh
        self._launches: list[dict] = []  # launches.json as of the last refresh
        self._rows: dict[str, dict] = {}  # run id -> collect() row of a run with a result

    def refresh(self) -> set[str]:
        """Read the scheduler and what changed in the run folders; return the runs that changed."""
        before = {run: (r.state, r.job_id) for run, r in self.runs.items()}
        moved = {run for run, r in self.runs.items() if not r.final and r.read()}
        self._launches = settle(self.sweep.dir, self.runs, self.sweep.local_processes())
        changed = moved | {run for run, r in self.runs.items() if (r.state, r.job_id) != before[run]}
        for run in changed:
            if self.runs[run].result is not None:
                self._rows.pop(run, None)
        self.refreshed = time.time()
        return changed

    # -- summaries -------------------------------------------------------------------------------
    def plan(self) -> pd.DataFrame:
        """One row per run from its config alone: run, model (display name), preset, stem, optimizer, epochs."""
        from analysis.names import model_name, stem_of_config

        rows = []
        for run in self.runs:
            cfg = self.sweep.configs[run]
            stem = stem_of_config(cfg)
            rows.append(
                {
                    "run": run,
                    "model": model_name(cfg.model.preset, stem),
                    "preset": cfg.model.preset,
                    "stem": stem,
                    "optimizer": cfg.optim.name,
                    "epochs": cfg.train.epochs,
                }
            )
        return pd.DataFrame(rows, columns=["run", "model", "preset", "stem", "optimizer", "epochs"])

    def counts(self) -> dict[str, int]:
        """{state: runs}, the six main states always present, others when they occur."""
        out = dict.fromkeys(COUNTED, 0)
        for w in self.runs.values():
            out[w.state] = out.get(w.state, 0) + 1
        return out

    def active(self) -> bool:
        """True while a run is pending or running (or its job's state is unknown)."""
        return any(w.state in ACTIVE for w in self.runs.values())

    def epochs_done(self) -> tuple[int, int]:
        """(epochs written by every run, epochs planned in all); a finished run counts in full."""
        done = sum(w.epochs if w.final else min(w.epoch, w.epochs) for w in self.runs.values())
        return done, sum(w.epochs for w in self.runs.values())

    def launched(self, first: bool = False) -> datetime | None:
        """When the latest (`first`: the first) launch was submitted (None before the first), as of
        the last refresh."""
        launches = self._launches
        return datetime.fromisoformat(launches[0 if first else -1]["time"]) if launches else None

    def last_result_time(self) -> float | None:
        """mtime of the newest result.json (when the last run ended), None without any."""
        times = [w._stats[rundir.RESULT][2] / 1e9 for w in self.runs.values() if w._stats.get(rundir.RESULT)]
        return max(times) if times else None

    def frame(self) -> pd.DataFrame:
        """The collect() rows (analysis.sweeps.results contract) of the runs with a result, read
        once per result: the input of the EDF and the claims table."""
        from analysis.sweeps.results import COLUMNS, run_row

        for run, w in self.runs.items():
            if w.result is not None and run not in self._rows:
                row = run_row(run, w.dir, self.sweep.configs[run])
                row.pop("_started", None)
                if row["status"] is None:
                    row["status"] = "failed"
                self._rows[run] = row
            if run in self._rows:
                self._rows[run]["state"] = w.state
        rows = [self._rows[r] for r in self.runs if r in self._rows and self.runs[r].result is not None]
        frame = pd.DataFrame(rows, columns=None if rows else COLUMNS)
        if "diverged" in frame:
            frame["diverged"] = frame["diverged"].astype(bool)
        return frame

    def log_tail(self, run: str, lines: int = 12) -> str:
        """The last lines of a run's log.txt, and of its job's log when the run did not finish."""
        w = self.runs[run]
        text = tail(w.dir / rundir.LOG, lines)
        if w.state not in KEEP and w.job_id:
            where = job_folders(self.sweep.dir, self._launches).get(w.job_id, self.sweep.dir / SUBMITIT)
            job_text = job_log_tail(where, w.job_id, lines)
            text = "\n".join(t for t in (text, job_text and f"-- job {w.job_id} log --\n{job_text}") if t)
        return text

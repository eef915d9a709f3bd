"""Cheap, incremental reading of a sweep's run folders, for views that refresh every few seconds.

    watcher = SweepWatcher(sweep)
    changed = watcher.refresh()     # run ids whose state, metrics or result changed
    watcher.runs["0003-vit_p_fmnist_tiny-sgd"].epoch, watcher.counts()

A refresh asks the scheduler once for every job's state (`status.scheduler_states`: one sacct call
on SLURM) and stats each unfinished run's metrics.jsonl, result.json and job.json. A file is read
only when its size or mtime changed since the last refresh, and metrics.jsonl only from the byte
where the last read stopped (a torn last line is read again next time; a file replaced by a
shorter one, as when a run resumes from an older checkpoint, is read from the start). A run with a
final result (completed or diverged) is not looked at again.

Progress: metrics.jsonl gives whole epochs and the step count at each epoch's end, so a run's
steps per epoch are known after its first epoch. The step inside the running epoch is not written
anywhere cheap (only the checkpoint has it), so `RunWatch.progress()` estimates it from the time
since the last epoch ended and the last epoch's duration; views mark it as an estimate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from analysis import rundir
from analysis.sweeps.status import (
    ACTIVE,
    KEEP,
    SUBMITIT,
    job_folders,
    job_log_tail,
    latest_jobs,
    read_launches,
    run_state,
    scheduler_states,
    tail,
)

STATES = ("pending", "running", "completed", "diverged", "failed", "cancelled")  # always counted


@dataclass
class RunWatch:
    """What is known of one run: its metrics rows so far, result, job marker and state."""

    run: str
    dir: Path
    epochs: int  # planned
    rows: list[dict] = field(default_factory=list)  # metrics.jsonl, one row per epoch
    result: dict | None = None
    job: dict = field(default_factory=dict)  # job.json: which job trains (or trained) the run
    state: str = "not_launched"
    job_id: str | None = None
    attempts: int = 0
    metrics_mtime: float | None = None  # seconds since the epoch; when the last epoch was written
    _offset: int = 0  # bytes of metrics.jsonl parsed so far
    _stats: dict = field(default_factory=dict)  # file name -> last rundir.file_key()

    @property
    def final(self) -> bool:
        """True once the run has a completed or diverged result: it will not change again."""
        return rundir.is_final(self.result)

    @property
    def epoch(self) -> int:
        return len(self.rows)

    @property
    def last(self) -> dict:
        return self.rows[-1] if self.rows else {}

    @property
    def steps_per_epoch(self) -> int | None:
        step, epoch = self.last.get("step"), self.last.get("epoch")
        return int(step) // int(epoch) if step and epoch else None

    def progress(self, now: float | None = None) -> tuple[float, float]:
        """(fraction of the planned epochs done, estimated fraction including the running epoch).

        The estimate adds the time since the last epoch was written over that epoch's duration
        (at most 0.99 of an epoch) while the run is running; it equals the first value otherwise.
        """
        done = min(1.0, self.epoch / self.epochs) if self.epochs else 0.0
        if self.final or self.state != "running" or len(self.rows) < 1 or self.metrics_mtime is None:
            return (1.0 if self.final else done), (1.0 if self.final else done)
        elapsed = [r.get("elapsed") for r in self.rows[-2:]]
        if None in elapsed:
            return done, done
        duration = elapsed[-1] - elapsed[0] if len(elapsed) == 2 else elapsed[-1]
        since = (now or time.time()) - self.metrics_mtime
        part = min(0.99, max(0.0, since / duration)) if duration > 0 else 0.0
        return done, min(1.0, (self.epoch + part) / self.epochs)

    # -- reading ---------------------------------------------------------------------------------
    def _changed(self, name: str) -> tuple[bool, tuple | None]:
        st = rundir.file_key(self.dir / name)
        return st != self._stats.get(name), st

    def read(self) -> bool:
        """Read what changed in the run folder since the last call; True when anything did."""
        changed = False
        for name, reader in (
            (rundir.METRICS, self._read_metrics),
            (rundir.RESULT, self._read_result),
            (rundir.JOB, self._read_job),
        ):
            moved, st = self._changed(name)
            if moved:
                changed |= reader(st, self._stats.get(name))
                self._stats[name] = st
        return changed

    def _read_metrics(self, st, old) -> bool:
        if st is None:
            had = bool(self.rows)
            self.rows, self._offset, self.metrics_mtime = [], 0, None
            return had
        self.metrics_mtime = st[2] / 1e9
        if old is None or st[0] != old[0] or st[1] < self._offset:  # new or replaced file: from the start
            self.rows, self._offset = [], 0
            changed = True
        else:
            changed = False
        try:
            with rundir.open_regular(self.dir / rundir.METRICS) as f:
                skip = max(0, st[1] - self._offset - rundir.MAX_METRICS_BYTES)  # read the tail only
                f.seek(self._offset + skip)
                chunk = f.read(rundir.MAX_METRICS_BYTES)
        except (OSError, rundir.NotRegularFile):
            return changed
        if skip:
            cut = chunk.find(b"\n") + 1  # the rest of a cut line
            self._offset, chunk = self._offset + skip + cut, chunk[cut:]
        end = chunk.rfind(b"\n") + 1  # a line without its newline is still being written
        by_epoch = {r["epoch"]: r for r in self.rows}
        parsed = rundir.metric_rows(chunk[:end].splitlines())
        by_epoch.update(parsed)
        changed = changed or bool(parsed)
        self._offset += end
        self.rows = [by_epoch[e] for e in sorted(by_epoch)]
        return changed

    def _read_result(self, st, old) -> bool:
        result = rundir.read_result(self.dir) if st is not None else None
        changed = result != self.result
        self.result = result
        return changed

    def _read_job(self, st, old) -> bool:
        job = (rundir.read_json(self.dir / rundir.JOB) or {}) if st is not None else {}
        changed = job != self.job
        self.job = job
        return changed


class SweepWatcher:
    """Incremental view of a sweep's runs (see the module docstring). `runs` maps run id to
    RunWatch in the sweep's run order."""

    def __init__(self, sweep) -> None:
        self.sweep = sweep
        self.runs: dict[str, RunWatch] = {
            run: RunWatch(run, sweep.run_dir(run), sweep.configs[run].train.epochs) for run in sweep.run_ids
        }
        self.refreshed: float | None = None  # time.time() of the last refresh
        self._launches: list[dict] = []  # launches.json as of the last refresh
        self._rows: dict[str, dict] = {}  # run id -> collect() row of a run with a result

    def refresh(self) -> set[str]:
        """Read the scheduler and what changed in the run folders; return the runs that changed."""
        launches = self._launches = read_launches(self.sweep.dir)
        states = scheduler_states(self.sweep.dir, launches, self.sweep.local_processes())
        jobs = latest_jobs(launches)
        changed = set()
        for run, w in self.runs.items():
            moved = False if w.final else w.read()
            job_id, attempts = jobs.get(run, (None, 0))
            started = job_id is not None and str(w.job.get("job_id")) == str(job_id)
            trained_now = not w.final and rundir.lock_holder(w.dir) is not None
            state = run_state(
                states.get(job_id) if job_id else None,
                w.final,
                started,
                trained_now,
                bool(w.result) and w.result.get("status") == "diverged",
            )
            if moved or state != w.state or job_id != w.job_id:
                changed.add(run)
                if w.result is not None:
                    self._rows.pop(run, None)
            w.state, w.job_id, w.attempts = state, job_id, attempts
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
        out = dict.fromkeys(STATES, 0)
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

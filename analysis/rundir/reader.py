"""One reader of a run folder's record, and the one table of run states every view shows.

    record = RunRecord("0003-vit_p_fmnist_tiny-sgd", run_dir, epochs=15)
    record.read()                               # what changed since the last read (True when anything did)
    record.settle(job_id, job_state, attempts)  # -> "running", "completed", "failed", ...

`Sweep.status()`, the watcher behind the monitor, and `collect()`'s state column all read runs
through RunRecord and name their states through `run_state`, so one folder reads the same word in
each. A read opens a file only when its rundir.file_key (inode, size, mtime) changed since the last
read, and metrics.jsonl only from the byte where the last read stopped (a torn last line is read
again next time; a file replaced by a shorter one, as when a run resumes from an older checkpoint,
is read from the start). Every read is bounded (rundir.MAX_METRICS_BYTES, the JSON caps).

Progress: metrics.jsonl gives whole epochs and the step count at each epoch's end, so a run's steps
per epoch are known after its first epoch. The step inside the running epoch is written nowhere
cheap (only the checkpoint has it), so `progress()` estimates it from the time since the last epoch
ended and the last epoch's duration; views mark it as an estimate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from analysis.rundir.io import NotRegularFile, file_key, open_regular, read_json, read_tail
from analysis.rundir.layout import JOB, LOG, METRICS, RESULT
from analysis.rundir.lock import lock_holder
from analysis.rundir.metrics import MAX_METRICS_BYTES, metric_rows
from analysis.rundir.schema import is_final, read_result

# Scheduler states of a job (SLURM's words, uppercase; local jobs use the same) that will still run
# (or runs): its runs read pending or running.
JOB_WAITING = (
    "PENDING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "SUSPENDED",
    "STOPPED",
    "RESV_DEL_HOLD",
)
JOB_RUNNING = ("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING")

# Run states, lowercase: word -> (colour in every table, place in the monitor's "active first" list).
# completed and diverged are final (a result; never trained again); pending, running and unknown (the
# scheduler did not answer) are active; every other word (failed, cancelled, timeout, not_launched, or
# an ended job's own state lowercased: preempted, out_of_memory, node_fail, ...) is an ended,
# unfinished run that resubmit() retries.
STATE_TABLE = {
    "running": ("#bbdefb", 0),
    "failed": ("#ffcdd2", 1),
    "cancelled": ("#ffe0b2", 1),
    "timeout": ("#ffe0b2", 1),
    "pending": ("#eeeeee", 2),
    "unknown": ("#eeeeee", 2),
    "diverged": ("#f8bbd0", 3),
    "completed": ("#c8e6c9", 4),
    "not_launched": ("#ffffff", 5),
}
COLORS = {word: colour for word, (colour, _) in STATE_TABLE.items()}
ORDER = {word: place for word, (_, place) in STATE_TABLE.items()}  # any other ended state: 1
FINAL = ("completed", "diverged")
ACTIVE = ("pending", "running", "unknown")  # run states a watcher waits on
KEEP = (*FINAL, *ACTIVE)  # run states resubmit() does not touch
COUNTED = ("pending", "running", "completed", "diverged", "failed", "cancelled")  # counts always show these


def run_state(
    job_state: str | None, complete: bool, started_by_job: bool, trained_now: bool = False, diverged: bool = False
) -> str:
    """One state per run from its job's state and its run folder (complete: it has a final result,
    diverged: that result says so; started_by_job: its job.json names that job; trained_now: a live
    trainer holds its lock, whatever its job's state, e.g. after a local controller died)."""
    if complete:
        return "diverged" if diverged else "completed"
    if trained_now:
        return "running"
    if job_state is None:
        return "not_launched"
    if job_state in JOB_RUNNING:
        return "running" if started_by_job else "pending"
    if job_state in JOB_WAITING:
        return "pending"
    if job_state == "COMPLETED":  # the job ended, this run did not: it failed inside
        return "failed"
    return job_state.lower()


@dataclass
class RunRecord:
    """What is known of one run folder: its metrics rows so far, result, job marker, trainer, state."""

    run: str
    dir: Path
    epochs: int = 0  # planned
    rows: list[dict] = field(default_factory=list)  # metrics.jsonl, one row per epoch
    result: dict | None = None
    result_unreadable: bool = False  # result.json exists but is not a result
    job: dict = field(default_factory=dict)  # job.json: which job trains (or trained) the run
    holder: dict | None = None  # {"host", "pid", "since"} of a live trainer, as of the last settle
    state: str = "not_launched"
    job_id: str | None = None  # its latest job, as of the last settle
    job_state: str | None = None  # that job's scheduler state
    attempts: int = 0  # launches that included it
    metrics_mtime: float | None = None  # seconds since the epoch; when the last epoch was written
    _offset: int = 0  # bytes of metrics.jsonl parsed so far
    _stats: dict = field(default_factory=dict)  # file name -> last file_key()

    @property
    def final(self) -> bool:
        """True once the run has a completed or diverged result: it will not change again."""
        return is_final(self.result)

    @property
    def epoch(self) -> int:
        return len(self.rows)

    @property
    def last(self) -> dict:
        return self.rows[-1] if self.rows else {}

    @property
    def started_by(self) -> str | None:
        """The job id its job.json names (the job that started it last), or None."""
        job_id = self.job.get("job_id")
        return None if job_id is None else str(job_id)

    @property
    def steps_per_epoch(self) -> int | None:
        step, epoch = self.last.get("step"), self.last.get("epoch")
        return int(step) // int(epoch) if step and epoch else None

    def settle(self, job_id: str | None, job_state: str | None, attempts: int = 0) -> str:
        """Set and return the run's state, given its latest job and that job's scheduler state."""
        self.job_id, self.job_state, self.attempts = job_id, job_state if job_id else None, attempts
        self.holder = None if self.final else lock_holder(self.dir)
        started = job_id is not None and self.started_by == str(job_id)
        diverged = bool(self.result) and self.result.get("status") == "diverged"
        self.state = run_state(self.job_state, self.final, started, self.holder is not None, diverged)
        return self.state

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

    def log_tail(self, lines: int = 8, max_bytes: int = 64 << 10) -> str:
        """The last non-empty lines of its log.txt, read from the end in bounded memory."""
        return tail(self.dir / LOG, lines, max_bytes)

    # -- reading ---------------------------------------------------------------------------------
    def read(self, metrics: bool = True) -> bool:
        """Read what changed in the run folder since the last call; True when anything did.
        metrics=False leaves metrics.jsonl unread (a state needs only the result and job.json)."""
        changed = False
        parts = ((METRICS, self._read_metrics),) if metrics else ()
        for name, reader in (*parts, (RESULT, self._read_result), (JOB, self._read_job)):
            st = file_key(self.dir / name)
            if st != self._stats.get(name):
                changed |= reader(st, self._stats.get(name))
                self._stats[name] = st
        return changed

    def _read_metrics(self, st, old) -> bool:
        if st is None:
            had = bool(self.rows)
            self.rows, self._offset, self.metrics_mtime = [], 0, None
            return had
        self.metrics_mtime = st[2] / 1e9
        changed = False
        if old is None or st[0] != old[0] or st[1] < self._offset:  # new or replaced file: from the start
            self.rows, self._offset, changed = [], 0, True
        try:
            with open_regular(self.dir / METRICS) as f:
                skip = max(0, st[1] - self._offset - MAX_METRICS_BYTES)  # read the tail only
                f.seek(self._offset + skip)
                chunk = f.read(MAX_METRICS_BYTES)
        except (OSError, NotRegularFile):
            return changed
        if skip:
            cut = chunk.find(b"\n") + 1  # the rest of a cut line
            self._offset, chunk = self._offset + skip + cut, chunk[cut:]
        end = chunk.rfind(b"\n") + 1  # a line without its newline is still being written
        by_epoch = {r["epoch"]: r for r in self.rows}
        parsed = metric_rows(chunk[:end].splitlines())
        by_epoch.update(parsed)
        self._offset += end
        self.rows = [by_epoch[e] for e in sorted(by_epoch)]
        return changed or bool(parsed)

    def _read_result(self, st, old) -> bool:
        result = read_result(self.dir) if st is not None else None
        changed = result != self.result
        self.result, self.result_unreadable = result, st is not None and result is None
        return changed

    def _read_job(self, st, old) -> bool:
        job = (read_json(self.dir / JOB) or {}) if st is not None else {}
        changed = job != self.job
        self.job = job
        return changed


def tail(path: Path, lines: int = 8, max_bytes: int = 64 << 10) -> str:
    """The last non-empty lines of a text file, from at most its last `max_bytes` bytes."""
    text = read_tail(path, max_bytes).decode(errors="replace")
    return "\n".join([l for l in text.splitlines() if l.strip()][-lines:])

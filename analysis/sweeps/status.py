"""Scheduler states, fresh, and a per-run status table with progress read from each run directory.

Where states come from (no file of the sweep folder is ever unpickled):
- SLURM jobs: accounting (`sacct`), parsed as text.
- local jobs: the controller process (alive, on this machine) and the cancellations on record in
  launches.json; a local job that ended is COMPLETED when all its runs are complete, else FAILED.
- each run (lowercase states): its result.json (complete: completed, or diverged), its training
  lock (a live trainer holds it: running, whatever its job's state, e.g. after the local controller
  died), its job.json (which job started it) and otherwise its job's state.
submitit's own `job.result()` unpickles the job's result file; nothing here calls it.
"""

from __future__ import annotations

import html
import subprocess
import re
import warnings
from pathlib import Path

import pandas as pd

from analysis import rundir
from analysis.html import html_table
from analysis.rundir import reader
from analysis.rundir.reader import COLORS, KEEP, RunRecord

COLUMNS = [
    "run",
    "state",
    "result",
    "job_id",
    "job_state",
    "attempts",
    "epoch",
    "epochs",
    "progress",
    "test_err",
    "train_loss",
    "elapsed_s",
    "reason",
    "trainer",
    "log_tail",
]


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: SLURM state} straight from accounting (array ranges expanded). Jobs accounting does
    not list yet are left out. Raises RuntimeError when sacct does not answer."""
    if not job_ids:
        return {}
    from submitit.slurm.slurm import SlurmInfoWatcher

    bases = sorted({j.split("_")[0] for j in job_ids})
    cmd = ["sacct", "-X", "--parsable2", "-o", "JobID,State", "-j", ",".join(bases)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"sacct did not answer ({e})") from None
    if out.returncode:
        raise RuntimeError(
            f"sacct failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
        )
    info = SlurmInfoWatcher().read_info(out.stdout)
    return {j: info[j]["State"].split()[0].rstrip("+") for j in job_ids if j in info}


def recorded_launches(folder: Path) -> list:
    """The entries of folder/launches.json as they are (none when it is missing or not {"launches": [...]})."""
    launches = (rundir.read_json(Path(folder) / rundir.LAUNCHES) or {}).get("launches")
    return launches if isinstance(launches, list) else []


def read_launches(folder: Path) -> list[dict]:
    """The launches on record in folder/launches.json: the entries rundir.launch_problem finds well-formed.
    launches.json is a folder's data: the others are left out with a warning (and kept in the file)."""
    launches, left_out = [], []
    for i, entry in enumerate(recorded_launches(folder)):
        problem = rundir.launch_problem(entry)
        if problem is None:
            launches.append(entry)
        else:
            left_out.append(f"entry {i} left out ({problem})")
    if left_out:
        more = f" and {len(left_out) - 1} more" if len(left_out) > 1 else ""
        warnings.warn(f"{Path(folder) / rundir.LAUNCHES}: {left_out[0]}{more}", stacklevel=2)
    return launches


SUBMITIT = rundir.SUBMITIT


def submitit_folder(folder: Path, launch: dict) -> Path:
    """The submitit folder of one launch: submitit/launch-NNN-xxxx (made fresh, mode 0700, by that launch),
    or submitit/ itself for launches recorded before there were subfolders; a record naming anything
    else (launches.json is a folder's data) reads as the latter."""
    name = launch.get("submitit", SUBMITIT) if isinstance(launch, dict) else SUBMITIT
    if not isinstance(name, str) or not re.fullmatch(r"submitit(/launch-\d{3,6}-[A-Za-z0-9_]{1,16})?", name):
        name = SUBMITIT
    return Path(folder) / name


def job_folders(folder: Path, launches: list[dict]) -> dict[str, Path]:
    """{job id: the submitit folder of the launch that started it}."""
    return {str(j["job_id"]): submitit_folder(folder, launch) for launch in launches for j in launch["jobs"]}


def local_state(folder: Path, job_id: str, cancelled: bool, run_dirs: list[Path], process=None) -> str:
    """State of a local submitit job whose submitit folder is `folder`: RUNNING while its controller
    lives, else CANCELLED when cancelled, COMPLETED when all its runs are complete, else FAILED."""
    from analysis.sweeps.local import controller_alive

    if controller_alive(job_id, Path(folder), process):
        return "RUNNING"
    if cancelled:
        return "CANCELLED"
    return "COMPLETED" if all(rundir.is_complete(d) for d in run_dirs) else "FAILED"


def scheduler_states(folder: Path, launches: list[dict], processes: dict | None = None) -> dict[str, str]:
    """{job id: state} for every job of the given launches of the sweep in `folder`, read fresh.
    processes: {local job id: Popen} of the jobs this process started."""
    states, slurm_ids = {}, []
    for launch in launches:
        for job in launch["jobs"]:
            jid = str(job["job_id"])
            if launch.get("cluster") == "slurm":
                slurm_ids.append(jid)
                continue
            run_dirs = [Path(folder) / rundir.RUNS / str(r) for r in job["runs"]]
            cancelled = jid in launch.get("cancelled", [])
            where = submitit_folder(folder, launch)
            states[jid] = local_state(where, jid, cancelled, run_dirs, (processes or {}).get(jid))
    if slurm_ids:
        try:
            found, missing = sacct_states(slurm_ids), "PENDING"  # not in accounting yet: just submitted
        except RuntimeError as e:
            warnings.warn(f"{e}; SLURM job states unknown", stacklevel=3)
            found, missing = {}, "UNKNOWN"
        states.update({jid: found.get(jid, missing) for jid in slurm_ids})
    return states


def latest_jobs(launches: list[dict]) -> dict[str, tuple[str, int]]:
    """{run id: (job id of its latest launch, number of launches that included it)}."""
    out: dict[str, tuple[str, int]] = {}
    for launch in launches:
        for job in launch["jobs"]:
            for run in job["runs"]:
                out[run] = (str(job["job_id"]), out.get(run, ("", 0))[1] + 1)
    return out


TAIL_BYTES = 64 << 10  # log tails read at most the last 64 KiB of a log, however long it grew


def tail(path: Path, lines: int = 8) -> str:
    """The last non-empty lines of a log file, read from its end in bounded memory."""
    return reader.tail(path, lines, TAIL_BYTES)


def job_log_tail(submitit_dir: Path, job_id: str, lines: int = 8) -> str:
    """The last lines of a job's submitit log (stderr, else stdout), in its launch's submitit folder."""
    from submitit.core.utils import JobPaths

    paths = JobPaths(Path(submitit_dir), job_id, 0)
    return tail(paths.stderr, lines) or tail(paths.stdout, lines)


def settle(folder: Path, records: dict[str, RunRecord], processes: dict | None = None) -> list[dict]:
    """Give every record its state from one fresh read of the scheduler (one sacct call on SLURM);
    return the launches on record. The one place a run's job and its job's state are matched."""
    launches = read_launches(folder)
    states, jobs = scheduler_states(folder, launches, processes), latest_jobs(launches)
    for run, record in records.items():
        job_id, attempts = jobs.get(run, (None, 0))
        record.settle(job_id, states.get(job_id) if job_id else None, attempts)
    return launches


def read_records(
    folder: Path, run_ids: list[str], processes: dict | None = None, epochs: dict | None = None, metrics: bool = False
) -> tuple[dict[str, RunRecord], list[dict]]:
    """Fresh RunRecords of the runs (read and settled) and the launches on record."""
    records = {run: RunRecord(run, Path(folder) / rundir.RUNS / run, (epochs or {}).get(run, 0)) for run in run_ids}
    for record in records.values():
        record.read(metrics=metrics)
    return records, settle(Path(folder), records, processes)


def _last_started(records: dict[str, RunRecord]) -> dict[str, str]:
    """{job id: the run its job started last} (from each run's job.json), for jobs that started any."""
    last: dict[str, tuple[float, str]] = {}
    for run, r in records.items():
        if r.job_id is not None and r.started_by == r.job_id:
            when = r.job.get("started") if isinstance(r.job.get("started"), (int, float)) else 0.0
            if r.job_id not in last or when >= last[r.job_id][0]:
                last[r.job_id] = (when, run)
    return {job: run for job, (_, run) in last.items()}


def _ended_note(r: RunRecord, reason, last: dict, where: dict, folder: Path) -> tuple:
    """(reason, log tail) of an ended, unfinished run: its log.txt; its job's log when this run is the
    last its job started, or when the job started none of its runs."""
    own = r.log_tail(5, TAIL_BYTES)
    started = r.started_by == r.job_id
    if not own and r.job_id in last and not started:
        ended = (r.job_state or "?").lower()
        reason = reason or f"not started: its job {r.job_id} ended ({ended}) before reaching it"
    about_me = last.get(r.job_id) == r.run if r.job_id in last else True
    wanted = about_me and ((r.result or {}).get("status") == "failed" or not own)
    job_tail = job_log_tail(where.get(r.job_id, folder / SUBMITIT), r.job_id, 4 if own else 8) if wanted else ""
    return reason, "\n".join(x for x in (own, job_tail) if x)


def runs_state(
    folder: Path, run_ids: list[str], processes: dict | None = None, records: dict | None = None
) -> list[dict]:
    """Per run: run, state, result, job_id, job_state, attempts, reason, trainer ("host:pid" of a live
    trainer) and log_tail (for ended, unfinished runs). Unreadable result.json: warned.
    records: RunRecords already read and settled (default: read fresh, metrics left unread)."""
    folder = Path(folder)
    if records is None:
        records, launches = read_records(folder, run_ids, processes)
    else:
        launches = read_launches(folder)
    where, last = job_folders(folder, launches), _last_started(records)
    rows = []
    for run in run_ids:
        r = records[run]
        reason = (r.result or {}).get("reason")
        if r.result_unreadable:
            warnings.warn(
                f"{r.dir}: unreadable result.json (not a JSON object); its state follows its job", stacklevel=3
            )
            reason = "unreadable result.json"
        row = {
            "run": run,
            "state": r.state,
            "result": (r.result or {}).get("status"),
            "job_id": r.job_id,
            "job_state": r.job_state,
            "attempts": r.attempts,
            "reason": reason,
            "log_tail": "",
            "trainer": f"{r.holder.get('host')}:{r.holder.get('pid')}" if r.holder else None,
        }
        if r.state not in KEEP and r.state != "not_launched":
            row["reason"], row["log_tail"] = _ended_note(r, reason, last, where, folder)
        rows.append(row)
    return rows


def status_frame(
    folder: Path, run_ids: list[str], epochs: dict[str, int], processes: dict | None = None
) -> "StatusFrame":
    """One row per run: state, job, progress and latest metrics; log tail for ended, unfinished runs."""
    records, _ = read_records(folder, run_ids, processes, epochs, metrics=True)
    rows = []
    for row in runs_state(folder, run_ids, processes, records):
        r = records[row["run"]]
        row.update(
            {
                "epoch": r.epoch,
                "epochs": r.epochs,
                "progress": r.epoch / r.epochs,
                "test_err": r.last.get("test_top1_err"),
                "train_loss": r.last.get("train_loss"),
                "elapsed_s": r.last.get("elapsed"),
            }
        )
        rows.append(row)
    return StatusFrame(rows, columns=COLUMNS)


class StatusFrame(pd.DataFrame):
    """The status table; renders as a coloured HTML table with progress bars in a notebook."""

    @property
    def _constructor(self):
        return StatusFrame

    def counts(self) -> dict[str, int]:
        """{state: number of runs}."""
        return self["state"].value_counts().to_dict()

    def _repr_html_(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts().items()))
        shown = pd.DataFrame(self.drop(columns="log_tail", errors="ignore"))
        for column in shown.columns:
            shown[column] = shown[column].map(_progress_bar if column == "progress" else _status_cell)
        table = html_table(
            shown,
            [COLORS.get(s, "#ffffff") for s in self["state"]],
            markup={"progress"},
            cell_style="white-space:nowrap",
            notes=list(self["log_tail"].fillna("")) if "log_tail" in self.columns else None,
        )
        return f"<div><b>{len(self)} runs</b> ({html.escape(counts)}){table}</div>"


def _status_cell(value) -> str:
    """A status cell as text: floats to 4 significant digits, missing values empty."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _progress_bar(value) -> str:
    """HTML of a progress bar, 80 px wide, filled to the fraction `value` (missing: empty)."""
    pct = 0 if pd.isna(value) else max(0.0, min(1.0, float(value))) * 100
    return (
        '<div style="background:#ddd;width:80px;height:10px">'
        f'<div style="background:#1976d2;width:{pct:.0f}%;height:10px"></div></div>'
    )

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
from analysis.sweeps.job import read_job_file

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
# Run states: one set of lowercase words, in status(), the monitor and collect()'s `status` column
# (collect() folds the ended unfinished ones into failed). completed and diverged are final (a
# result; never trained again); pending, running and unknown (the scheduler did not answer) are
# active; every other state (failed, cancelled, timeout, not_launched, or an ended job's own state
# lowercased: preempted, out_of_memory, node_fail, ...) is an ended, unfinished run resubmit() retries.
FINAL = ("completed", "diverged")
KEEP = (*FINAL, "pending", "running", "unknown")  # run states resubmit() does not touch
ACTIVE = ("pending", "running", "unknown")  # run states a watcher waits on
COLORS = {
    "completed": "#c8e6c9",
    "running": "#bbdefb",
    "pending": "#eeeeee",
    "failed": "#ffcdd2",
    "cancelled": "#ffe0b2",
    "timeout": "#ffe0b2",
    "not_launched": "#ffffff",
    "diverged": "#f8bbd0",
}
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


def read_launches(folder: Path) -> list[dict]:
    """The launches on record in folder/launches.json (entries that are not well-formed are left out)."""
    launches = (rundir.read_json(Path(folder) / rundir.LAUNCHES) or {}).get("launches")
    if not isinstance(launches, list):
        return []
    return [
        l
        for l in launches
        if isinstance(l, dict)
        and isinstance(l.get("jobs"), list)
        and all(isinstance(j, dict) and "job_id" in j and isinstance(j.get("runs"), list) for j in l["jobs"])
    ]


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
    text = rundir.read_tail(path, TAIL_BYTES).decode(errors="replace")
    return "\n".join([l for l in text.splitlines() if l.strip()][-lines:])


def job_log_tail(submitit_dir: Path, job_id: str, lines: int = 8) -> str:
    """The last lines of a job's submitit log (stderr, else stdout), in its launch's submitit folder."""
    from submitit.core.utils import JobPaths

    paths = JobPaths(Path(submitit_dir), job_id, 0)
    return tail(paths.stderr, lines) or tail(paths.stdout, lines)


def run_state(
    job_state: str | None, complete: bool, started_by_job: bool, trained_now: bool = False, diverged: bool = False
) -> str:
    """One state per run from its job's state and its run directory (complete: it has a final
    result, diverged: that result says so; trained_now: a live trainer holds its lock)."""
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


def _last_started(markers: dict[str, dict], jobs: dict[str, tuple[str, int]]) -> dict[str, str]:
    """{job id: the run its job started last} (from each run's job.json), for jobs that started any."""
    last: dict[str, tuple[float, str]] = {}
    for run, marker in markers.items():
        job_id = jobs.get(run, (None, 0))[0]
        if job_id is not None and str(marker.get("job_id")) == job_id:
            when = marker.get("started") if isinstance(marker.get("started"), (int, float)) else 0.0
            if job_id not in last or when >= last[job_id][0]:
                last[job_id] = (when, run)
    return {job: run for job, (_, run) in last.items()}


def runs_state(folder: Path, run_ids: list[str], processes: dict | None = None) -> list[dict]:
    """Per run: run, state, result, job_id, job_state, attempts, reason, trainer ("host:pid" of a live
    trainer) and log_tail (only lines about this run: its log.txt; its job's log when this run is the
    last its job started, or when the job started none of its runs). Unreadable result.json: warned."""
    folder = Path(folder)
    launches = read_launches(folder)
    states, jobs = scheduler_states(folder, launches, processes), latest_jobs(launches)
    where = job_folders(folder, launches)
    markers = {run: read_job_file(folder / rundir.RUNS / run) for run in run_ids}
    last = _last_started(markers, jobs)
    rows = []
    for run in run_ids:
        d = folder / rundir.RUNS / run
        job_id, attempts = jobs.get(run, (None, 0))
        job_state = states.get(job_id) if job_id else None
        result = rundir.read_result(d)
        reason = (result or {}).get("reason")
        if result is None and (d / rundir.RESULT).exists():
            warnings.warn(f"{d}: unreadable result.json (not a JSON object); its state follows its job", stacklevel=3)
            reason = "unreadable result.json"
        holder = rundir.lock_holder(d)
        started = job_id is not None and str(markers[run].get("job_id")) == job_id
        state = run_state(
            job_state, rundir.is_final(result), started, holder is not None, (result or {}).get("status") == "diverged"
        )
        row = {
            "run": run,
            "state": state,
            "result": (result or {}).get("status"),
            "job_id": job_id,
            "job_state": job_state,
            "attempts": attempts,
            "reason": reason,
            "log_tail": "",
            "trainer": f"{holder.get('host')}:{holder.get('pid')}" if holder else None,
        }
        if state not in KEEP and state != "not_launched":
            own = tail(d / rundir.LOG, 5)
            about_me = last.get(job_id) == run if job_id in last else True
            if not own and job_id in last and not started:
                row["reason"] = (
                    reason or f"not started: its job {job_id} ended ({(job_state or '?').lower()}) before reaching it"
                )
            failed_inside = (result or {}).get("status") == "failed"
            wanted = about_me and (failed_inside or not own)
            job_tail = job_log_tail(where.get(job_id, folder / SUBMITIT), job_id, 4 if own else 8) if wanted else ""
            row["log_tail"] = "\n".join(x for x in (own, job_tail) if x)
        rows.append(row)
    return rows


def status_frame(
    folder: Path, run_ids: list[str], epochs: dict[str, int], processes: dict | None = None
) -> "StatusFrame":
    """One row per run: state, job, progress and latest metrics; log tail for ended, unfinished runs."""
    rows = []
    for row in runs_state(folder, run_ids, processes):
        metrics = rundir.read_metrics(Path(folder) / rundir.RUNS / row["run"])
        last = metrics[-1] if metrics else {}
        total = epochs[row["run"]]
        row.update(
            {
                "epoch": len(metrics),
                "epochs": total,
                "progress": len(metrics) / total,
                "test_err": last.get("test_top1_err"),
                "train_loss": last.get("train_loss"),
                "elapsed_s": last.get("elapsed"),
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
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns if c != "log_tail")
        body = []
        for r in self.itertuples(index=False):
            r = r._asdict()
            color = COLORS.get(r["state"], "#ffffff")
            cells = []
            for c in self.columns:
                v = r[c]
                if c == "log_tail":
                    continue
                if c == "progress":
                    pct = 0 if pd.isna(v) else max(0.0, min(1.0, float(v))) * 100
                    cells.append(
                        f'<td><div style="background:#ddd;width:80px;height:10px">'
                        f'<div style="background:#1976d2;width:{pct:.0f}%;height:10px"></div></div></td>'
                    )
                    continue
                text = (
                    ""
                    if v is None or (isinstance(v, float) and pd.isna(v))
                    else (f"{v:.4g}" if isinstance(v, float) else str(v))
                )
                cells.append(f'<td style="white-space:nowrap">{html.escape(text)}</td>')
            body.append(f'<tr style="background:{color}">{"".join(cells)}</tr>')
            if r["log_tail"]:
                body.append(
                    f'<tr><td colspan="{len(self.columns) - 1}"><pre style="margin:0;font-size:85%">'
                    f"{html.escape(r['log_tail'])}</pre></td></tr>"
                )
        return (
            f"<div><b>{len(self)} runs</b> ({html.escape(counts)})<table>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        )

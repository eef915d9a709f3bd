"""Scheduler states, fresh: SLURM accounting (sacct) or the local job processes, and a per-run
status table that adds progress read from each run directory."""

from __future__ import annotations

import html
import pickle
import subprocess
import warnings
from pathlib import Path

import pandas as pd

from analysis import rundir
from analysis.sweeps.job import read_job_file

# Scheduler states of a job that will still run (or runs): its runs read PENDING or RUNNING.
WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED", "STOPPED",
           "RESV_DEL_HOLD")
RUNNING = ("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING")
# Run states that resubmit() does not touch; every other state (FAILED, CANCELLED, TIMEOUT,
# NOT_LAUNCHED, PREEMPTED, OUT_OF_MEMORY, NODE_FAIL, ...) is an ended, unfinished run.
KEEP = ("COMPLETED", "PENDING", "RUNNING", "UNKNOWN")
COLORS = {"COMPLETED": "#c8e6c9", "RUNNING": "#bbdefb", "PENDING": "#eeeeee", "FAILED": "#ffcdd2",
          "CANCELLED": "#ffe0b2", "TIMEOUT": "#ffe0b2", "NOT_LAUNCHED": "#ffffff", "DIVERGED": "#f8bbd0"}


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
        raise RuntimeError(f"sacct failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    info = SlurmInfoWatcher().read_info(out.stdout)
    return {j: info[j]["State"].split()[0].rstrip("+") for j in job_ids if j in info}


def _proc_alive(pid: int) -> bool:
    """True when the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def local_state(folder: Path, job_id: str, cancelled: bool, process=None) -> str:
    """State of a local submitit job: RUNNING, COMPLETED, FAILED or CANCELLED."""
    from submitit.core.utils import JobPaths

    result = JobPaths(folder, job_id, 0).result_pickle
    alive = process.poll() is None if process is not None else _proc_alive(int(job_id))
    if alive:
        return "RUNNING"
    if cancelled:
        return "CANCELLED"
    if result.is_file():
        try:
            with open(result, "rb") as f:
                outcome = pickle.load(f)[0]
        except Exception:  # noqa: BLE001 - a torn pickle means the job did not end cleanly
            return "FAILED"
        return "COMPLETED" if outcome == "success" else "FAILED"
    return "FAILED"  # died without a result: killed outside Python


def scheduler_states(sweep) -> dict[str, str]:
    """{job id: state} for every job of every launch of a sweep, read fresh."""
    states, slurm_ids = {}, []
    for launch in sweep.launches:
        for job in launch["jobs"]:
            jid = job["job_id"]
            if launch["cluster"] == "slurm":
                slurm_ids.append(jid)
            else:
                states[jid] = local_state(sweep.dir / "submitit", jid, jid in launch.get("cancelled", []),
                                          sweep._processes.get(jid))
    if slurm_ids:
        try:
            found, missing = sacct_states(slurm_ids), "PENDING"  # not in accounting yet: just submitted
        except RuntimeError as e:
            warnings.warn(f"{e}; SLURM job states unknown", stacklevel=3)
            found, missing = {}, "UNKNOWN"
        states.update({jid: found.get(jid, missing) for jid in slurm_ids})
    return states


def latest_jobs(sweep) -> dict[str, tuple[str, int]]:
    """{run id: (job id of its latest launch, number of launches that included it)}."""
    out: dict[str, tuple[str, int]] = {}
    for launch in sweep.launches:
        for job in launch["jobs"]:
            for run in job["runs"]:
                out[run] = (job["job_id"], out.get(run, ("", 0))[1] + 1)
    return out


def tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join([l for l in text.splitlines() if l.strip()][-lines:])


def job_log_tail(sweep, job_id: str, lines: int = 8) -> str:
    from submitit.core.utils import JobPaths

    paths = JobPaths(sweep.dir / "submitit", job_id, 0)
    return tail(paths.stderr, lines) or tail(paths.stdout, lines)


def run_state(job_state: str | None, result: dict | None, started_by_job: bool) -> str:
    """One state per run from its job's state and its run directory."""
    if result and result.get("status") in ("completed", "diverged"):
        return "COMPLETED"
    if job_state is None:
        return "NOT_LAUNCHED"
    if job_state in RUNNING:
        return "RUNNING" if started_by_job else "PENDING"
    if job_state in WAITING:
        return "PENDING"
    if job_state == "COMPLETED":  # the job ended, this run did not: it failed inside
        return "FAILED"
    return job_state


def status_frame(sweep) -> "StatusFrame":
    """One row per run: state, job, progress and latest metrics; log tail for failed runs."""
    states = scheduler_states(sweep)
    jobs = latest_jobs(sweep)
    rows = []
    for run in sweep.run_ids:
        d = sweep.dir / "runs" / run
        job_id, attempts = jobs.get(run, (None, 0))
        job_state = states.get(job_id) if job_id else None
        result = rundir.read_result(d)
        marker = read_job_file(d)
        started = job_id is not None and str(marker.get("job_id")) == str(job_id)
        state = run_state(job_state, result, started)
        metrics = rundir.read_metrics(d)
        last = metrics[-1] if metrics else {}
        cfg = sweep.configs[run]
        row = {"run": run, "state": state, "result": (result or {}).get("status"), "job_id": job_id,
               "job_state": job_state, "attempts": attempts, "epoch": len(metrics), "epochs": cfg.train.epochs,
               "progress": len(metrics) / cfg.train.epochs, "test_err": last.get("test_top1_err"),
               "train_loss": last.get("train_loss"), "elapsed_s": last.get("elapsed"),
               "reason": (result or {}).get("reason"), "log_tail": ""}
        if state not in KEEP and state != "NOT_LAUNCHED":
            row["log_tail"] = tail(d / rundir.LOG, 5) or job_log_tail(sweep, job_id)
            if result and result.get("status") == "failed" and job_id:
                row["log_tail"] = "\n".join(x for x in (row["log_tail"], job_log_tail(sweep, job_id, 4)) if x)
        rows.append(row)
    return StatusFrame(rows, columns=["run", "state", "result", "job_id", "job_state", "attempts", "epoch",
                                      "epochs", "progress", "test_err", "train_loss", "elapsed_s", "reason",
                                      "log_tail"])


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
            color = COLORS.get(r["result"].upper() if r["result"] == "diverged" else r["state"], "#ffffff")
            cells = []
            for c in self.columns:
                v = r[c]
                if c == "log_tail":
                    continue
                if c == "progress":
                    pct = 0 if pd.isna(v) else max(0.0, min(1.0, float(v))) * 100
                    cells.append(f'<td><div style="background:#ddd;width:80px;height:10px">'
                                 f'<div style="background:#1976d2;width:{pct:.0f}%;height:10px"></div></div></td>')
                    continue
                text = "" if v is None or (isinstance(v, float) and pd.isna(v)) else (
                    f"{v:.4g}" if isinstance(v, float) else str(v))
                cells.append(f'<td style="white-space:nowrap">{html.escape(text)}</td>')
            body.append(f'<tr style="background:{color}">{"".join(cells)}</tr>')
            if r["log_tail"]:
                body.append(f'<tr><td colspan="{len(self.columns) - 1}"><pre style="margin:0;font-size:85%">'
                            f'{html.escape(r["log_tail"])}</pre></td></tr>')
        return (f"<div><b>{len(self)} runs</b> ({html.escape(counts)})<table>"
                f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")

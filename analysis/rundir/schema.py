"""result.json: the final record of a run (completed, diverged, failed), its one constructor per kind and its check;
and the record of one sweep launch in launches.json, its constructor and its check."""

from __future__ import annotations

import math
import time
import warnings
from datetime import datetime
from pathlib import Path


from analysis.errors import ConfigError, shown
from analysis.rundir.io import loads_finite, log_line, read_capped, write_json
from analysis.rundir.layout import RESULT, SUBMITIT


def failure_reason(error: BaseException) -> str:
    """One line for a result record: the exception type and the first line of its message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


_ERRORS = ("top1_err", "top5_err", "best_top1_err", "ema_top1_err")  # percent, in [0, 100]
_COUNTS = ("epoch", "step", "params", "flops", "acts", "seconds", "images_per_s")  # >= 0
STATUSES = ("completed", "diverged", "failed")
MAX_RESULT_BYTES = 1 << 20


def number_in(value, low: float, high: float) -> bool:
    """Whether value is a finite int or float (not a bool) in [low, high]."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


def result_problem(result: dict) -> str | None:
    """What is wrong with a result.json object (None: valid): status one of STATUSES, reason a string
    or null, error rates finite in [0, 100] (top1_err required for a completed or diverged run),
    counts and times finite and >= 0 or null."""
    status = result.get("status")
    if status not in STATUSES:
        return f"status {status!r} is not one of {', '.join(STATUSES)}"
    if not isinstance(result.get("reason"), (str, type(None))):
        return "reason is not a string"
    if status != "failed" and "top1_err" not in result:
        return "no top1_err"
    for key, (low, high) in [*((k, (0, 100)) for k in _ERRORS), *((k, (0, math.inf)) for k in _COUNTS)]:
        value = result.get(key)
        if (value is not None or key == "top1_err" and status != "failed") and not number_in(value, low, high):
            return f"{key} is {shown(value)}, not a finite number in [{low}, {high}]"
    return None


def read_result(run_dir: str | Path) -> dict | None:
    """The run's result.json, validated (result_problem): None when missing or not a JSON object; a
    record breaking the schema (NaN, Infinity, over MAX_RESULT_BYTES included) reads as a failed run
    with the reason, and a warning names the file."""
    path = Path(run_dir) / RESULT
    try:
        data = read_capped(path, MAX_RESULT_BYTES)
        result = loads_finite(data.decode("utf-8", errors="replace"))
        problem = result_problem(result) if isinstance(result, dict) else None
    except OSError:
        return None
    except ConfigError as e:  # over the limit, or not a regular file (a device, a FIFO)
        problem, result = str(e).removeprefix(f"{path}: ").removeprefix(f"{path} "), None
    except ValueError as e:
        if "is not a number" not in str(e):
            return None  # not JSON: the callers report an unreadable result.json
        problem, result = str(e), None
    if problem is None:
        return result if isinstance(result, dict) else None
    warnings.warn(f"{path}: invalid result ({problem}); the run counts as failed", stacklevel=2)
    return failed_result(f"invalid result.json: {problem}")


def is_final(result: dict | None) -> bool:
    """True for a result.json object of a run that ended (completed or diverged): it need not run again."""
    return bool(result) and result.get("status") in ("completed", "diverged")


def is_complete(run_dir: str | Path) -> bool:
    """True when the run ended with a result (completed or diverged): it need not run again."""
    return is_final(read_result(run_dir))


def completed_result(rows: list[dict], cx: dict, seconds: float) -> dict:
    """The result record of a run that finished its schedule, from its metrics rows."""
    last = rows[-1]
    train_s = sum(r["seconds"] for r in rows)
    images = sum(r["images_per_s"] * r["seconds"] for r in rows)
    return {
        "status": "completed",
        "reason": None,
        "epoch": last["epoch"],
        "step": last["step"],
        "top1_err": last["test_top1_err"],
        "top5_err": last["test_top5_err"],
        "best_top1_err": min(r["test_top1_err"] for r in rows),
        "ema_top1_err": last["ema_top1_err"],
        "params": cx["params"],
        "flops": cx["flops"],
        "acts": cx["acts"],
        "seconds": seconds,
        "images_per_s": images / max(train_s, 1e-9),
    }


def diverged_result(epoch: int, step: int, cx: dict, seconds: float) -> dict:
    """The result record of a run whose loss went non-finite at `step` of (0-based) `epoch`."""
    return {
        "status": "diverged",
        "reason": f"non-finite loss at epoch {epoch + 1}, step {step}",
        "epoch": epoch + 1,
        "step": step,
        "top1_err": 100.0,
        "top5_err": 100.0,
        "best_top1_err": 100.0,
        "ema_top1_err": 100.0,
        "params": cx["params"],
        "flops": cx["flops"],
        "acts": cx["acts"],
        "seconds": seconds,
        "images_per_s": None,
    }


def failed_result(reason: str) -> dict:
    """The result record of a run that failed, `reason` one line (failure_reason of the error)."""
    return {"status": "failed", "reason": reason}


def record_failure(run_dir: str | Path, error: BaseException) -> dict:
    """Write a run's "failed" result (the reason: one line) and a log line; return the result."""
    result = failed_result(failure_reason(error))
    log_line(run_dir, f"[{time.strftime('%H:%M:%S')}] failed: {result['reason']}")
    write_json(Path(run_dir) / RESULT, result)
    return result


LAUNCH_CLUSTERS = ("slurm", "local")  # where a launch ran its jobs
MAX_LAUNCHES = 10**6  # launch numbers stay within the 3-6 digits of their folder names (code/launch-NNN)


def launch_record(
    launch: int,
    cluster: str,
    jobs: list[tuple[str, list[str]]],
    code: str,
    submitit: str,
    options: dict,
    when: str | None = None,
    cancelled: list[str] | None = None,
) -> dict:
    """One entry of launches.json: launch number, its ISO time (`when`, default now, to the second), cluster
    ("slurm" or "local"), jobs as (job id, its run ids) in order, the code snapshot and submitit folder
    (relative to the sweep folder), the launch options that differ from their defaults and the job ids
    cancelled since. ValueError when the record would not pass launch_problem."""
    record = {
        "launch": launch,
        "time": when or datetime.now().isoformat(timespec="seconds"),
        "cluster": cluster,
        "code": code,
        "submitit": submitit,
        "options": options,
        "jobs": [{"job_id": str(job_id), "runs": list(runs)} for job_id, runs in jobs],
        "cancelled": list(cancelled or []),
    }
    problem = launch_problem(record)
    if problem:
        raise ValueError(f"launch record: {problem}")
    return record


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def launch_problem(record) -> str | None:
    """What is wrong with a launches.json entry read back (None: valid): the keys and types
    launch_record writes; "submitit" may be missing (launches recorded before there were subfolders:
    their files are in submitit/)."""
    if not isinstance(record, dict):
        return "not an object"
    launch = record.get("launch")
    if not isinstance(launch, int) or isinstance(launch, bool) or not 0 <= launch < MAX_LAUNCHES:
        return f"launch is {shown(launch)}, not a launch number (0 to {MAX_LAUNCHES - 1})"
    try:
        datetime.fromisoformat(record.get("time"))
    except (TypeError, ValueError):
        return f"time is {shown(record.get('time'))}, not an ISO time"
    if record.get("cluster") not in LAUNCH_CLUSTERS:
        return f"cluster is {shown(record.get('cluster'))}, not one of {', '.join(LAUNCH_CLUSTERS)}"
    for key, kind in (("code", str), ("submitit", str), ("options", dict)):
        if not isinstance(record.get(key, SUBMITIT if key == "submitit" else None), kind):
            return f"{key} is {shown(record.get(key))}, not a {kind.__name__}"
    jobs = record.get("jobs")
    if not isinstance(jobs, list) or not all(
        isinstance(j, dict) and isinstance(j.get("job_id"), str) and _strings(j.get("runs")) for j in jobs
    ):
        return "jobs is not a list of {job_id: string, runs: [run ids]}"
    if not _strings(record.get("cancelled")):
        return "cancelled is not a list of job ids"
    return None

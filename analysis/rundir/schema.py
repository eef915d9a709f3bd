"""result.json: the final record of a run (completed, diverged, failed), its one constructor per kind and its check."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path


from analysis.errors import ConfigError, shown
from analysis.rundir.io import loads_finite, log_line, read_capped, write_json
from analysis.rundir.layout import RESULT


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
    return {"status": "failed", "reason": f"invalid result.json: {problem}"}


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


def record_failure(run_dir: str | Path, error: BaseException) -> dict:
    """Write a run's "failed" result (the reason: one line) and a log line; return the result."""
    result = {"status": "failed", "reason": failure_reason(error)}
    log_line(run_dir, f"[{time.strftime('%H:%M:%S')}] failed: {result['reason']}")
    write_json(Path(run_dir) / RESULT, result)
    return result

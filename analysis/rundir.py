"""The run directory: the only contract between training jobs and analyses (see README).

Writes are crash-safe: JSON and checkpoints go to a temp file, are fsynced and renamed over the
target; the metrics log is append-only with one fsynced line per epoch. Every file follows the
user's umask. While a run trains, its trainer holds an exclusive lock on `train.lock` in the run
folder (released by the kernel when the process dies), so two trainers never write one folder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from analysis.errors import CheckpointError, ConfigError, RunLocked

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
LOG = "log.txt"
LOCK = "train.lock"
JOB = "job.json"  # which sweep job trains (or last trained) the run
METRIC_KEYS = (  # the keys of a metrics.jsonl row (Member.train writes them)
    "epoch",
    "step",
    "train_loss",
    "test_top1_err",
    "test_top5_err",
    "ema_top1_err",
    "ema_top5_err",
    "lr",
    "seconds",
    "images_per_s",
    "elapsed",
)
WRITTEN = (CONFIG, METRICS, CHECKPOINT, RESULT, LOG, LOCK, JOB)  # what the suite writes in a run folder


def _umask() -> int:
    """The process umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write bytes to path through a temp file, fsync and rename (never a torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; follow the umask like open() does
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _clean(value: Any) -> Any:
    """Make floats JSON-safe (NaN/inf become None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: str | Path, obj: dict) -> None:
    write_atomic(path, (json.dumps(_clean(obj), indent=1) + "\n").encode())


MAX_JSON_BYTES = 16 << 20  # a sweep's runs.json / launches.json (10,000 runs take some 6 MiB)


def read_capped(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a file a folder holds, refused (ConfigError, one line) when over max_bytes;
    never more than max_bytes + 1 are read. OSError when it cannot be read."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ConfigError(f"{path}: over {max_bytes} bytes, the limit for this file; not read")
    return data


def read_tail(path: str | Path, max_bytes: int) -> bytes:
    """The last max_bytes of a file (all of a smaller one); b"" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - max_bytes))
            return f.read(max_bytes)
    except OSError:
        return b""


def read_json(path: str | Path, max_bytes: int = MAX_JSON_BYTES) -> dict | None:
    """Return the parsed JSON object, or None if missing, unreadable or not a JSON object.
    A file over max_bytes is refused with a one-line ConfigError (bounded memory)."""
    try:
        data = read_capped(path, max_bytes)
    except OSError:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def failure_reason(error: BaseException) -> str:
    """One line for a result record: the exception type and the first line of its message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def append_metrics(run_dir: str | Path, row: dict) -> None:
    """Append one epoch's metrics as a JSON line and fsync it."""
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(_clean(row)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def metric_rows(lines) -> dict[int, dict]:
    """{epoch: row} from metrics.jsonl lines (str or bytes): the last row per epoch kept; torn,
    malformed and invalid rows (metric_row_ok) skipped."""
    rows = {}
    for line in lines:
        try:
            row = loads_finite(line)
        except ValueError:
            continue
        if metric_row_ok(row):
            rows[row["epoch"]] = row
    return rows


def metric_row_ok(row) -> bool:
    """Whether a metrics.jsonl row is valid: an object with an int epoch >= 0, its numbers finite
    (NaN/Infinity are not JSON numbers), its error rates (*_err) in [0, 100] or null."""
    if not isinstance(row, dict) or not _number(row.get("epoch"), 0, math.inf) or not isinstance(row["epoch"], int):
        return False
    return all(value is None or _number(value, 0, 100) for key, value in row.items() if key.endswith("_err"))


MAX_METRICS_BYTES = 8 << 20  # read at most the last 8 MiB of a metrics.jsonl (some 25,000 epochs)
MAX_LINE_BYTES = 64 << 10  # a longer line is not a metrics row


def _lines(f, limit: int):
    """The whole lines of a binary file from its position on, each read with a bounded buffer;
    overlong lines skipped."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) > limit:
            while line and not line.endswith(b"\n"):
                line = f.readline(limit + 1)
            continue
        yield line


def read_metrics(run_dir: str | Path, max_bytes: int = MAX_METRICS_BYTES) -> list[dict]:
    """Return the per-epoch rows, last row per epoch kept, a torn last line ignored. Streamed in
    bounded memory: a file over max_bytes is read from its last max_bytes on (a warning says so)."""
    path = Path(run_dir) / METRICS
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                warnings.warn(f"{path}: over {max_bytes} bytes; read from its last {max_bytes} bytes", stacklevel=2)
                f.seek(size - max_bytes)
                f.readline()  # the rest of a cut line
            rows = metric_rows(_lines(f, MAX_LINE_BYTES))
    except OSError:
        return []
    return [rows[e] for e in sorted(rows)]


def file_key(path: str | Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of a file, None when it does not exist: what says a file changed
    (the inode catches a file replaced by a rename with the same size and mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def truncate_metrics(run_dir: str | Path, last_epoch: int) -> None:
    """Drop metrics rows after `last_epoch` (used when resuming from an older checkpoint)."""
    rows = [r for r in read_metrics(run_dir) if r["epoch"] <= last_epoch]
    write_atomic(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())


def save_checkpoint(run_dir: str | Path, state: dict) -> None:
    """Write the checkpoint atomically (only the last one is kept)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(Path(run_dir) / CHECKPOINT, buf.getvalue())


def load_checkpoint(run_dir: str | Path, map_location="cpu") -> dict | None:
    """Return the last checkpoint (weights_only loading), or None if there is none. An empty,
    truncated, corrupt or unsafe file raises CheckpointError with one line."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        if path.stat().st_size == 0:
            what = "is empty"
        elif "weights_only" in str(e) or "Unsupported global" in str(e):
            what = "holds objects other than tensors and plain data (refused: checkpoints load weights only)"
        else:
            what = f"is truncated or corrupt ({type(e).__name__})"
        raise CheckpointError(
            f"checkpoint {path} {what}; start the run over with "
            f"`python -m analysis train --restart --out {run_dir} ...` "
            "(train(cfg, out, restart=True)) or delete that file"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(
            f"checkpoint {path} is not a run checkpoint (no model state); start the run over "
            f"with `python -m analysis train --restart --out {run_dir} ...` or delete that file"
        )
    return ckpt


_ERRORS = ("top1_err", "top5_err", "best_top1_err", "ema_top1_err")  # percent, in [0, 100]
_COUNTS = ("epoch", "step", "params", "flops", "acts", "seconds", "images_per_s")  # >= 0
STATUSES = ("completed", "diverged", "failed")
MAX_RESULT_BYTES = 1 << 20


def _number(value, low: float, high: float) -> bool:
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
        if (value is not None or key == "top1_err" and status != "failed") and not _number(value, low, high):
            return f"{key} is {value!r}, not a finite number in [{low}, {high}]"
    return None


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        _no_constants(text)
    return value


def loads_finite(text: str | bytes):
    """json.loads refusing NaN, Infinity and overflowing numbers (ValueError "... is not a number")."""
    return json.loads(text, parse_constant=_no_constants, parse_float=_finite)


def read_result(run_dir: str | Path) -> dict | None:
    """The run's result.json, validated (result_problem): None when missing or not a JSON object; a
    record breaking the schema (NaN, Infinity, over MAX_RESULT_BYTES included) reads as a failed run
    with the reason, and a warning names the file."""
    path = Path(run_dir) / RESULT
    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            problem, result = f"over {MAX_RESULT_BYTES} bytes", None
        else:
            result = loads_finite(path.read_text())
            problem = result_problem(result) if isinstance(result, dict) else None
    except OSError:
        return None
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


def check_out(run_dir: str | Path) -> None:
    """Raise a one-line ConfigError unless run_dir is (or can become) a writable folder."""
    run_dir = Path(run_dir)
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == run_dir else f"is under {parent}, which is a file"
                raise ConfigError(f"run folder {run_dir} {where}; give a folder path")
            if not os.access(parent, os.W_OK | os.X_OK):
                what = "is not writable" if parent == run_dir else f"cannot be created: {parent} is not writable"
                raise ConfigError(f"run folder {run_dir} {what}; choose a folder you can write")
            return


def prepare(run_dir: str | Path, cfg, create: bool = True):
    """Create the run directory (unless create=False), or check that the config it already holds
    matches `cfg` (all but analysis.config.RUNTIME_KEYS, e.g. the resolved train.precision); return
    the config to resume with (the stored one, else `cfg`)."""
    from analysis.config import RUNTIME_KEYS, load

    run_dir = Path(run_dir)
    check_out(run_dir)
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG
    if not path.is_file():
        return cfg
    old = load(path)
    a, b = old.flat(), cfg.flat()
    for key in RUNTIME_KEYS:
        a.pop(key), b.pop(key)
    if a != b:
        diff = sorted(k for k in a if a[k] != b[k])
        raise ConfigError(
            f"{run_dir} holds a run with another config (differs in {', '.join(diff)}); "
            "use another run directory or delete that one"
        )
    return old


def remove_temp_files(run_dir: str | Path) -> int:
    """Delete temp files left by interrupted atomic writes (call only while holding the run's lock);
    return how many were removed."""
    count = 0
    for tmp in Path(run_dir).glob(".*.tmp"):
        try:
            tmp.unlink()
            count += 1
        except OSError:
            pass
    return count


def clear_run(run_dir: str | Path) -> None:
    """Remove a run's checkpoint, metrics and result so that it starts over (config and log stay)."""
    for name in (CHECKPOINT, METRICS, RESULT):
        (Path(run_dir) / name).unlink(missing_ok=True)


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


def log_line(run_dir: str | Path, text: str) -> None:
    with open(Path(run_dir) / LOG, "a") as f:
        f.write(text.rstrip("\n") + "\n")


_HELD: set[int] = set()  # descriptors of the run locks this process holds


def _close_held_in_child() -> None:
    """A forked child (a DataLoader worker) must not keep its parent's run locks alive."""
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class RunLock:
    """The exclusive training lock of one run folder (flock on `train.lock`, which records the
    holder's host and pid). `acquire()` raises RunLocked naming the holder when another live
    process trains the folder; the kernel releases the lock when the holder exits or dies."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def acquire(self, tries: int = 20) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        for i in range(tries):  # a status check holds a shared lock for an instant: retry briefly
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or i == tries - 1:
                    os.close(fd)
                    holder = _read_holder(self.path) or {}
                    raise RunLocked(
                        f"{self.path.parent} is being trained by another process "
                        f"(host {holder.get('host', '?')}, pid {holder.get('pid', '?')}); "
                        "wait for it or stop it first"
                    ) from None
                time.sleep(0.05)
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        self.fd = fd
        _HELD.add(fd)
        return self

    def release(self) -> None:
        if self.fd is not None:
            _HELD.discard(self.fd)
            os.close(self.fd)  # closing the descriptor drops the flock (no forked child holds a copy)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(path: Path) -> dict | None:
    try:
        holder = json.loads(read_capped(path, 4096) or b"null")
    except (OSError, ValueError):  # a lock file over 4 KiB is not one this package wrote
        return None
    return holder if isinstance(holder, dict) else None


def lock_holder(run_dir: str | Path) -> dict | None:
    """{"host", "pid", "since"} of the live process training this run folder, or None."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return _read_holder(path) or {"host": None, "pid": None, "since": None}
        return None
    finally:
        os.close(fd)
    return None

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
import stat
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from analysis.errors import CheckpointError, ConfigError, RunLocked, shown

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


def write_output(path: str | Path, data: bytes) -> None:
    """Write an output file the user named (collect --out, a report): atomically (write_atomic) unless
    the path is an existing device or FIFO (/dev/stdout, a pipe), which is written as it is; a full
    disk raises OSError ENOSPC and leaves any earlier file whole."""
    path = Path(path)
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode) and not path.is_dir()
    except OSError:
        special = False
    if not special:
        write_atomic(path, data)
        return
    with open(path, "wb") as f:
        f.write(data)
        f.flush()


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


class NotRegularFile(ConfigError):
    """A file a folder names is a device, FIFO, socket or folder: never read (one line)."""


def open_regular(path: str | Path):
    """Open a file a run or sweep folder holds for reading, as a binary file object: O_NOFOLLOW and
    O_NONBLOCK (a FIFO does not block the open), then fstat: anything but a regular file raises
    NotRegularFile (a device such as /dev/zero, a FIFO, a socket); a symbolic link as the last part of
    the path is an OSError (ELOOP). Readers stop at their own byte limits whatever st_size says."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device or folder"
            raise NotRegularFile(f"{path} is {kind}, not a regular file; not read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a file a folder holds, refused (ConfigError, one line) when over max_bytes or not
    a regular file; never more than max_bytes + 1 are read. OSError when it cannot be read."""
    with open_regular(path) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ConfigError(f"{path}: over {max_bytes} bytes, the limit for this file; not read")
    return data


def read_tail(path: str | Path, max_bytes: int) -> bytes:
    """The last max_bytes of a file (all of a smaller one); b"" when it cannot be read or is not a
    regular file."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - max_bytes))
            return f.read(max_bytes)
    except (OSError, NotRegularFile):
        return b""


def read_json(path: str | Path, max_bytes: int = MAX_JSON_BYTES) -> dict | None:
    """Return the parsed JSON object, or None if missing, unreadable or not a JSON object.
    A file over max_bytes, or not a regular file, is refused with a one-line ConfigError."""
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


def unshare(run_dir: str | Path) -> int:
    """Give each file the suite appends to or rewrites in place (metrics.jsonl, log.txt) that has other
    hard links (a `cp -al` snapshot) a private copy, so that no write here changes a file outside the
    folder; a file that is not regular is removed. Returns how many were replaced. Called under the
    run's lock before a trainer writes."""
    replaced = 0
    for name in (METRICS, LOG):
        path = Path(run_dir) / name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_nlink <= 1:
            continue
        data = b""
        if stat.S_ISREG(st.st_mode):
            with open_regular(path) as f:
                data = f.read()
        path.unlink()
        write_atomic(path, data)
        replaced += 1
    return replaced


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


class _Bounded:
    """A binary file read through readline() for at most `left` more bytes (a file that grows while it
    is read, or lies about its size, is never read past the limit)."""

    def __init__(self, f, left: int):
        self.f, self.left = f, left

    def readline(self, limit: int) -> bytes:
        if self.left <= 0:
            return b""
        line = self.f.readline(min(limit, self.left))
        self.left -= len(line)
        return line


def read_metrics(run_dir: str | Path, max_bytes: int = MAX_METRICS_BYTES) -> list[dict]:
    """Return the per-epoch rows, last row per epoch kept, a torn last line ignored. Streamed in
    bounded memory: a file over max_bytes is read from its last max_bytes on (a warning says so)."""
    path = Path(run_dir) / METRICS
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                warnings.warn(f"{path}: over {max_bytes} bytes; read from its last {max_bytes} bytes", stacklevel=2)
                f.seek(size - max_bytes)
                f.readline(MAX_LINE_BYTES)  # the rest of a cut line
            rows = metric_rows(_lines(_Bounded(f, max_bytes), MAX_LINE_BYTES))
    except OSError:
        return []
    except NotRegularFile as e:
        warnings.warn(str(e), stacklevel=2)
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


CHECKPOINT_FACTOR = 6  # a checkpoint holds model, EMA and two optimizer moments: ~4x the parameters


def checkpoint_limit(model: torch.nn.Module | None) -> int | None:
    """The most bytes a run checkpoint of `model` may take: CHECKPOINT_FACTOR times its parameter and
    buffer bytes, plus 1 MiB of records (None without a model: no limit)."""
    if model is None:
        return None
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return CHECKPOINT_FACTOR * size + (1 << 20)


def load_checkpoint(run_dir: str | Path, map_location="cpu", model: torch.nn.Module | None = None) -> dict | None:
    """Return the last checkpoint (weights_only loading, memory-mapped), or None if there is none. An
    empty, truncated, corrupt or unsafe file, or one larger than a checkpoint of `model` can be
    (checkpoint_limit), raises CheckpointError with one line."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    limit = checkpoint_limit(model)
    size = path.stat().st_size
    if limit is not None and size > limit:
        raise CheckpointError(
            f"checkpoint {path} is {size} bytes, over the {limit} a checkpoint of this run's model can take "
            f"({CHECKPOINT_FACTOR}x its parameters); not read. Start the run over with "
            f"`stemlab train --restart --out {run_dir} ...` or delete that file"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
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
            return f"{key} is {shown(value)}, not a finite number in [{low}, {high}]"
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
        for _ in range(5):  # until the locked inode is the one the path names
            fd = open_lock_file(self.path)
            self._lock(fd, tries)
            st = os.fstat(fd)
            if st.st_nlink > 1:  # shared with a snapshot (cp -al): lock a private file of our own
                write_atomic(self.path, b"")  # replaces the name; a trainer that waits on the old inode re-checks
                os.close(fd)
                continue
            try:
                same = os.stat(self.path).st_ino == st.st_ino
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise RunLocked(f"{self.path}: the lock file keeps changing under this trainer; is another trainer racing?")
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        self.fd = fd
        _HELD.add(fd)
        return self

    def _lock(self, fd: int, tries: int) -> None:
        for i in range(tries):  # a status check holds a shared lock for an instant: retry briefly
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
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

    def release(self) -> None:
        if self.fd is not None:
            _HELD.discard(self.fd)
            os.close(self.fd)  # closing the descriptor drops the flock (no forked child holds a copy)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def open_lock_file(path: Path) -> int:
    """A descriptor of a run's lock file, created when missing; not a regular file (a FIFO, a device,
    a symbolic link) is refused in one line instead of blocking or writing through it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a symbolic link, not this folder's lock file; remove it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFile(f"{path} is not a regular file; remove it before training this folder")
    return fd


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
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device is no trainer's lock
        os.close(fd)
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

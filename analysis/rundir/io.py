"""Atomic writes, bounded reads of regular files only, and file identity (inode, size, mtime)."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any


from analysis.errors import ConfigError
from analysis.rundir.layout import LOG, METRICS


def umask() -> int:
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


def write_atomic(path: str | Path, data) -> None:
    """Write bytes (or what a binary file object reads, copied in chunks) to path through a temp file,
    fsync and rename (never a torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; follow the umask like open() does
        with os.fdopen(fd, "wb") as f:
            if hasattr(data, "read"):
                shutil.copyfileobj(data, f)
            else:
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
    the path is a symbolic link (/dev/stdout), a device or a FIFO, which is written through as it is
    (a rename would replace the link itself); a full disk raises OSError ENOSPC and leaves any earlier
    regular file whole."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
        special = stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))
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


def open_regular(path: str | Path, follow: bool = False):
    """Open a file a run or sweep folder holds for reading, as a binary file object: O_NOFOLLOW and
    O_NONBLOCK (a FIFO does not block the open), then fstat: anything but a regular file raises
    NotRegularFile (a device such as /dev/zero, a FIFO, a socket); a symbolic link as the last part of
    the path is an OSError (ELOOP) unless follow=True (a file the user names, e.g. a spec). Readers stop at
    their own byte limits whatever st_size says."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
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


def unshare(run_dir: str | Path) -> int:
    """Give each file the suite appends to or rewrites in place (metrics.jsonl, log.txt) that has other
    hard links (a `cp -al` snapshot) a private copy, so that no write here changes a file outside the
    folder (copied in chunks, whatever its size); one that is not a regular file is replaced by an empty
    one. Returns how many were replaced. Called under the run's lock before a trainer writes."""
    replaced = 0
    for name in (METRICS, LOG):
        path = Path(run_dir) / name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_nlink <= 1:
            continue
        if stat.S_ISREG(st.st_mode):
            with open_regular(path) as f:
                write_atomic(path, f)  # the rename breaks the link
        else:
            write_atomic(path, b"")  # replaces the FIFO, device or link itself
        replaced += 1
    return replaced


def file_key(path: str | Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of a file, None when it does not exist: what says a file changed
    (the inode catches a file replaced by a rename with the same size and mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


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


def log_line(run_dir: str | Path, text: str) -> None:
    with open(Path(run_dir) / LOG, "a") as f:
        f.write(text.rstrip("\n") + "\n")

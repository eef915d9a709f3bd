"""train.lock: the exclusive training lock of a run folder (flock), and who holds it."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path


from analysis.errors import ConfigError, RunLocked
from analysis.rundir.io import NotRegularFile, open_regular, read_capped, write_atomic
from analysis.rundir.layout import LOCK

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
                try:
                    ours = os.stat(self.path).st_ino == st.st_ino
                except OSError:
                    ours = False
                if ours:  # only the holder of the named inode's lock renames over it
                    write_atomic(self.path, b"")  # a trainer that waits on the old inode re-checks
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
        f = open_regular(path)
    except (OSError, NotRegularFile):  # missing, or a FIFO or device: no trainer's lock
        return None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return _read_holder(path) or {"host": None, "pid": None, "since": None}
    return None

"""Local jobs (no SLURM): submitit's local executor with each job's controller in its own session,
and what this machine's process table says about a job or a trainer.

submitit starts one controller process per local job (`python -m submitit.local._local`), which
starts the training task. By default the controller shares the launching terminal's process group,
so a Ctrl-C meant for a waiting `sweep launch --wait` or `make demo` also reaches the controllers
(each prints a KeyboardInterrupt traceback and kills its task). Here the controller starts in a new
session: Ctrl-C stops only the waiting process, the jobs go on like SLURM jobs do, and
`Sweep.cancel()` (SIGINT to the controller, which stops its task) is how they are stopped.

This overrides submitit's private `LocalExecutor._submit_command` and rebuilds the environment of
submitit's `start_controller`, so it holds for one submitit release line only (SUBMITIT_LINE; the
executor refuses others, and tests/test_local_backend.py fails when submitit changes what is relied on).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import submitit
from submitit.local.local import LocalExecutor, LocalJob

from analysis import rundir
from analysis.errors import UserError

CONTROLLER = "submitit.local._local"
CONTROLLER_LOG = "controllers.log"  # in the submitit folder: what the controllers themselves print
SUBMITIT_LINE = "1.5."  # the submitit releases whose private LocalExecutor._submit_command is overridden


def check_submitit(version: str = submitit.__version__) -> None:
    """Raise UserError unless submitit is of the release line the local back-end is written for."""
    if not version.startswith(SUBMITIT_LINE):
        raise UserError(
            f"submitit {version} is not supported by the local back-end (it overrides a private "
            f"method of submitit {SUBMITIT_LINE}x); install submitit>=1.5.4,<1.6"
        )


def controller_env(command: str, ntasks: int, gpus: range, timeout_min: float, signal_delay_s: int) -> dict:
    """The controller's environment, as submitit 1.5's start_controller sets it (without `setup`)."""
    return {
        **os.environ,
        "SUBMITIT_LOCAL_NTASKS": str(ntasks),
        "SUBMITIT_LOCAL_COMMAND": command,
        "SUBMITIT_LOCAL_TIMEOUT_S": str(int(60 * timeout_min)),
        "SUBMITIT_LOCAL_SIGNAL_DELAY_S": str(int(signal_delay_s)),
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_STDERR_TO_STDOUT": "",
        "SUBMITIT_EXECUTOR": "local",
        "CUDA_VISIBLE_DEVICES": ",".join(str(k) for k in gpus),
        "SUBMITIT_LOCAL_WITH_SHELL": "",
    }


class DetachedLocalExecutor(LocalExecutor):
    """submitit's LocalExecutor whose job controllers start in their own session (see module doc)."""

    def __init__(self, *args, **kwargs) -> None:
        check_submitit()
        super().__init__(*args, **kwargs)

    def _submit_command(self, command: str) -> LocalJob:
        ntasks = self.parameters.get("tasks_per_node", 1)
        env = controller_env(
            command,
            ntasks,
            range(self.parameters.get("gpus_per_node", 0)),
            self.parameters.get("timeout_min", 2.0),
            self.parameters.get("signal_delay_s", 30),
        )
        with open(Path(self.folder) / CONTROLLER_LOG, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", CONTROLLER, str(self.folder)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # started from a background job (`stemlab demo &`), this process ignores SIGINT, and so would the
                # controller and its tasks: SIGINT is how cancel stops them, so they get the default back
                preexec_fn=_default_sigint if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else None,
            )
        return LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(ntasks)))


def _default_sigint() -> None:
    """In a controller about to start: SIGINT back to its default (an ignored signal stays ignored across exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """True when the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def controller_alive(job_id: str, folder: Path, process=None) -> bool:
    """True while the local job's controller runs (its Popen when this process started it; otherwise
    the pid, which must still be a submitit controller of this submitit `folder`: a recycled pid does
    not count)."""
    if process is not None:
        return process.poll() is None
    try:
        pid = int(job_id)
    except ValueError:
        return False
    argv = _argv(pid)
    return alive(pid) and CONTROLLER in argv and os.path.realpath(argv[-1]) == os.path.realpath(folder)


def holds_open(pid: int, path: Path) -> bool:
    """True when process `pid` (of this user, on this machine) has `path` open."""
    target = os.path.realpath(path)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def interrupt_job(job_id: str, folder: Path, process=None) -> None:
    """SIGINT to a local job's controller (it stops its task; the run keeps its last checkpoint):
    through `process` (its Popen) when this process started it, else by pid when it is alive."""
    try:
        if process is not None:
            process.send_signal(signal.SIGINT)
        elif controller_alive(job_id, folder):
            os.kill(int(job_id), signal.SIGINT)
    except ProcessLookupError:
        pass


def stop_trainer(run_dir: Path) -> bool:
    """SIGINT to the live trainer of a run folder when it runs on this machine and holds its lock
    (a trainer that outlived its job's controller); True when one was signalled."""
    holder = rundir.lock_holder(run_dir) or {}
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    if not holds_open(pid, Path(run_dir) / rundir.LOCK):  # the record names a process that has it open
        return False
    try:
        os.kill(pid, signal.SIGINT)
    except (ProcessLookupError, PermissionError):
        return False
    return True

"""Local jobs (no SLURM): submitit's local executor with each job's controller in its own session,
and what this machine's process table says about a job or a trainer.

submitit starts one controller process per local job (`python -m submitit.local._local`), which
starts the training task. By default the controller shares the launching terminal's process group,
so a Ctrl-C meant for a waiting `sweep launch --wait` or `make demo` also reaches the controllers
(each prints a KeyboardInterrupt traceback and kills its task). Here the controller starts in a new
session: Ctrl-C stops only the waiting process, the jobs go on like SLURM jobs do, and
`Sweep.cancel()` (SIGINT to the controller, which stops its task) is how they are stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from submitit.local.local import LocalExecutor, LocalJob

CONTROLLER = "submitit.local._local"
CONTROLLER_LOG = "controllers.log"  # in the submitit folder: what the controllers themselves print


class DetachedLocalExecutor(LocalExecutor):
    """submitit's LocalExecutor whose job controllers start in their own session (see module doc)."""

    def _submit_command(self, command: str) -> LocalJob:
        ntasks = self.parameters.get("tasks_per_node", 1)
        gpus = range(self.parameters.get("gpus_per_node", 0))
        env = {**os.environ,
               "SUBMITIT_LOCAL_NTASKS": str(ntasks), "SUBMITIT_LOCAL_COMMAND": command,
               "SUBMITIT_LOCAL_TIMEOUT_S": str(int(60 * self.parameters.get("timeout_min", 2.0))),
               "SUBMITIT_LOCAL_SIGNAL_DELAY_S": str(int(self.parameters.get("signal_delay_s", 30))),
               "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
               "SUBMITIT_STDERR_TO_STDOUT": "", "SUBMITIT_EXECUTOR": "local",
               "CUDA_VISIBLE_DEVICES": ",".join(str(k) for k in gpus), "SUBMITIT_LOCAL_WITH_SHELL": ""}
        with open(Path(self.folder) / CONTROLLER_LOG, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", CONTROLLER, str(self.folder)], env=env,
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        return LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(ntasks)))


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

"""The local one-node SLURM cluster (scripts/slurm_local.sh) as a pytest fixture, plus sacct helpers.

`slurm_cluster` starts the cluster once per session (a no-op when it already runs) and leaves it running
afterwards: the next session, or another one running side by side, finds it ready at once. When the
script fails the fixture fails with the script's message; it never skips.
"""

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pytest
import submitit

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_local.sh"
START_TIMEOUT_S = 900  # a fresh machine first installs the Debian packages


@dataclass(frozen=True)
class SlurmCluster:
    """What tests need to know about the running cluster."""

    partition: str
    node: str
    cpus: int
    memory_mb: int
    state_dir: Path


def _run_script(command: str, timeout: float) -> str:
    """Run `slurm_local.sh COMMAND`; returns its stdout, fails the test with its message otherwise."""
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/slurm_local.sh {command} did not finish within {timeout:.0f} s", pytrace=False)
    if done.returncode != 0:
        message = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()
        pytest.fail(f"scripts/slurm_local.sh {command} failed: {message[-1]}", pytrace=False)
    return done.stdout


def _apply_env(text: str) -> None:
    """Apply the `export NAME=VALUE` lines printed by `slurm_local.sh env` to this process."""
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line[len("export ") :].split("=", 1)
            os.environ[name.strip()] = value.strip().strip("'\"")


def _sinfo(fields: str) -> list[str]:
    """Return the `sinfo` fields (a %-format) of the default partition's first node."""
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-o", fields], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return out.split("\n", 1)[0].split()


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """Start (or find) the local cluster; returns its partition, node name, CPUs and memory."""
    _run_script("start", START_TIMEOUT_S)
    _apply_env(_run_script("env", 30))
    partition, node, cpus, memory = _sinfo("%P %N %c %m")
    state_dir = Path(os.environ.get("STEMLAB_SLURM_DIR", "/var/tmp/stemlab-slurm"))
    return SlurmCluster(partition.rstrip("*"), node, int(cpus), int(memory), state_dir)


def slurm_executor(folder: Path | str, cluster: SlurmCluster, **parameters: Any) -> submitit.AutoExecutor:
    """Return a submitit AutoExecutor bound to the local cluster's partition.

    Jobs run with this interpreter (sys.executable) and can import the `analysis` and `tests` packages
    (the repository is put on their PYTHONPATH). `parameters` go to `update_parameters`; a 5 minute
    time limit and one CPU per task are the defaults.
    """
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    defaults: dict[str, Any] = dict(
        slurm_partition=cluster.partition,
        timeout_min=5,
        cpus_per_task=1,
        slurm_setup=[f"export PYTHONPATH={path}"],
    )
    executor.update_parameters(**{**defaults, **parameters})
    return executor


def sacct_states(job_id: str) -> list[str]:
    """Return the current sacct states of a job (one per allocation; one per element for an array id).

    States are the first word only ("CANCELLED by 0" -> "CANCELLED"); empty while sacct does not
    know the job yet.
    """
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def wait_for_state(job_id: str, states: Iterable[str] | str, timeout: float = 60.0) -> str:
    """Poll sacct until every allocation of `job_id` is in one of `states`; returns that state.

    `states` are sacct state names (RUNNING, COMPLETED, FAILED, CANCELLED, REQUEUED, ...). Raises
    TimeoutError naming the last states seen when `timeout` seconds pass first.
    """
    wanted = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        seen = sacct_states(job_id)
        if seen and all(state in wanted for state in seen):
            return seen[0]
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"job {job_id} not in {sorted(wanted)} after {timeout:.0f} s (sacct: {seen or 'unknown'})"
            )
        time.sleep(0.5)

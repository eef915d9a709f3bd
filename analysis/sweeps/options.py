"""Launch options: where and how a sweep's runs are launched, typed like the run config.

They come from a spec's `launch:` section, the keyword arguments of Sweep.launch()/resubmit() and
`--set launch.KEY=VALUE` on the command line; each key means one thing on both back-ends (SLURM
through submitit, and local processes). A *job* is one SLURM array task or one local process; it
trains its runs one after another.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

from analysis import config as C
from analysis.errors import ConfigError


@dataclass(frozen=True)
class LaunchConfig:
    cluster: Literal["auto", "slurm", "local"] | None = None  # None/"auto": SLURM when sinfo answers, else local
    # jobs at once; "auto" (local default): one per available core, and runs whose train.threads is null
    # train with floor(cores / jobs) threads (job_threads); SLURM default: no limit
    parallel: int | Literal["auto"] | None = None
    runs_per_job: int | None = None  # runs one job trains in turn (default: SLURM 1; local: enough for `parallel` jobs)
    batch_runs: int = 1  # compatible runs of a job trained together, stacked (analysis.engine.train.train_group)
    max_retries: int = 3  # resubmit() relaunches a run at most this often
    timeout_min: int = 24 * 60  # a job's time limit in minutes
    partition: str | None = None  # SLURM partition, account, QoS and node constraint
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    nodes: int | None = None
    tasks_per_node: int | None = None  # default: one task per GPU (DDP), else 1
    additional: dict | None = None  # extra sbatch options, e.g. {exclude: "node[1-2]", reservation: "x"}
    signal_delay_s: int = 120  # SLURM: USR2 this long before the time limit (checkpoint and requeue)
    name: str | None = None  # job name (default: the sweep's name)

    @classmethod
    def from_dict(cls, opts: dict | None) -> "LaunchConfig":
        """Check and type launch options like run config keys (analysis.config.typed: numbers in any
        spelling float() takes, `mem_gb: 1e2`, "2" from the command line, null words); a one-line
        ConfigError for an unknown option or a bad value."""
        out = C.typed_fields(cls, opts or {}, "launch option", "launch option ")
        for key, value in out.items():
            least = 0 if key == "gpus_per_node" else 1
            if isinstance(value, (int, float)) and value < least:
                raise ConfigError(f"launch option {key} must be >= {least}, got {value}")
        return cls(**out)

    def __post_init__(self) -> None:
        for key, value, high in (
            ("timeout_min", self.timeout_min, 14 * 24 * 60),
            ("max_retries", self.max_retries, 100),
        ):
            if isinstance(value, (int, float)) and value > high:
                warnings.warn(
                    f"launch option {key}={value:g} is far outside the usual range (at most {high})", stacklevel=3
                )

    def updated(self, **overrides) -> "LaunchConfig":
        """These options with keyword overrides (None values ignored), checked."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return LaunchConfig.from_dict({**self.to_dict(), **given}) if given else self

    def to_dict(self) -> dict[str, Any]:
        """The options that differ from their defaults (what launches.json records)."""
        default = LaunchConfig()
        return {k: v for k, v in asdict(self).items() if v != getattr(default, k)}

    def at_once(self, cluster: str) -> int | None:
        """Jobs at once: a number as given; "auto" (and, locally, no value) one per core this process
        may run on (os.sched_getaffinity); on SLURM no value or "auto" means no array limit (None)."""
        if isinstance(self.parallel, int):
            return self.parallel
        return available_cores() if cluster == "local" else None

    def job_threads(self, cluster: str, jobs: int) -> int | None:
        """torch threads for the runs of each of `jobs` jobs whose train.threads is null (an explicit
        number stays as given): locally with parallel "auto" (or unset) floor(available cores / jobs),
        at least 1, so the jobs share the cores instead of each taking them all; None otherwise (SLURM
        jobs use the CPUs allocated per task; an explicit parallel leaves torch's default)."""
        if cluster != "local" or isinstance(self.parallel, int):
            return None
        return max(1, available_cores() // max(jobs, 1))

    def jobs(self, runs: list, cluster: str) -> list[list]:
        """The runs split into jobs, in order: `runs_per_job` runs each (SLURM default 1); locally,
        where every job starts at once, `at_once` nearly equal jobs (capped by the run count) unless
        runs_per_job is given."""
        per = self.runs_per_job
        if per is None and cluster == "local":
            return split(runs, self.at_once(cluster))
        per = per or 1
        groups = [runs[i : i + per] for i in range(0, len(runs), per)]
        at_once = self.at_once(cluster) or 1
        if cluster == "local" and len(groups) > at_once:
            raise ConfigError(
                f"local jobs all start at once: runs_per_job={per} makes {len(groups)} jobs of {len(runs)} runs, "
                f"over parallel={at_once}; raise runs_per_job or parallel (or leave runs_per_job out locally)"
            )
        return groups

    def executor_params(self, cluster: str, name: str) -> dict:
        """The submitit executor parameters on `cluster` ("slurm" or "local"), `name` the default job
        name: what update_parameters() receives, and for SLURM what reaches the sbatch script."""
        params: dict[str, Any] = {
            "name": self.name or name,
            "timeout_min": self.timeout_min,
            "tasks_per_node": self.tasks_per_node or max(self.gpus_per_node, 1),
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if cluster != "slurm":
            return params
        slurm = {
            "slurm_partition": self.partition,
            "slurm_account": self.account,
            "slurm_qos": self.qos,
            "slurm_constraint": self.constraint,
            "slurm_additional_parameters": self.additional,
            "cpus_per_task": self.cpus_per_task,
            "mem_gb": self.mem_gb,
            "nodes": self.nodes,
            "slurm_array_parallelism": self.at_once(cluster),
        }
        params.update({k: v for k, v in slurm.items() if v is not None})
        params["slurm_signal_delay_s"] = self.signal_delay_s
        return params


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; os.cpu_count() where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def split(items: list, n: int) -> list[list]:
    """Split into n contiguous, nearly equal, non-empty parts (fewer if there are fewer items)."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    out, i = [], 0
    for k in range(n):
        j = i + size + (k < extra)
        out.append(items[i:j])
        i = j
    return [part for part in out if part]

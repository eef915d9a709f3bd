"""What one sweep job does: train its run directories, one chunk after another.

    run_group(["sweeps/s/runs/0000-...", "sweeps/s/runs/0001-..."], batch_runs=8)

Complete runs are skipped. With batch_runs > 1, compatible runs (equal in everything
analysis.engine.backends.SHARED lists) train together as one stacked group of up to batch_runs; the rest
train one at a time. A failing run is recorded in its run directory (result.json "failed") and the
job goes on; it fails at the end if any run failed. A run folder another live process is training
(its lock is held) is left alone.

Preemption/timeout: a USR2 handler asks the running Trainer (one run or a stacked group) to stop;
it checkpoints every run at the next step and raises Stopped; then submitit's own handler is
called, which checkpoints this job (a resubmission of the same call), requeues it and exits. Under
several tasks (one per GPU) torch.distributed is initialised from submitit's environment and the
engine trains with DDP.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from analysis import config, rundir
from analysis.engine.backends import check_compatible, shared_key
from analysis.errors import ConfigError
from analysis.engine.train import Stopped, Trainer


class RunsFailed(RuntimeError):
    """Raised at the end of a group in which some runs failed."""


class Preemption:
    """Context manager: USR2 -> request_stop() on the current trainer; hand_over() then calls the
    handler that was installed before (submitit's checkpoint-and-requeue)."""

    def __init__(self, signum: int = signal.SIGUSR2):
        self.signum = signum
        self.trainer: Trainer | None = None
        self.requested = False
        self._frame = None
        self._previous = None

    def __enter__(self) -> "Preemption":
        self._previous = signal.signal(self.signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)

    def _handle(self, signum, frame) -> None:
        print(f"caught signal {signal.Signals(signum).name}: stopping at the next step", flush=True)
        self.requested = True
        self._frame = frame
        if self.trainer is not None:
            self.trainer.request_stop()

    def hand_over(self) -> None:
        """Call the previous handler (submitit's requeues and exits); without one, raise Stopped."""
        previous = self._previous
        signal.signal(self.signum, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(self.signum, self._frame)
        raise Stopped("stopped for preemption")


def job_env():
    """submitit's JobEnvironment when running inside a submitit job, else None."""
    import submitit

    if not any(k.startswith(("SUBMITIT_", "SLURM_JOB_ID")) for k in os.environ):
        return None
    try:
        return submitit.JobEnvironment()
    except RuntimeError:
        return None


def init_distributed(env) -> int:
    """Initialise torch.distributed from submitit's environment when the job has several tasks;
    return this task's global rank (0 when single-task)."""
    if env is None or env.num_tasks <= 1:
        return 0
    import submitit
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=torch.cuda.is_available())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank()


def compatible_key(cfg: config.RunConfig) -> tuple | None:
    """Runs with equal keys can train as one stacked group; None when this run cannot be stacked."""
    try:
        check_compatible([cfg, cfg])
    except ConfigError:
        return None
    return shared_key(cfg)


def plan(run_dirs: list[str], batch_runs: int) -> list[list[str]]:
    """Split the unfinished run dirs into chunks: singles, or compatible chunks of up to batch_runs
    (in their given order)."""
    todo = [d for d in run_dirs if not rundir.is_complete(d)]
    if batch_runs <= 1:
        return [[d] for d in todo]
    groups: dict[tuple, list[str]] = {}
    for i, d in enumerate(todo):
        key = compatible_key(config.load(Path(d) / rundir.CONFIG))
        groups.setdefault(key if key is not None else ("solo", i), []).append(d)
    chunks = []
    for members in groups.values():
        chunks += [members[i : i + batch_runs] for i in range(0, len(members), batch_runs)]
    return sorted(chunks, key=lambda c: todo.index(c[0]))


def default_threads(threads: int | None = None) -> None:
    """Set the torch threads of runs whose config leaves train.threads null: `threads` (a local job's
    share of the cores), else under SLURM the CPUs allocated per task (more threads than CPUs slow CPU
    training down badly); else torch's default stands. Called before each chunk, since a run that sets
    train.threads changes them for the whole process."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    n = threads or (int(cpus) if cpus and cpus.isdigit() else None)
    if n:
        import torch

        torch.set_num_threads(n)


def run_group(run_dirs: list[str], batch_runs: int = 1, threads: int | None = None) -> dict[str, str]:
    """Train each run directory (its config.yaml), in stacked chunks where batch_runs > 1; return
    {run_dir: final status}. threads: torch threads of runs that leave train.threads null (see
    default_threads). Raises RunsFailed when any run failed (after trying all of them)."""
    env = job_env()
    rank = init_distributed(env)
    job = {"job_id": env.job_id if env is not None else None, "host": socket.gethostname(), "pid": os.getpid()}
    results = {d: rundir.read_result(d) for d in run_dirs}
    statuses = {d: r["status"] for d, r in results.items() if rundir.is_final(r)}
    with Preemption() as stop:
        for chunk in plan(run_dirs, batch_runs):
            if stop.requested:
                stop.hand_over()
            started = time.time()
            default_threads(threads)
            try:
                stop.trainer = Trainer([config.load(Path(d) / rundir.CONFIG) for d in chunk], chunk, job=job)
                if stop.requested:  # the signal came while the trainer was being made
                    stop.trainer.request_stop()
                results = stop.trainer.run()
                statuses.update({d: r["status"] for d, r in zip(chunk, results) if r is not None})
            except Stopped:
                stop.hand_over()
            except rundir.RunLocked as e:  # another live trainer owns the folder: not ours to record
                print(f"skipped: {e}", flush=True)
            except Exception as e:  # noqa: BLE001 - recorded per run, the job goes on
                import traceback

                print(f"chunk {', '.join(Path(d).name for d in chunk)} failed:\n{traceback.format_exc()}", flush=True)
                for d in chunk:
                    statuses[d] = _record_failure(d, e, rank, started)
            finally:
                stop.trainer = None
    failed = sorted(Path(d).name for d, s in statuses.items() if s == "failed")
    if failed:
        raise RunsFailed(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their log.txt)")
    return statuses


def _record_failure(run_dir: str, error: Exception, rank: int, since: float) -> str:
    """The run's final status after its chunk raised: the result the engine wrote in this attempt
    (a finished member of a failed chunk keeps its own), else "failed" with this error, recorded
    unless another live trainer holds the folder."""
    result = rundir.read_result(run_dir)
    status = (result or {}).get("status")
    if rundir.is_final(result):
        return status
    if status == "failed" and (Path(run_dir) / rundir.RESULT).stat().st_mtime >= since:
        return status
    if rank == 0 and rundir.lock_holder(run_dir) is None:
        rundir.record_failure(run_dir, error)
    return "failed"


def read_job_file(run_dir: str | Path) -> dict:
    """The run's job.json: which sweep job trains (or last trained) it, from which host and pid."""
    return rundir.read_json(Path(run_dir) / rundir.JOB) or {}

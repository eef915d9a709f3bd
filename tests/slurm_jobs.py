"""Functions the SLURM tests submit: importable by the job process (it imports them by name)."""

import os
import time
from pathlib import Path

import submitit


def add(a: int, b: int) -> int:
    """Return a + b."""
    return a + b


def square_with_task(x: int) -> tuple[int, int]:
    """Return (x * x, this job's array task id)."""
    return x * x, int(submitit.JobEnvironment().array_task_id)


def rank_info() -> tuple[int, int, str]:
    """Return (global rank, number of tasks, job id) as seen by one task of the job."""
    env = submitit.JobEnvironment()
    return env.global_rank, env.num_tasks, str(env.job_id)


def sleep_with_pid(pid_file: str, seconds: float) -> float:
    """Write this process's pid to `pid_file`, then sleep; returns the seconds slept."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    return seconds


class Counter(submitit.helpers.Checkpointable):
    """Counts up and logs each step to a file until requeued once; returns (restarts, resumed_from).

    On preemption submitit calls checkpoint(), which hands the count reached so far to the requeued run.
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, log_file: str, start: int = 0) -> tuple[int, int]:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        self.count = start
        if restarts > 0:
            return restarts, start
        for _ in range(600):  # until interrupted; returns after 2 minutes at most
            self.count += 1
            with open(log_file, "a") as log:
                log.write(f"{self.count}\n")
            time.sleep(0.2)
        return restarts, -1

    def checkpoint(self, log_file: str, start: int = 0) -> submitit.helpers.DelayedSubmission:
        """Return the submission that resumes from the count reached."""
        return submitit.helpers.DelayedSubmission(Counter(), log_file, self.count)

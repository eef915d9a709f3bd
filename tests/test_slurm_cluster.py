"""Jobs through submitit against the real local SLURM cluster: results, arrays, cancel, kill, requeue, tasks."""

import subprocess
import threading
import time
from typing import Any

import pytest
import submitit

from tests import slurm_jobs
from tests.fixtures_slurm import sacct_states, slurm_executor, wait_for_state

pytestmark = pytest.mark.slurm


def result_within(job: submitit.Job, timeout: float, every_task: bool = False) -> tuple[str, Any]:
    """Call job.result() (job.results() if `every_task`) in a thread; returns ("ok", value) or ("raised", error).

    Fails the test when the call is still blocked after `timeout` seconds.
    """
    outcome: list[tuple[str, Any]] = []

    def target() -> None:
        try:
            outcome.append(("ok", job.results() if every_task else job.result()))
        except Exception as error:  # noqa: BLE001 - the caller inspects it
            outcome.append(("raised", error))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        pytest.fail(
            f"job {job.job_id}: result() still blocked after {timeout:.0f} s (sacct: {sacct_states(job.job_id)})"
        )
    return outcome[0]


def wait_until(condition, timeout: float, what: str) -> None:
    """Poll `condition()` every 0.2 s; fails the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not seen after {timeout:.0f} s")
        time.sleep(0.2)


def test_function_job_returns_its_result(slurm_cluster, tmp_path):
    job = slurm_executor(tmp_path, slurm_cluster).submit(slurm_jobs.add, 2, 3)
    assert result_within(job, 120) == ("ok", 5)
    assert wait_for_state(job.job_id, {"COMPLETED", "FAILED", "CANCELLED"}, 30) == "COMPLETED"
    assert job.get_info(mode="force")["State"] == "COMPLETED"


def test_job_array_of_three(slurm_cluster, tmp_path):
    jobs = slurm_executor(tmp_path, slurm_cluster).map_array(slurm_jobs.square_with_task, [1, 2, 3])
    assert len({job.job_id.split("_")[0] for job in jobs}) == 1, "one array, not three jobs"
    results = [result_within(job, 120) for job in jobs]
    assert results == [("ok", (1, 0)), ("ok", (4, 1)), ("ok", (9, 2))]
    for job in jobs:
        assert wait_for_state(job.job_id, "COMPLETED", 30) == "COMPLETED"


def test_cancelled_job(slurm_cluster, tmp_path):
    pid_file = tmp_path / "pid"
    job = slurm_executor(tmp_path, slurm_cluster).submit(slurm_jobs.sleep_with_pid, str(pid_file), 120)
    wait_until(pid_file.exists, 60, f"job {job.job_id} running")
    job.cancel()
    assert wait_for_state(job.job_id, {"CANCELLED", "COMPLETED", "FAILED"}, 60) == "CANCELLED"
    assert job.get_info(mode="force")["State"].startswith("CANCELLED")
    assert job.done()


@pytest.mark.slow  # result() waits 15 s for a result file before it raises
def test_job_killed_from_outside_fails_and_result_raises(slurm_cluster, tmp_path):
    pid_file = tmp_path / "pid"
    job = slurm_executor(tmp_path, slurm_cluster).submit(slurm_jobs.sleep_with_pid, str(pid_file), 120)
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 60, f"job {job.job_id} pid file")
    # SIGKILL: Python gets no chance to write a result; only SLURM's accounting knows what happened.
    subprocess.run(["kill", "-KILL", pid_file.read_text().strip()], check=True)
    state = wait_for_state(job.job_id, {"FAILED", "CANCELLED", "COMPLETED", "OUT_OF_MEMORY", "NODE_FAIL"}, 60)
    assert state == "FAILED"
    kind, error = result_within(job, 90)
    assert kind == "raised" and isinstance(error, submitit.core.utils.UncompletedJobError)
    assert "FAILED" in str(error)


@pytest.mark.slow
def test_preempted_checkpointable_job_is_requeued_and_resumes(slurm_cluster, tmp_path):
    log_file = tmp_path / "counts.txt"
    job = slurm_executor(tmp_path, slurm_cluster).submit(slurm_jobs.Counter(), str(log_file))

    def counted() -> int:
        return len(log_file.read_text().split()) if log_file.exists() else 0

    wait_until(lambda: counted() >= 3, 60, f"job {job.job_id} counting")
    # preemption as SLURM does it: SIGTERM to the job's steps (submitit lets it pass), then USR2. USR2 is
    # sent once the job has logged the SIGTERM: sent back to back (submitit's job._interrupt()), a loaded
    # machine can deliver USR2 first, and the late SIGTERM then kills the `scontrol requeue` it started
    subprocess.check_call(["scancel", job.job_id, "--signal", "SIGTERM"])
    stdout = job.paths.stdout
    wait_until(lambda: stdout.exists() and "Bypassing signal SIGTERM" in stdout.read_text(), 30, "the SIGTERM")
    subprocess.check_call(["scancel", job.job_id, "--signal", "USR2"])
    # The requeued job waits (AuthInfo=cred_expire, 20 s here) before it starts again.
    wait_for_state(job.job_id, {"REQUEUED", "PENDING"}, 30)
    reached = counted()  # the first run stopped counting before it requeued itself
    kind, (restarts, resumed_from) = result_within(job, 150)
    assert (kind, restarts) == ("ok", 1)
    # checkpoint() saw the count reached (one more if the signal came between counting and logging)
    assert resumed_from in (reached, reached + 1) and resumed_from >= 3
    assert wait_for_state(job.job_id, "COMPLETED", 30) == "COMPLETED"


def test_two_tasks_run_with_ranks_zero_and_one(slurm_cluster, tmp_path):
    if slurm_cluster.cpus < 2:
        pytest.fail(f"the node has {slurm_cluster.cpus} CPU; two tasks need two")
    job = slurm_executor(tmp_path, slurm_cluster, tasks_per_node=2).submit(slurm_jobs.rank_info)
    kind, results = result_within(job, 120, every_task=True)
    assert kind == "ok", results
    ranks = sorted(results)
    assert [rank for rank, _, _ in ranks] == [0, 1]
    assert {(tasks, job_id) for _, tasks, job_id in ranks} == {(2, job.job_id)}
    assert wait_for_state(job.job_id, "COMPLETED", 30) == "COMPLETED"

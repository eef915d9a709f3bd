"""Sweeps on the real local SLURM cluster: states as they happen, cancel/kill/resubmit, preemption
with requeue and resume, two-task DDP."""

import os
import signal
import subprocess
import time

import pytest

from analysis import rundir
from analysis.config import RunConfig
from analysis.sweeps import Sweep, collect
from analysis.sweeps.job import read_job_file
from analysis.engine.train import train, train_group

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = {
    "data": {"train_per_class": 30, "test_per_class": 10},
    "train": {"epochs": 1, "batch_size": 50, "precision": "fp32", "progress": "lines", "threads": 1},
}
LONGER = {
    "data": {"train_per_class": 100, "test_per_class": 10},
    "train": {
        "epochs": 2,
        "batch_size": 50,
        "precision": "fp32",
        "progress": "lines",
        "threads": 1,
        "checkpoint_minutes": 0,
    },
}


def launch_opts(cluster, **extra):
    return {"cluster": "slurm", "partition": cluster.partition, "cpus_per_task": 1, "timeout_min": 10, **extra}


def watch(sweep, until, timeout: float, poll: float = 0.5) -> dict[str, set[str]]:
    """Poll status until `until(status)`; return every state seen per run."""
    seen: dict[str, set[str]] = {}
    deadline = time.monotonic() + timeout
    while True:
        status = sweep.status()
        for run, state in zip(status["run"], status["state"]):
            seen.setdefault(run, set()).add(state)
        if until(status):
            return seen
        assert time.monotonic() < deadline, f"timed out; states seen: {seen}"
        time.sleep(poll)


def test_slurm_sweep_states_and_collect(tmp_path, slurm_cluster, monkeypatch):
    """pending -> running -> completed/failed, seen whatever the machine's speed: the runs' stem is
    built only once the test opens a gate file (tests.user_stems:gated_two_conv), and the array runs
    two tasks at once, so the third waits in the queue while the first two hold still in `running`."""
    gate = tmp_path / "gate"
    monkeypatch.setenv("STEMLAB_TEST_GATE", str(gate))  # sbatch passes the environment to the jobs
    spec = {
        "name": "small",
        "base": {**TINY, "model": {"stem": "tests.user_stems:gated_two_conv"}},
        "launch": launch_opts(slurm_cluster, parallel=2),
        "grid": {
            "run": [
                {"preset": "vit_p_fmnist_tiny", "optimizer": "adamw"},
                {"preset": "vit_c_fmnist_tiny", "optimizer": "sgd"},
                {"preset": "vit_c_fmnist_tiny", "optimizer": "adamw", "train.batch_size": 1000},
            ]
        },
    }
    sweep = Sweep.from_dict(spec, root=tmp_path)
    ids = sweep.launch()
    assert len(ids) == 3 and len({i.split("_")[0] for i in ids}) == 1  # one job array
    first, third = sweep.run_ids[:2], sweep.run_ids[2]

    def held(s):
        state = dict(zip(s["run"], s["state"]))
        return all(state[r] == "running" for r in first) and state[third] == "pending"

    seen = watch(sweep, held, timeout=240)
    gate.touch()
    seen_after = watch(sweep, lambda s: not s["state"].isin(["pending", "running"]).any(), timeout=240)
    final = sweep.status().set_index("run")
    ok, bad = ["0000-vit_p_fmnist_tiny-adamw", "0001-vit_c_fmnist_tiny-sgd"], "0002-vit_c_fmnist_tiny-adamw"
    assert list(final.loc[ok, "state"]) == ["completed", "completed"] and final.loc[bad, "state"] == "failed"
    assert "exceeds" in final.loc[bad, "log_tail"]
    every = set().union(*seen.values(), *seen_after.values())
    assert {"pending", "running", "completed", "failed"} <= every, (seen, seen_after)
    frame = collect(sweep.dir).set_index("run")
    assert list(frame.loc[ok, "status"]) == ["completed", "completed"] and frame.loc[bad, "status"] == "failed"
    assert frame.loc[ok, "error"].between(0, 100).all()


def test_slurm_cancel_and_kill_then_resubmit(tmp_path, slurm_cluster):
    # scancel sends SIGTERM, which submitit lets pass, then SIGKILL KillWait (5 s) later: the runs must
    # train well past that window, or a run cancelled near its end completes (and rightly reads COMPLETED)
    base = {**LONGER, "train": {**LONGER["train"], "epochs": 6}}
    spec = {
        "name": "cancel",
        "base": base,
        "launch": launch_opts(slurm_cluster),
        "grid": {"preset": ["vit_p_fmnist_tiny", "vit_c_fmnist_tiny"]},
    }
    sweep = Sweep.from_dict(spec, root=tmp_path)
    sweep.launch()
    watch(sweep, lambda s: (s["state"] == "running").all(), timeout=180)
    cancelled, killed = sweep.run_ids
    assert len(sweep.cancel(runs=[cancelled])) == 1
    os.kill(read_job_file(sweep.run_dir(killed))["pid"], signal.SIGKILL)  # dies outside Python
    status = sweep.wait(timeout=120, poll=0.5).set_index("run")  # returns: no waiting forever
    assert status.loc[cancelled, "state"] == "cancelled" and status.loc[killed, "state"] == "failed"
    assert not rundir.is_complete(sweep.run_dir(killed))
    assert len(sweep.resubmit()) == 2
    final = sweep.wait(timeout=300, poll=1)
    assert list(final["state"]) == ["completed", "completed"] and list(final["attempts"]) == [2, 2]


def test_slurm_preempted_run_requeues_and_resumes(tmp_path, slurm_cluster):
    spec = {"name": "preempt", "base": LONGER, "launch": launch_opts(slurm_cluster)}
    sweep = Sweep.from_dict(spec, root=tmp_path)
    (job_id,) = sweep.launch()
    run_dir = sweep.run_dir(sweep.run_ids[0])
    log = run_dir / rundir.LOG
    deadline = time.monotonic() + 180
    while not (log.exists() and " start " in log.read_text()):
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    reference = tmp_path / "uninterrupted"  # trained here while the job requeues
    train(RunConfig().replace({f"{s}.{k}": v for s, sec in LONGER.items() for k, v in sec.items()}), reference)
    final = sweep.wait(timeout=300, poll=1)
    assert final["state"][0] == "completed" and final["job_id"][0] == job_id  # same job, requeued
    text = log.read_text()
    assert "stopped and checkpointed" in text and "resumed at" in text
    sacct = wait_for_sacct(job_id)  # the run is complete; its job is ending
    assert "REQUEUED" in sacct and sacct[-1] == "COMPLETED", sacct
    a, b = rundir.read_metrics(reference), rundir.read_metrics(run_dir)
    for key in ("train_loss", "test_top1_err", "test_top5_err"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-5)


def wait_for_sacct(job_id: str, final: str = "COMPLETED", timeout: float = 60) -> list[str]:
    """The job's accounting states (requeues included) once its last one is `final`."""
    deadline = time.monotonic() + timeout
    while True:
        sacct = subprocess.run(
            ["sacct", "-j", job_id, "-D", "-X", "-n", "-P", "-o", "State"], capture_output=True, text=True
        ).stdout.split()
        if sacct[-1:] == [final] or time.monotonic() > deadline:
            return sacct
        time.sleep(0.5)


def test_slurm_preempted_stacked_chunk_requeues_and_resumes(tmp_path, slurm_cluster):
    """Three runs (AdamW and SGD) stacked in one job: USR2 checkpoints all three at the next step, the
    job requeues, and the resumed chunk ends with the metrics of an uninterrupted chunk."""
    spec = {
        "name": "preempt_stacked",
        "base": LONGER,
        "launch": launch_opts(slurm_cluster, runs_per_job=3, batch_runs=3),
        "grid": {
            "optimizer": [
                {"optim.name": "adamw", "optim.lr": 1e-3},
                {"optim.name": "adamw", "optim.lr": 3e-3},
                {"optim.name": "sgd", "optim.lr": 0.5},
            ]
        },
    }
    sweep = Sweep.from_dict(spec, root=tmp_path)
    (job_id,) = sweep.launch()
    logs = [sweep.run_dir(r) / rundir.LOG for r in sweep.run_ids]
    deadline = time.monotonic() + 180
    while not all(log.exists() and "(stacked, 3 runs)" in log.read_text() for log in logs):
        assert time.monotonic() < deadline, "the stacked chunk did not start"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    reference = [tmp_path / f"uninterrupted{i}" for i in range(3)]  # trained here while the job requeues
    train_group([sweep.configs[r] for r in sweep.run_ids], reference)
    final = sweep.wait(timeout=300, poll=1)
    assert list(final["state"]) == ["completed"] * 3 and set(final["job_id"]) == {job_id}
    for log in logs:
        text = log.read_text()
        assert "stopped and checkpointed" in text and "resumed at" in text and text.count(" start ") == 1
    sacct = wait_for_sacct(job_id)
    assert "REQUEUED" in sacct and sacct[-1] == "COMPLETED", sacct
    for ref, run in zip(reference, sweep.run_ids):
        a, b = rundir.read_metrics(ref), rundir.read_metrics(sweep.run_dir(run))
        assert [r["epoch"] for r in b] == [1, 2]
        for key in ("train_loss", "test_top1_err", "test_top5_err", "lr", "step"):
            assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-5), key


def test_slurm_two_task_ddp(tmp_path, slurm_cluster):
    spec = {"name": "ddp", "base": TINY, "launch": launch_opts(slurm_cluster, tasks_per_node=2)}
    sweep = Sweep.from_dict(spec, root=tmp_path)
    sweep.launch()
    final = sweep.wait(timeout=240, poll=1)
    assert final["state"][0] == "completed", final["log_tail"][0]
    assert "processes=2" in (sweep.run_dir(sweep.run_ids[0]) / rundir.LOG).read_text()
    assert collect(sweep.dir)["status"][0] == "completed"

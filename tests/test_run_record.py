"""One run folder, one state word: Sweep.status(), collect() and the monitor read runs through the
same RunRecord (analysis.rundir.reader) and name their states from its one table.

The folders are written the way a trainer writes them (metrics lines, job.json, result.json, the
training lock held by a live process), and the local jobs on record are real processes that have
ended, so every state here is reached deterministically, whatever the machine's speed.
"""

from __future__ import annotations

import re
import subprocess

from analysis import rundir
from analysis.rundir.lock import RunLock
from analysis.rundir.reader import STATE_TABLE, RunRecord, run_state
from analysis.sweeps import Sweep, collect
from analysis.sweeps.watch import SweepWatcher
from analysis.widgets import SweepMonitor
from analysis.widgets.monitor import runs_table_html


def ended_pid() -> str:
    """The pid of a process that has ended: a local job whose controller is gone."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return str(proc.pid)


def metrics_row(epoch: int) -> dict:
    return {"epoch": epoch, "step": 5 * epoch, "train_loss": 2.0, "test_top1_err": 60.0, "elapsed": 2.0 * epoch}


def result(status: str, err: float) -> dict:
    return {"status": status, "top1_err": err, "best_top1_err": err, "top5_err": 5.0, "reason": None, "epoch": 2}


def sweep_of_six(root) -> Sweep:
    spec = {
        "name": "six_states",
        "grid": {"optim.lr": [1e-3, 2e-3, 3e-3], "optim.name": ["adamw", "sgd"]},
        "base": {"model": {"preset": "vit_c_fmnist_tiny"}, "train": {"epochs": 2, "threads": 1}},
        "launch": {"cluster": "local"},
    }
    return Sweep.from_dict(spec, root=root)


def write_states(sweep: Sweep) -> tuple[dict[str, str], RunLock]:
    """Six runs in six states; returns {run: expected word} and the lock that keeps one running."""
    done, div, live, failed, cancelled, fresh = sweep.run_ids
    ended, stopped = ended_pid(), ended_pid()
    for run, job in ((done, ended), (div, ended), (live, ended), (failed, ended), (cancelled, stopped)):
        rundir.write_json(sweep.run_dir(run) / rundir.JOB, {"job_id": job, "started": 1.0})
        rundir.append_metrics(sweep.run_dir(run), metrics_row(1))
    rundir.write_json(sweep.run_dir(done) / rundir.RESULT, result("completed", 30.0))
    rundir.write_json(sweep.run_dir(div) / rundir.RESULT, {**result("diverged", 100.0), "reason": "nan loss"})
    (sweep.run_dir(failed) / rundir.LOG).write_text("epoch 1\nRuntimeError: out of memory\n")
    lock = RunLock(sweep.run_dir(live)).acquire()  # a live trainer: running, whatever its job says
    launch = {"launch": 0, "time": "2026-01-01T00:00:00", "cluster": "local", "code": "", "options": {}}
    sweep._save_launches(
        [
            {**launch, "jobs": [{"job_id": ended, "runs": [done, div, live, failed]}], "cancelled": []},
            {**launch, "launch": 1, "jobs": [{"job_id": stopped, "runs": [cancelled]}], "cancelled": [stopped]},
        ]
    )
    expected = {
        done: "completed",
        div: "diverged",
        live: "running",
        failed: "failed",
        cancelled: "cancelled",
        fresh: "not_launched",
    }
    return expected, lock


def monitor_words(html: str) -> dict[str, str]:
    """{run: state} from the monitor's runs table (first two cells of each row)."""
    return dict(re.findall(r"<tr[^>]*><td>([^<]+)</td><td>([a-z_]+)</td>", html))


def test_one_folder_reads_the_same_state_in_status_collect_and_the_monitor(tmp_path):
    sweep = sweep_of_six(tmp_path)
    expected, lock = write_states(sweep)
    try:
        status = dict(zip(sweep.status()["run"], sweep.status()["state"]))
        collected = collect(sweep.dir, cache=False)
        by_collect = dict(zip(collected["run"], collected["state"]))
        watcher = SweepWatcher(sweep)
        watcher.refresh()
        by_watcher = {run: r.state for run, r in watcher.runs.items()}
        monitor = SweepMonitor(sweep, start=False)
        by_monitor = monitor_words(runs_table_html(monitor.watcher, "all", max_rows=50))
    finally:
        lock.release()
    assert status == expected
    assert by_collect == expected
    assert by_watcher == expected
    assert by_monitor == expected
    # collect's own status column keeps its coarser words, derived from the same state
    coarse = dict(zip(collected["run"], collected["status"]))
    assert [coarse[r] for r in sweep.run_ids] == ["completed", "diverged", "running", "failed", "failed", "pending"]


def test_the_state_machine_names_every_word_in_the_one_table():
    cases = [
        ((None, True, False), "completed"),
        (("FAILED", False, False, True), "running"),  # a live trainer's lock outranks its job's state
        ((None, False, False), "not_launched"),
        (("RUNNING", False, True), "running"),
        (("RUNNING", False, False), "pending"),  # its job runs another run first
        (("PENDING", False, False), "pending"),
        (("COMPLETED", False, True), "failed"),  # the job ended, the run did not finish
        (("CANCELLED", False, True), "cancelled"),
        (("TIMEOUT", False, True), "timeout"),
    ]
    for args, word in cases:
        assert run_state(*args) == word and word in STATE_TABLE
    assert run_state(None, True, False, diverged=True) == "diverged"


def test_a_record_reads_only_what_changed(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = RunRecord("run", run_dir, epochs=2)
    assert not record.read()
    rundir.append_metrics(run_dir, metrics_row(1))
    assert record.read() and record.epoch == 1 and record.steps_per_epoch == 5
    assert not record.read()  # nothing moved: nothing read
    rundir.write_json(run_dir / rundir.RESULT, result("completed", 25.0))
    assert record.read() and record.final and record.settle(None, None) == "completed"


def test_rows_with_non_numbers_are_left_out_and_the_record_still_reads(tmp_path):
    """A metrics row is a folder's data: a step or elapsed that is text, negative or a bool is not a row,
    and the record's progress and steps per epoch read the valid rows only."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rundir.append_metrics(run_dir, metrics_row(1))
    for bad in ({"step": "5"}, {"elapsed": "soon"}, {"step": -5}, {"elapsed": True}, {"lr": "x"}):
        rundir.append_metrics(run_dir, {**metrics_row(2), **bad})
        assert not rundir.metric_row_ok({**metrics_row(2), **bad}), bad
    assert rundir.metric_row_ok({**metrics_row(2), "train_loss": None, "elapsed": None})
    record = RunRecord("run", run_dir, epochs=2)
    record.read()
    assert [r["epoch"] for r in record.rows] == [1] and record.steps_per_epoch == 5
    record.settle(None, None)
    assert record.progress() == (0.5, 0.5)

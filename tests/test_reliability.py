"""Sweep folders shared with others, broken run files, orphaned trainers, bad --set values, Ctrl-C.

Security tests plant files that would create a marker file if anything unpickled them, and check
that no marker appears. Orphaned-trainer tests use a real process holding the run folder's real
training lock (analysis.rundir.RunLock, the engine's contract) in place of the engine's trainer.
"""

import ast
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis import rundir
from analysis.config import RunConfig
from analysis.sweeps import Sweep, collect
from analysis.sweeps.local import alive
from tests.test_sweeps import SMALL, _fake_run

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
DONE = {
    "status": "completed",
    "reason": None,
    "epoch": 1,
    "step": 12,
    "top1_err": 40.0,
    "top5_err": 5.0,
    "best_top1_err": 39.0,
    "ema_top1_err": None,
    "params": 1000,
    "flops": 5000,
    "seconds": 3.0,
}


class Payload:
    """Unpickling this creates the marker file: the proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def four_runs(root: Path, name: str = "shared") -> Sweep:
    spec = {
        "name": name,
        "base": SMALL,
        "grid": {"preset": ["vit_p_fmnist_tiny", "vit_c_fmnist_tiny"], "optimizer": ["adamw", "sgd"]},
        "launch": {"cluster": "local"},
    }
    return Sweep.from_dict(spec, root=root)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def record_local_job(sweep: Sweep, job_id: int, runs: list[str]) -> None:
    record = rundir.launch_record(0, "local", [(str(job_id), runs)], "", "submitit", {}, when="2025-01-01T00:00:00")
    sweep._save_launches([record])


def planted_sweep(tmp_path: Path) -> tuple[Sweep, Path]:
    """A sweep with 3 finished runs and 1 without a result whose local job ended, and pickles
    planted where collect (its cache) and status (submitit's job result) used to unpickle."""
    from submitit.core.utils import JobPaths

    marker = tmp_path / "marker"
    sweep = four_runs(tmp_path / "sweeps")
    for run in sweep.run_ids[:3]:
        _fake_run(sweep.run_dir(run), sweep.configs[run], 1, DONE)
    job = dead_pid()
    record_local_job(sweep, job, sweep.run_ids)
    payload = pickle.dumps(Payload(marker))
    (sweep.dir / ".collect_cache.pkl").write_bytes(payload)
    result = JobPaths(sweep.dir / "submitit", str(job), 0).result_pickle
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_bytes(payload)
    return sweep, marker


# -- no code from a shared sweep folder ----------------------------------------------------------
def test_collect_and_status_never_unpickle(tmp_path):
    sweep, marker = planted_sweep(tmp_path)
    frame = collect(sweep.dir)
    status = Sweep.open(sweep.dir).status()
    assert not marker.exists()
    assert list(frame["status"]) == ["completed"] * 3 + ["failed"]
    assert list(status["state"]) == ["completed"] * 3 + ["failed"]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sweep collect", "sweep status", "report"])
def test_cli_collect_report_status_never_unpickle(tmp_path, command):
    sweep, marker = planted_sweep(tmp_path)
    extra = ["--no-probes", "--out", str(tmp_path / "r.html")] if command == "report" else []
    out = subprocess.run(
        [sys.executable, "-m", "analysis", *command.split(), str(sweep.dir), *extra],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert not marker.exists()


def _import_targets(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_no_import_circle_in_sweeps():
    """launch.py uses spec, status and results; none of them imports launch (not even inside a function)."""
    folder = REPO / "analysis" / "sweeps"
    for name in ("results.py", "spec.py", "status.py", "local.py"):
        assert "analysis.sweeps.launch" not in _import_targets(folder / name), name
    assert "pickle" not in _import_targets(folder / "results.py") | _import_targets(folder / "status.py")


def _typed(frame: pd.DataFrame) -> list:
    return [
        [(type(v).__name__, "nan" if isinstance(v, float) and v != v else v) for v in row]
        for row in frame.itertuples(index=False)
    ]


@pytest.mark.filterwarnings("ignore:.*unreadable")
def test_json_cache_rows_equal_fresh_rows_and_follow_the_folder(tmp_path):
    cfg = RunConfig().replace({"train.epochs": 3, "optim.clip_grad": 1.0})
    folder = tmp_path / "runs"
    _fake_run(folder / "done", cfg, 3, {**DONE, "ema_top1_err": 38.5})
    _fake_run(folder / "diverged", cfg, 1, {**DONE, "status": "diverged", "top1_err": 100.0, "params": None})
    _fake_run(folder / "running", cfg, 2, None)
    _fake_run(folder / "torn", cfg, 1, '{"status": "compl')
    fresh = collect(folder, cache=False)
    first = collect(folder)  # writes the cache
    cached = collect(folder)  # reads it
    assert (folder / ".collect_cache.json").is_file() and not (folder / ".collect_cache.pkl").exists()
    json.loads((folder / ".collect_cache.json").read_text())  # a data file
    for frame in (first, cached):
        pd.testing.assert_frame_equal(frame, fresh)
        assert _typed(frame) == _typed(fresh)
    moved = tmp_path / "moved"
    folder.rename(moved)  # the cache travels with the folder; run_dir must follow it
    again = collect(moved)
    assert all(Path(d).parent == moved for d in again["run_dir"])


# -- broken JSON records -----------------------------------------------------------------------
@pytest.mark.parametrize("text", ["[1, 2]", '"completed"', "42", "null"])
def test_result_json_that_is_not_an_object(tmp_path, text):
    sweep = four_runs(tmp_path)
    bad, done = sweep.run_ids[0], sweep.run_ids[1]
    _fake_run(sweep.run_dir(done), sweep.configs[done], 1, DONE)
    _fake_run(sweep.run_dir(bad), sweep.configs[bad], 1, text)
    record_local_job(sweep, dead_pid(), sweep.run_ids[:2])
    (sweep.run_dir(done) / rundir.JOB).write_text("[]")  # also not an object
    with pytest.warns(UserWarning, match=bad):
        frame = collect(sweep.dir).set_index("run")
    assert frame.loc[bad, "status"] == "failed" and "result.json" in frame.loc[bad, "reason"]
    assert frame.loc[done, "status"] == "completed"
    with pytest.warns(UserWarning, match=f"{bad}.*result.json"):
        status = sweep.status().set_index("run")
    assert status.loc[bad, "state"] == "failed" and "result.json" in status.loc[bad, "reason"]
    assert status.loc[done, "state"] == "completed"


def test_broken_sweep_records_are_one_line_or_skipped(tmp_path):
    from analysis.errors import ConfigError

    sweep = four_runs(tmp_path)
    (sweep.dir / "launches.json").write_text('{"launches": [1, {"jobs": "x"}, {"jobs": [{"runs": 3}]}]}')
    assert sweep.launches == [] and set(sweep.status()["state"]) == {"not_launched"}
    (sweep.dir / "launches.json").write_text("[]")
    assert sweep.launches == []
    (sweep.dir / "runs.json").write_text('{"runs": [{"run": 1}]}')
    for call in (lambda: Sweep.open(sweep.dir), lambda: collect(sweep.dir)):
        with pytest.raises(ConfigError) as e:
            call()
        assert "runs.json" in str(e.value) and "\n" not in str(e.value)


def test_a_launch_record_has_one_constructor_and_its_check():
    record = rundir.launch_record(2, "slurm", [("7_0", ["a", "b"]), ("7_1", ["c"])], "code/launch-002", "submitit", {})
    assert json.loads(json.dumps(record)) == record and rundir.launch_problem(record) is None
    assert record["jobs"] == [{"job_id": "7_0", "runs": ["a", "b"]}, {"job_id": "7_1", "runs": ["c"]}]
    assert record["cancelled"] == [] and record["time"][:2] == "20"
    old = {k: v for k, v in record.items() if k != "submitit"}  # recorded before there were subfolders
    assert rundir.launch_problem(old) is None
    for change, words in [
        ({"launch": True}, "launch is True"),
        ({"time": "\x1b]0;x\x07"}, "not an ISO time"),
        ({"cluster": "cloud"}, "cluster is 'cloud'"),
        ({"options": []}, "options is [], not a dict"),
        ({"jobs": [{"job_id": 7, "runs": []}]}, "jobs is not a list"),
        ({"jobs": [{"job_id": "7", "runs": [1]}]}, "jobs is not a list"),
        ({"cancelled": None}, "cancelled is not a list"),
    ]:
        assert words in rundir.launch_problem({**record, **change}), change
    assert rundir.launch_problem([record]) == "not an object"
    with pytest.raises(ValueError, match="cluster is 'auto'"):
        rundir.launch_record(0, "auto", [], "", "submitit", {})


def test_malformed_launch_entries_are_left_out_and_launch_numbers_never_collide(tmp_path):
    """launches.json is a folder's data: an entry launch_problem rejects is not a launch, and the next
    launch number is past every launch on record and every code snapshot a killed launch left behind."""
    sweep = four_runs(tmp_path, "numbers")
    good = rundir.launch_record(0, "local", [("1", ["a"])], "code/launch-000", "submitit/launch-000-x", {})
    bad = {**rundir.launch_record(4, "local", [("2", ["b"])], "code/launch-004", "submitit", {}), "time": 5}
    rundir.write_json(sweep.dir / rundir.LAUNCHES, {"launches": [good, bad, {"launch": 1}, "text"]})
    with pytest.warns(UserWarning, match=r"launches.json: entry 1 left out \(time is 5, not an ISO time\)"):
        assert sweep.launches == [good]
    assert sweep._next_launch(sweep.launches) == 1
    (sweep.dir / rundir.CODE / "launch-001").mkdir(parents=True)  # snapshot of a launch killed before its record
    (sweep.dir / rundir.CODE / "launch-002").symlink_to(tmp_path / "nowhere")  # a dangling link is taken too
    assert sweep._next_launch(sweep.launches) == 3
    with pytest.warns(UserWarning):
        sweep._save_launches(sweep.launches)  # a rewrite keeps what it cannot read, as it was
    assert rundir.read_json(sweep.dir / rundir.LAUNCHES)["launches"] == [bad, {"launch": 1}, "text", good]
    huge = {**good, "launch": 10**6}  # past the six digits of code/launch-NNN and submitit/launch-NNN-x
    assert "not a launch number" in rundir.launch_problem(huge)


# -- a trainer that outlived its job -----------------------------------------------------------
TRAINER = """
import os, sys, time
from pathlib import Path
from analysis import rundir
sweep_dir, run, job_id = Path(sys.argv[1]), sys.argv[2], sys.argv[3]  # job id: the controller's pid
run_dir = sweep_dir / "runs" / run
lock = rundir.RunLock(run_dir).acquire()
rundir.write_json(run_dir / "job.json", {"job_id": job_id, "pid": os.getpid(), "started": time.time()})
rundir.log_line(run_dir, "trainer-line: epoch 1 of the orphaned run")
with open(sweep_dir / "submitit" / f"{job_id}_0_log.err", "a") as f:
    f.write("trainer-line: from the job's own log\\n")
time.sleep(600)
"""
# the job's controller: starts the trainer, says its pid, and ends (the trainer lives on)
CONTROLLER = """
import os, subprocess, sys
trainer = subprocess.Popen([sys.executable, "-c", *sys.argv[1:], str(os.getpid())], stdout=subprocess.DEVNULL)
print(trainer.pid, flush=True)
"""


def test_orphaned_trainer_reads_running_and_is_never_started_twice(tmp_path):
    sweep = four_runs(tmp_path)
    r0, r1, r2, r3 = sweep.run_ids
    (sweep.dir / "submitit").mkdir()
    controller = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, TRAINER, str(sweep.dir), r0],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ENV,
        cwd=tmp_path,
    )
    job = str(controller.pid)
    trainer = None
    try:
        trainer = int(controller.stdout.readline())
        record_local_job(sweep, int(job), [r0, r1, r2, r3])
        controller.stdout.close()
        controller.wait(timeout=60)
        deadline = time.monotonic() + 120
        log = sweep.run_dir(r0) / rundir.LOG
        while not (log.exists() and "trainer-line" in log.read_text()):
            assert time.monotonic() < deadline and alive(trainer), "the stand-in trainer did not lock"
            time.sleep(0.1)
        status = sweep.status().set_index("run")
        assert status.loc[r0, "state"] == "running" and status.loc[r0, "job_state"] == "FAILED"
        assert status.loc[r0, "trainer"] == f"{socket.gethostname()}:{trainer}"
        for run in (r1, r2, r3):  # never started: nothing of r0's log, and a reason that says so
            assert status.loc[run, "state"] == "failed" and "trainer-line" not in status.loc[run, "log_tail"]
            assert "not started" in status.loc[run, "reason"]
        frame = collect(sweep.dir).set_index("run")
        assert frame.loc[r0, "status"] == "running" and frame.loc[r1, "status"] == "failed"

        ids = sweep.launch(runs=[r0])
        try:
            assert ids == []  # a live trainer holds it
        finally:
            if ids:
                sweep.cancel()
        with pytest.warns(UserWarning) as caught:
            assert sweep.resubmit(max_retries=0) == []
        named = " ".join(str(w.message) for w in caught)
        assert r1 in named and r3 in named and r0 not in named

        assert sweep.cancel() == [job]  # stops the orphaned trainer itself
        deadline = time.monotonic() + 60
        while alive(trainer) or rundir.lock_holder(sweep.run_dir(r0)):  # its threads may outlive it briefly
            assert time.monotonic() < deadline, "the orphaned trainer did not stop"
            time.sleep(0.1)
        final = Sweep.open(sweep.dir).status().set_index("run")
        assert final.loc[r0, "state"] == "cancelled", final.loc[r0].to_dict()
    finally:
        if trainer is not None and alive(trainer):
            os.kill(trainer, signal.SIGKILL)


# -- launch options from the command line ------------------------------------------------------
def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "analysis", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300
    )


@pytest.mark.slow
def test_cli_set_launch_options(tmp_path):
    sweep = four_runs(tmp_path / "sweeps")
    for run in sweep.run_ids:
        _fake_run(sweep.run_dir(run), sweep.configs[run], 1, DONE)
    spec = tmp_path / "shared.yaml"
    spec.write_text((sweep.dir / "spec.yaml").read_text())
    ok = _cli(
        "sweep",
        "launch",
        str(spec),
        "--root",
        str(tmp_path / "sweeps"),
        "--set",
        "launch.parallel=2",
        "launch.cluster=local",
        "launch.timeout_min=6e1",
        cwd=tmp_path,
    )
    assert ok.returncode == 0 and "nothing to launch" in ok.stdout, ok.stderr
    for bad, words in (
        (["launch.parallel=two"], "parallel must be int"),
        (["launch.gpus=1"], "gpus_per_node"),
        (["launch.parallel"], "launch.KEY=VALUE"),
        (["launch.cluster=moon"], "local"),
    ):
        out = _cli("sweep", "launch", str(spec), "--root", str(tmp_path / "fresh"), "--set", *bad, cwd=tmp_path)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and words in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and not (tmp_path / "fresh").exists()


def test_set_values_are_checked_before_the_folder_is_written(tmp_path, capsys):
    from analysis.__main__ import main

    sweep = four_runs(tmp_path / "sweeps")
    for run in sweep.run_ids:
        _fake_run(sweep.run_dir(run), sweep.configs[run], 1, DONE)
    spec = tmp_path / "other.yaml"
    spec.write_text("name: other\nbase: {train: {epochs: 1}}\n")
    assert main(["sweep", "launch", str(spec), "--root", str(tmp_path / "x"), "--set", "launch.parallel=0"]) == 2
    assert "parallel must be >= 1" in capsys.readouterr().err and not (tmp_path / "x").exists()
    (tmp_path / "shared.yaml").write_text((sweep.dir / "spec.yaml").read_text())
    args = [
        "sweep",
        "launch",
        str(tmp_path / "shared.yaml"),
        "--root",
        str(tmp_path / "sweeps"),
        "--set",
        "launch.parallel=2",
        "launch.cluster=local",
        "--parallel",
        "3",
    ]
    assert main(args) == 0 and "nothing to launch" in capsys.readouterr().out


def test_wait_calls_back_with_each_status_frame(tmp_path, capsys):
    sweep = four_runs(tmp_path)
    frames = []
    final = sweep.wait(poll=0.1, callback=frames.append)
    assert len(frames) == 1 and frames[0] is final and set(final["state"]) == {"not_launched"}
    sweep.wait(poll=0.1, progress=True)  # the counts as a line, and the bar (to stdout)
    out = capsys.readouterr().out
    assert "4 not_launched" in out and "0/4" in out
    note = sweep.still_running(final)
    assert "\n" not in note and "no run" in note


def test_demo_progress_lines_and_bar():
    import io

    from analysis.sweeps.progress import Progress

    def frame(*states):
        return pd.DataFrame({"run": [f"r{i}" for i in range(len(states))], "state": list(states)})

    lines, out = [], io.StringIO()
    progress = Progress(3, echo=lines.append, bar=True, file=out)
    for states in (
        ("pending",) * 3,
        ("pending",) * 3,
        ("running", "pending", "pending"),
        ("completed", "running", "pending"),
        ("completed", "completed", "failed"),
    ):
        progress(frame(*states))
    progress.close()
    assert [l.split("] ")[1] for l in lines] == [
        "3 pending",
        "2 pending, 1 running",
        "1 completed, 1 pending, 1 running",
        "2 completed, 1 failed",
    ]
    assert "2/3" in out.getvalue() and "1 failed" in out.getvalue()


# -- Ctrl-C --------------------------------------------------------------------------------------
LONG = {
    "data": {"train_per_class": 400, "test_per_class": 10},
    "train": {"epochs": 3, "batch_size": 50, "precision": "fp32", "progress": "lines", "threads": 1},
}


def _interrupt_when_running(proc: subprocess.Popen, folder: Path, timeout: float = 300) -> None:
    """Wait until a run of the sweep in `folder` trains, then Ctrl-C the command's process group
    (what a terminal does: every process of the foreground group gets SIGINT)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()
        if (folder / "runs.json").exists() and any((d / rundir.LOG).exists() for d in (folder / "runs").iterdir()):
            break
        assert time.monotonic() < deadline, "no run started"
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)


def _check_interrupted(proc: subprocess.Popen, folder: Path, words: list[str]) -> None:
    try:  # the jobs are cancelled whatever happens here, a timeout included: none outlives the test
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (out, err)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        lines = [l for l in err.splitlines() if l.strip()]
        assert len(lines) == 1 and all(w in lines[0] for w in words), err
        sweep = Sweep.open(folder)
        assert "running" in set(sweep.status()["state"])  # the jobs go on
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        sweep = Sweep.open(folder)
        sweep.cancel()
        final = sweep.wait(timeout=120, poll=0.5)
    assert not set(final["state"]) & {"running", "pending"}


@pytest.mark.slow
def test_ctrl_c_on_sweep_launch_wait(tmp_path):
    import yaml

    spec = tmp_path / "long.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "long",
                "base": LONG,
                "grid": {"preset": ["vit_p_fmnist_tiny", "vit_c_fmnist_tiny"]},
                "launch": {"cluster": "local", "parallel": 2, "timeout_min": 20},
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "analysis", "sweep", "launch", str(spec), "--root", str(tmp_path / "sweeps"), "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=tmp_path,
        start_new_session=True,
    )
    folder = tmp_path / "sweeps" / "long"
    _interrupt_when_running(proc, folder)
    _check_interrupted(proc, folder, ["still running", "sweep cancel", "sweep status", str(folder)])


@pytest.mark.slow
def test_ctrl_c_on_demo(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "analysis", "demo", "--root", str(tmp_path), "--parallel", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=tmp_path,
        start_new_session=True,
    )
    folder = tmp_path / "fmnist_demo"
    _interrupt_when_running(proc, folder)
    _check_interrupted(proc, folder, ["still running", "sweep cancel", "python -m analysis demo"])

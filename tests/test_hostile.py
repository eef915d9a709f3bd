"""Shared folders, second pass: what a hostile or careless folder holds ends in one line, runs no code,
changes nothing outside it and keeps memory bounded (README, "What a run or sweep folder holds")."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from tests.test_trust import peak_mb, tiny_spec

from analysis import rundir, trust
from analysis.errors import MAX_SHOWN, CheckpointError, ConfigError
from analysis.sweeps import Sweep, boot

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m analysis ARGS` in a fresh interpreter; a reader that blocks fails the test by timeout."""
    return subprocess.run(
        [sys.executable, "-m", "analysis", *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout
    )


@pytest.fixture
def sweep(tmp_path) -> Sweep:
    """A sweep folder with two run folders (configs only: nothing trained)."""
    return Sweep.from_dict(tiny_spec("hostile"), root=tmp_path)


@pytest.mark.parametrize("name", ["result.json", "metrics.jsonl", "log.txt", "job.json", "train.lock"])
def test_a_fifo_in_a_run_folder_blocks_no_reader(sweep, name):
    os.mkfifo(sweep.run_dir(sweep.run_ids[0]) / name)
    for command in (["sweep", "status"], ["sweep", "collect"], ["claims"]):
        out = cli([*command, str(sweep.dir)], cwd=sweep.dir.parent, timeout=90)
        assert out.returncode in (0, 2), out.stderr[-1500:]
        assert "Traceback" not in out.stderr
    with pytest.raises(rundir.NotRegularFile, match="FIFO"):
        rundir.read_capped(sweep.run_dir(sweep.run_ids[0]) / name, 100)


def test_a_fifo_as_the_launch_lock_or_run_table_is_one_line(sweep):
    lock = sweep.dir / ".launch.lock"
    lock.unlink(missing_ok=True)
    os.mkfifo(lock)
    with pytest.raises(ConfigError, match="not a regular file"):
        sweep.launch()
    (sweep.dir / "runs.json").unlink()
    os.mkfifo(sweep.dir / "runs.json")
    out = cli(["sweep", "status", str(sweep.dir)], cwd=sweep.dir.parent, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "error:" in out.stderr


def test_devices_behind_run_files_are_read_in_bounded_memory(sweep):
    run = sweep.run_dir(sweep.run_ids[0])
    (run / "result.json").symlink_to("/dev/zero")
    (run / "metrics.jsonl").symlink_to("/dev/urandom")
    peak, out = peak_mb(
        f"from analysis.sweeps import Sweep, collect\ns = Sweep.open({str(sweep.dir)!r})\n"
        "print(list(s.status()['state']))\nprint(len(collect(s.dir)))\n",
        cwd=sweep.dir.parent,
    )
    assert peak < 300 and "Error" not in out.split("PEAK")[0], out


def test_run_ids_that_leave_the_sweep_are_refused(sweep):
    table = json.loads((sweep.dir / "runs.json").read_text())
    table["runs"][0]["run"] = "../../../other_run"
    (sweep.dir / "runs.json").write_text(json.dumps(table))
    with pytest.raises(ConfigError, match="run ids use letters") as e:
        Sweep.open(sweep.dir)
    assert "\n" not in str(e.value)
    out = cli(["sweep", "cancel", str(sweep.dir)], cwd=sweep.dir.parent)
    assert out.returncode == 2 and "run ids use letters" in out.stderr


def test_terminal_escapes_from_a_folder_are_stripped(sweep):
    run = sweep.run_dir(sweep.run_ids[0])
    evil = "boom \x1b]52;c;ZXZpbA==\x07 \x1b]0;title\x07 \x1b[2J \x9b"
    rundir.write_json(run / "result.json", {"status": "failed", "reason": evil})
    (run / "log.txt").write_text(f"line {evil}\n")
    out = cli(["sweep", "status", str(sweep.dir)], cwd=sweep.dir.parent)
    assert out.returncode == 0, out.stderr
    assert "boom" in out.stdout and not any(c in out.stdout + out.stderr for c in "\x1b\x07\x9b")


BROKEN_STATUS = """
import sys
from pathlib import Path
import analysis.sweeps.status as status

def broken(folder, run_ids, *args, **kwargs):  # a bug whose error quotes what a run folder holds
    raise RuntimeError((Path(folder) / "runs" / run_ids[0] / "log.txt").read_text())

status.status_frame = broken
from analysis.__main__ import run
run()
"""


def test_a_traceback_quoting_a_folder_is_stripped_too(sweep):
    """An error no handler expects, in a command that reads folders, prints its traceback through the same
    control-character filter as the command's output (the `stemlab` and `python -m analysis` entry, run())."""
    evil = "boom \x1b]52;c;ZXZpbA==\x07 \x1b]0;title\x07 \x1b[2J \x9b"
    (sweep.run_dir(sweep.run_ids[0]) / "log.txt").write_text(evil)
    out = subprocess.run(
        [sys.executable, "-c", BROKEN_STATUS, "sweep", "status", str(sweep.dir)],
        capture_output=True,
        text=True,
        cwd=sweep.dir.parent,
        env=ENV,
        timeout=120,
    )
    assert out.returncode == 1 and "Traceback" in out.stderr and "RuntimeError: boom" in out.stderr, out.stderr
    assert not any(c in out.stdout + out.stderr for c in "\x1b\x07\x9b"), out.stderr


def test_python_m_analysis_never_imports_from_the_working_folder(sweep, tmp_path):
    marker = tmp_path / "ran"
    (sweep.dir / "yaml.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(9)\n")
    (sweep.dir / "pandas.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    out = cli(["sweep", "status", "."], cwd=sweep.dir)
    assert out.returncode == 0, out.stderr[-1500:]
    assert not marker.exists()


def test_yaml_scalar_amplification_and_long_values_in_messages(tmp_path):
    big = tmp_path / "config.yaml"
    aliases = ", ".join(["*a"] * 3000)
    big.write_text(f"optim:\n  lr: &a '{'x' * 200_000}'\n  name: [{aliases}]\n")
    with pytest.raises(ConfigError, match="expand to over") as e:
        trust.load_yaml(big)
    assert len(str(e.value)) < 400
    from analysis import config

    with pytest.raises(ConfigError) as e:
        config.coerce("optim.lr", ["y" * 10_000] * 1000)
    assert len(str(e.value)) < MAX_SHOWN + 200 and "\n" not in str(e.value)


def test_writes_never_go_through_hard_links_of_a_snapshot(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.txt").write_text("original log\n")
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (run / "train.lock").write_text("")
    snap = tmp_path / "snap"
    subprocess.run(["cp", "-al", str(run), str(snap)], check=True)
    assert rundir.unshare(snap) == 2
    rundir.log_line(snap, "snapshot line")
    rundir.append_metrics(snap, {"epoch": 2})
    with rundir.RunLock(snap):
        assert os.stat(snap / "train.lock").st_nlink == 1
    assert (run / "log.txt").read_text() == "original log\n"
    assert (run / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    assert (run / "train.lock").read_text() == "" and os.stat(run / "train.lock").st_nlink == 1


def test_collect_out_replaces_the_file_and_leaves_its_hard_links_alone(sweep, tmp_path):
    out = tmp_path / "runs.csv"
    out.write_text("old\n")
    os.link(out, tmp_path / "kept.csv")
    res = cli(["sweep", "collect", str(sweep.dir), "--out", str(out)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "kept.csv").read_text() == "old\n" and out.read_text().startswith("run,")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_oversized_checkpoint_is_refused_in_one_line_without_reading_it(sweep):
    run = sweep.run_dir(sweep.run_ids[0])
    with open(run / "checkpoint.pt", "wb") as f:
        f.truncate(2 << 30)  # 2 GiB, sparse
    peak, out = peak_mb(f"from analysis.runs import load_model\nload_model({str(run)!r})\n", cwd=sweep.dir.parent)
    assert "CheckpointError" in out and "over the" in out and peak < 300, out
    with pytest.raises(CheckpointError, match="over the"):
        from analysis.runs import load_model

        load_model(run)


class Payload:
    """A pickle that, when loaded, creates a marker file: what a planted job pickle would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_job_pickles_planted_in_the_sweep_are_never_loaded(sweep, tmp_path):
    """Pickles planted in submitit/ for the next process ids (as someone sharing the folder could): the
    launch writes its job files into a folder of its own, made fresh with mode 0700, so its jobs never
    load them; the runs train and nothing runs."""
    import pickle

    marker = tmp_path / "payload-ran"
    planted = sweep.dir / "submitit"
    planted.mkdir(exist_ok=True)
    pid = os.getpid()
    for p in range(pid, pid + 400):
        for name in (f"{p}_submitted.pkl", f"{p}_0_submitted.pkl"):
            (planted / name).write_bytes(pickle.dumps(Payload(marker)))
    sweep.launch(cluster="local", parallel=1, wait=True, timeout=600)
    assert set(sweep.status()["state"]) == {"completed"} and not marker.exists()
    (launch,) = json.loads((sweep.dir / "launches.json").read_text())["launches"]
    own = sweep.dir / launch["submitit"]
    assert own.parent == planted and own.name.startswith("launch-000-") and (own.stat().st_mode & 0o777) == 0o700
    assert list(own.glob("*_submitted.pkl"))  # the jobs' own pickles are there
    for pickle_path in own.glob("*_submitted.pkl"):  # each signed by its launch
        assert boot.tag_path(pickle_path).is_file()


def run_job(folder: Path, job_id: str, key: str | None) -> subprocess.CompletedProcess:
    """A local job's task as submitit's controller starts it: the entry command a launch hands submitit,
    then submitit's `-u -m submitit.core._submit FOLDER`, in the environment the controller sets."""
    env = {k: v for k, v in ENV.items() if not k.startswith("SUBMITIT_") and k != boot.KEY_ENV}
    env.update(SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_JOB_ID=job_id, SUBMITIT_LOCAL_NTASKS="1")
    if key:
        env[boot.KEY_ENV] = key
    command = [*shlex.split(boot.entry_command(str(REPO))), "-u", *boot.SUBMIT, str(folder)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=folder, timeout=120)


def test_a_job_loads_only_the_pickle_its_launch_signed(tmp_path):
    """The job-side check: a signed pickle runs; a pickle put in its place after signing, or any pickle
    without the launch's key in the job's environment, is refused in one line and nothing of it runs."""
    import pickle

    from submitit.core.utils import DelayedSubmission

    key, marker = boot.new_key(), tmp_path / "ran"
    folder = tmp_path / "jobs"
    folder.mkdir(mode=0o700)
    path = folder / "4242_submitted.pkl"
    DelayedSubmission(Path.touch, marker).dump(path)  # what the launch wrote: touches the marker when run
    boot.sign(path, key)
    out = run_job(folder, "4242", key)
    assert out.returncode == 0 and marker.exists(), out.stderr[-1500:]  # the check lets the launch's own job run
    marker.unlink()
    path.write_bytes(pickle.dumps(Payload(marker)))  # another pickle in its place, after the launch signed
    for key_given, words in [(key, "HMAC-SHA256 differs"), (None, f"no {boot.KEY_ENV}")]:
        out = run_job(folder, "4242", key_given)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert "refused to load the job" in out.stderr and words in out.stderr and not marker.exists()
    assert "no such file" in boot.pickle_problem(folder / "1_submitted.pkl", key, wait_s=0).lower()
    (folder / "1_submitted.pkl").write_bytes(b"x")
    assert "No such file" in boot.pickle_problem(folder / "1_submitted.pkl", key, wait_s=0)  # no tag: refused
    os.mkfifo(folder / "2_submitted.pkl")
    boot.tag_path(folder / "2_submitted.pkl").write_text(boot.pickle_tag(b"", key))
    assert "not a regular file" in boot.pickle_problem(folder / "2_submitted.pkl", key, wait_s=0)


def test_a_job_pickle_swapped_after_its_launch_signed_it_is_refused(sweep, tmp_path, monkeypatch):
    """End to end: a real local launch whose job pickle is replaced (after submitit wrote it, before the
    job reads it) by one that would create a marker file: the job refuses it, the runs fail, nothing runs."""
    import pickle

    marker, signed = tmp_path / "payload-ran", boot.sign

    def swap_then_sign(pickle_path, key, data=None):
        original = Path(pickle_path).read_bytes()
        Path(pickle_path).write_bytes(pickle.dumps(Payload(marker)))
        signed(pickle_path, key, original)  # the tag of what the launch wrote

    monkeypatch.setattr(boot, "sign", swap_then_sign)
    sweep.launch(cluster="local", parallel=1, wait=True, timeout=300)
    assert set(sweep.status()["state"]) == {"failed"} and not marker.exists()
    (launch,) = sweep.launches
    (job,) = launch["jobs"]
    log = (sweep.dir / launch["submitit"] / f"{job['job_id']}_0_log.err").read_text()
    assert "refused to load the job" in log and "HMAC-SHA256 differs" in log and "Traceback" not in log


def test_a_checkpoint_signs_the_pickle_its_requeued_job_loads(tmp_path, monkeypatch):
    """On preemption submitit rewrites the job's pickle (the call's checkpoint) and requeues the job, which
    starts with the same key: what GroupJob.checkpoint hands submitit signs the new pickle as it is written."""
    from submitit.core.job_environment import _checkpoint
    from submitit.core.utils import DelayedSubmission

    key = boot.new_key()
    for name, value in {boot.KEY_ENV: key, "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "77"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path))
    path = tmp_path / "77_submitted.pkl"
    path.write_bytes(b"the pickle the launch wrote")
    boot.sign(path, key)
    assert _checkpoint(DelayedSubmission(boot.GroupJob(str(REPO)), ["run"], 1, None), path, 2) == ""
    assert boot.pickle_problem(path, key, wait_s=0) is None and path.read_bytes() != b"the pickle the launch wrote"


def test_a_report_of_a_sweep_with_an_unfinished_group_is_partial(tmp_path):
    """One model x optimizer without a finished run (a running sweep): the report is written, says
    "partial: N of M runs finished" at the top and one sentence where a section lacks runs."""
    from tests.test_reliability import DONE, _fake_run, four_runs

    from analysis.report import write_report

    sweep = four_runs(tmp_path)
    for run in sweep.run_ids[:3]:  # the fourth group has no result
        _fake_run(sweep.run_dir(run), sweep.configs[run], 1, DONE)
    out = cli(["report", str(sweep.dir), "--no-probes"], cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    page = (sweep.dir / "report.html").read_text()
    assert "partial: 3 of 4 runs finished" in page
    assert write_report(sweep.dir, probes=False).is_file()


def test_forged_rows_in_the_collect_cache_are_not_believed(tmp_path):
    """.collect_cache.json is a folder's data: a cached row whose numbers no result.json could hold
    (inf, -50, over 100) is recomputed from the run's files, and its config fields (a model name with
    HTML in it) always come from the run table."""
    from tests.test_reliability import DONE, _fake_run, four_runs

    from analysis.sweeps import collect

    sweep = four_runs(tmp_path)
    for run in sweep.run_ids:
        _fake_run(sweep.run_dir(run), sweep.configs[run], 1, DONE)
    assert list(collect(sweep.dir)["error"]) == [40.0] * 4
    cache_file = sweep.dir / ".collect_cache.json"
    cache = json.loads(cache_file.read_text())
    forged = [float("inf"), -50.0, 1e9, -1e308]
    for (run, entry), value in zip(sorted(cache["rows"].items()), forged):
        entry["row"]["error"] = value
        entry["row"]["model"] = "<script>alert(1)</script>"
    cache_file.write_text(json.dumps(cache))
    again = collect(sweep.dir)
    assert list(again["error"]) == [40.0] * 4 and not again["model"].str.contains("<").any()
    cache = json.loads(cache_file.read_text())
    (run, entry), *_ = sorted(cache["rows"].items())
    entry["row"]["model"] = "<b>forged</b>"  # numbers valid, a config field forged
    cache_file.write_text(json.dumps(cache))
    assert not collect(sweep.dir)["model"].str.contains("<").any()


def test_a_stale_config_yaml_is_refused_when_the_sweep_is_reused(sweep, tmp_path):
    """The job trains config.yaml and collect reports runs.json: reusing a folder whose config.yaml says
    other than runs.json (lr 0.9 for 2 epochs instead of the table's) is one line, and nothing launches."""
    path = sweep.run_dir(sweep.run_ids[0]) / "config.yaml"
    text = path.read_text()
    path.write_text(text.replace("epochs: 1\n", "epochs: 2\n"))
    with pytest.raises(ConfigError, match="train.epochs=2 but the sweep's runs.json 1") as e:
        Sweep.from_dict(tiny_spec("hostile"), root=tmp_path)
    assert "\n" not in str(e.value)
    path.write_text(text)
    Sweep.from_dict(tiny_spec("hostile"), root=tmp_path)  # restored: reused as before


def test_values_far_outside_the_usual_ranges_warn_and_a_key_set_twice_is_one_line(tmp_path):
    from analysis.sweeps import LaunchConfig, Spec

    spec = {"name": "odd", "base": {"optim": {"lr": 1e300}, "train": {"epochs": 10**9}}}
    with pytest.warns(UserWarning, match=r"optim.lr=1e\+300.*train.epochs=1e\+09"):
        Spec.from_dict(spec).runs()
    with pytest.warns(UserWarning, match="max_retries=1e\\+09"):
        LaunchConfig.from_dict({"max_retries": 10**9})
    out = cli(["train", "--out", str(tmp_path / "r"), "optim.lr=1e300", f"data.root={tmp_path}/none"], cwd=tmp_path)
    assert "warning: optim.lr=1e+300 (usual: up to about 3 at batch 2048) is far outside" in out.stderr
    for bad, words in (
        ({"grid": {"optimizer": ["adamw"], "optim.name": ["sgd"]}}, "both set optim.name"),
        ({"base": {"optim": {"lr": 1e-3}, "optim.lr": 2e-3}}, "optim.lr is given twice"),
    ):
        with pytest.raises(ConfigError, match=words) as e:
            Spec.from_dict({"name": "twice", **bad})
        assert "\n" not in str(e.value)


def test_malformed_idx_files_and_a_gzip_bomb_are_one_line_in_bounded_memory(tmp_path):
    """A data root of someone else's: a truncated IDX file, trailing bytes, a bad header, and a gzip
    bomb (a header promising 60000 images, then gigabytes of zeros) each stop in one line."""
    import gzip

    from analysis.engine.data import _read_idx

    header = b"\x00\x00\x08\x03" + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    cases = {
        "short": header + b"\x00" * 100,
        "long": b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x01\x02\x03\x04",
        "magic": b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"\x01\x02\x03",
        "huge": b"\x00\x00\x08\x03" + (10**6).to_bytes(4, "big") * 3,
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}-idx"
        path.write_bytes(data)
        with pytest.raises(ConfigError) as e:
            _read_idx(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)
    bomb = tmp_path / "bomb-idx.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(header)
        for _ in range(64):  # 2 GiB of zeros, a few MB on disk
            f.write(bytes(32 << 20))
    peak, out = peak_mb(
        f"from pathlib import Path\nfrom analysis.engine.data import _read_idx\n_read_idx(Path({str(bomb)!r}))\n",
        cwd=tmp_path,
    )
    assert "ConfigError" in out and "header says" in out and peak < 300, out


def test_a_full_disk_during_the_code_snapshot_is_one_line(tmp_path):
    """The launch copies the package into the sweep (code/launch-NNN); on a full disk that is one line,
    not shutil's list of every file that failed. A real full file system: a 256 KiB tmpfs (root only)."""
    import yaml

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        spec = tmp_path / "spec.yaml"
        spec.write_text(yaml.safe_dump(tiny_spec("full")))
        out = cli(["sweep", "launch", str(spec), "--root", str(disk)], cwd=tmp_path)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-2000:]
        assert "cannot snapshot the code" in out.stderr and "Traceback" not in out.stderr
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_outputs_through_links_keep_the_link_and_user_yaml_may_be_a_link(tmp_path):
    """--out /dev/stdout (a link) is written through, never replaced by a rename; a spec or config the
    user names may be a symbolic link (read as before), but a FIFO there is refused."""
    target = tmp_path / "target.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    rundir.write_output(link, b"new\n")
    assert link.is_symlink() and target.read_text() == "new\n"
    spec = tmp_path / "real.yaml"
    spec.write_text("name: linked\n")
    (tmp_path / "linked.yaml").symlink_to(spec)
    assert trust.load_yaml(tmp_path / "linked.yaml") == {"name": "linked"}
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(ConfigError, match="FIFO"):
        trust.load_yaml(tmp_path / "fifo.yaml")


def test_a_lock_with_many_hard_links_is_replaced_once_and_held(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.lock").write_text("")
    for k in (1, 2):
        subprocess.run(["cp", "-al", str(run), str(tmp_path / f"snap{k}")], check=True)
    assert os.stat(run / "train.lock").st_nlink == 3
    with rundir.RunLock(tmp_path / "snap1") as lock:
        assert os.fstat(lock.fd).st_ino == os.stat(tmp_path / "snap1" / "train.lock").st_ino
        assert os.stat(tmp_path / "snap1" / "train.lock").st_nlink == 1
    assert (run / "train.lock").read_text() == "" and os.stat(run / "train.lock").st_nlink == 2


def test_a_run_table_naming_folders_outside_the_sweep_is_refused_by_collect(sweep):
    from analysis.sweeps import collect

    table = json.loads((sweep.dir / "runs.json").read_text())
    table["runs"][0]["run_dir"] = "../../elsewhere"
    (sweep.dir / "runs.json").write_text(json.dumps(table))
    with pytest.raises(ConfigError, match="names the folder"):
        collect(sweep.dir)

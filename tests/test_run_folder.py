"""A run folder under stress: a second trainer, broken checkpoints, interrupted writes, bad --out
paths and bad models are each met with one clear line, and nothing is lost."""

import os
import stat
import subprocess
import sys

import pytest
import torch

from analysis import rundir
from analysis.errors import ConfigError
from analysis.engine.train import Stopped, Trainer, train
from tests.test_train import tiny_cfg

CLI = [
    sys.executable,
    "-m",
    "analysis",
    "train",
    "train.epochs=1",
    "data.train_per_class=20",
    "data.test_per_class=10",
    "train.batch_size=50",
    "train.precision=fp32",
    "train.progress=none",
]


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    return done.stderr


def test_second_trainer_is_refused_naming_the_holder(tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 1})
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom analysis import rundir\n"
            f"rundir.RunLock({str(tmp_path / 'run')!r}).acquire()\nprint('locked', flush=True)\n"
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(rundir.RunLocked) as e:
            train(cfg, tmp_path / "run")
        assert f"pid {holder.pid}" in str(e.value) and "host" in str(e.value) and "\n" not in str(e.value)
        assert rundir.lock_holder(tmp_path / "run")["pid"] == holder.pid
        assert not (tmp_path / "run" / "result.json").exists()  # nothing written into the other's folder
    finally:
        holder.kill()
        holder.wait()
    assert rundir.lock_holder(tmp_path / "run") is None  # the kernel dropped the dead holder's lock
    assert train(cfg, tmp_path / "run")["status"] == "completed"


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_broken_checkpoint_is_one_line_and_restart_recovers(tmp_path, damage):
    cfg = tiny_cfg(**{"train.epochs": 2})
    run = tmp_path / "run"
    with pytest.raises(Stopped):
        Trainer(cfg, run, stop_at_step=5).run()
    ckpt = run / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10}[damage])
    with pytest.raises(rundir.CheckpointError) as e:
        train(cfg, run)
    message = str(e.value)
    assert str(ckpt) in message and "--restart" in message and "\n" not in message
    assert "weights_only=False" not in message
    recorded = rundir.read_result(run)
    assert recorded["status"] == "failed" and str(ckpt) in recorded["reason"]
    assert "weights_only=False" not in recorded["reason"]
    result = train(cfg, run, restart=True)
    assert result["status"] == "completed" and [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]


def test_cli_broken_checkpoint_and_restart_flag(tmp_path):
    out = tmp_path / "cli"
    out.mkdir()
    args = CLI + ["--out", str(out)]
    assert subprocess.run(args, capture_output=True, text=True, timeout=300).returncode == 0
    (out / "checkpoint.pt").write_bytes(b"")
    (out / "result.json").unlink()
    assert str(out / "checkpoint.pt") in one_line_error(subprocess.run(args, capture_output=True, text=True))
    done = subprocess.run(args + ["--restart"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert rundir.read_result(out)["status"] == "completed"


def test_pickle_payload_in_checkpoint_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Payload()}, run / "checkpoint.pt")
    with pytest.raises(rundir.CheckpointError, match="weights only"):
        rundir.load_checkpoint(run)
    assert not marker.exists()


def test_temp_files_of_interrupted_writes_are_removed_on_resume(tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 2})
    run = tmp_path / "run"
    with pytest.raises(Stopped):
        Trainer(cfg, run, stop_at_step=5).run()
    for name in (".checkpoint.pt.abc123.tmp", ".config.yaml.x9.tmp", ".result.json.q.tmp"):
        (run / name).write_bytes(b"x" * 1000)
    assert train(cfg, run)["status"] == "completed"
    assert not list(run.glob(".*.tmp"))
    assert "removed 3 temporary file(s)" in (run / "log.txt").read_text()


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        train(tiny_cfg(**{"train.epochs": 1}), tmp_path / "run")
    finally:
        os.umask(old)
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "result.json", "log.txt"):
        mode = stat.S_IMODE((tmp_path / "run" / name).stat().st_mode)
        assert mode == 0o644, (name, oct(mode))


def test_out_that_is_a_file_or_unwritable_is_one_line(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert "is a file" in one_line_error(subprocess.run(CLI + ["--out", str(a_file)], capture_output=True, text=True))
    under = one_line_error(subprocess.run(CLI + ["--out", str(a_file / "run")], capture_output=True, text=True))
    assert "is under" in under and str(a_file) in under
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the read-only case needs another user")
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    assert "not writable" in one_line_error(
        subprocess.run(CLI + ["--out", str(locked / "run")], capture_output=True, text=True)
    )


def test_read_only_folder_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    # root (as in CI containers) may write anywhere, so os.access is what decides; answer as a
    # non-root user would for this folder. This is the only stand-in in the file: the real check
    # runs as an unprivileged user in test_out_that_is_a_file_or_unwritable_is_one_line.
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else real(p, mode))
    with pytest.raises(ConfigError, match="not writable"):
        train(tiny_cfg(), locked / "run")
    assert not (locked / "run").exists()


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"model.preset": "vit_q"}, ["vit_q", "vit_c_fmnist"]),
        ({"model.stem": "spiral"}, ["spiral", "patchify"]),
        # images are resized to the preset's 224 px unless data.img_size says otherwise: 28 px, 16 px patches
        ({"model.preset": "vit_p_1gf", "data.img_size": 28}, ["img_size 28", "stride 16"]),
    ],
)
def test_bad_model_is_caught_before_the_folder_exists(tmp_path, overrides, words):
    with pytest.raises(ConfigError) as e:
        train(tiny_cfg(**overrides), tmp_path / "run")
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_dataloader_workers_do_not_keep_the_lock(tmp_path):
    """flock belongs to the open file: forked DataLoader workers must not inherit the run's lock,
    or a stopped run (its exception, and so its workers, kept alive as a notebook keeps the last
    traceback) would lock its own process out of the folder."""
    cfg = tiny_cfg(**{"data.in_memory": False, "data.workers": 2, "train.epochs": 1})
    with pytest.raises(Stopped) as kept:
        Trainer(cfg, tmp_path / "run", stop_at_step=3).run()
    assert kept.value is not None and rundir.lock_holder(tmp_path / "run") is None
    assert train(cfg, tmp_path / "run")["status"] == "completed"


def test_lock_is_released_when_opening_fails(tmp_path, monkeypatch):
    # Fault injection: clearing the old records fails once (a disk error), after the lock is taken.
    cfg = tiny_cfg(**{"train.epochs": 1})
    train(cfg, tmp_path / "run")

    def broken(run_dir):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(rundir, "clear_run", broken)
    with pytest.raises(OSError):
        train(cfg, tmp_path / "run", restart=True)
    assert rundir.lock_holder(tmp_path / "run") is None
    monkeypatch.undo()
    assert train(cfg, tmp_path / "run", restart=True)["status"] == "completed"


def test_a_stop_never_checkpoints_a_diverged_run(tmp_path):
    cfg = tiny_cfg(**{"optim.name": "sgd", "optim.lr": 1e6, "optim.warmup_epochs": 0})
    whole = train(cfg, tmp_path / "whole")
    stopped = Trainer(cfg, tmp_path / "cut", stop_at_step=5).run()[0]  # the stop finds the NaN first
    assert whole["status"] == stopped["status"] == "diverged" and stopped["reason"] == whole["reason"]


def test_checkpoint_that_does_not_fit_is_one_line(tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 2})
    with pytest.raises(Stopped):
        Trainer(cfg, tmp_path / "run", stop_at_step=5).run()
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    del ckpt["epoch_acc"]
    ckpt["model"].pop("pos_embed")
    torch.save(ckpt, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(rundir.CheckpointError) as e:
        train(cfg, tmp_path / "run")
    assert "does not fit this run" in str(e.value) and "--restart" in str(e.value) and "\n" not in str(e.value)
    assert rundir.read_result(tmp_path / "run")["status"] == "failed"


def test_restart_takes_the_precision_asked_for(tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(**{"train.epochs": 1, "train.precision": "fp32"}), run)
    train(tiny_cfg(**{"train.epochs": 1, "train.precision": "bf16"}), run, restart=True)
    assert rundir.read_result(run)["status"] == "completed"
    assert "precision: bf16" in (run / "config.yaml").read_text()
    assert "precision=bf16" in (run / "log.txt").read_text().split("restarted")[-1]


def test_group_skips_a_folder_another_trainer_holds(tmp_path, capsys):
    cfgs = [tiny_cfg(**{"train.epochs": 1, "train.seed": s}) for s in (0, 1)]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nfrom analysis import rundir\n"
            f"rundir.RunLock({str(tmp_path / 'b')!r}).acquire()\nprint('locked', flush=True)\n"
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        from analysis.engine.train import train_group

        results = train_group(cfgs, [tmp_path / "a", tmp_path / "b"])
    finally:
        holder.kill()
        holder.wait()
    assert results[0]["status"] == "completed" and results[1] is None
    assert f"skipped: {tmp_path / 'b'} is being trained by another process" in capsys.readouterr().out
    assert not (tmp_path / "b" / "result.json").exists()


def test_sweep_job_prints_the_traceback_and_records_this_attempts_failure(tmp_path, monkeypatch, capsys):
    # Fault injection: the optimizer step raises inside the loop (a bug in a run's code path).
    from analysis.engine.member import Member
    from analysis.sweeps.job import RunsFailed, run_group

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(tiny_cfg(**{"train.epochs": 1}).to_yaml())
    rundir.write_json(run / "result.json", {"status": "failed", "reason": "an earlier attempt"})

    def step(self, step):
        raise RuntimeError("deep bug in step")

    monkeypatch.setattr(Member, "step", step)
    with pytest.raises(RunsFailed):
        run_group([str(run)])
    out = capsys.readouterr().out
    assert "Traceback" in out and "deep bug in step" in out
    assert rundir.read_result(run)["reason"] == "RuntimeError: deep bug in step"
    assert rundir.read_json(run / "job.json")["pid"] == os.getpid()

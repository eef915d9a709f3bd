"""Sweeps without SLURM: spec sampling and validation, local launching, status, resubmit, collect."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from analysis import rundir
from analysis.config import RunConfig
from analysis.errors import ConfigError
from analysis.sweeps import Spec, Sweep, collect, model_name
from analysis.sweeps import results as collect_module
from analysis.sweeps.job import Preemption, plan, run_group
from analysis.engine.train import Stopped

REPO = Path(__file__).resolve().parents[1]
SMALL = {
    "data": {"train_per_class": 30, "test_per_class": 10},
    "train": {"epochs": 1, "batch_size": 50, "precision": "fp32", "progress": "lines"},
}
LR_RANGES = {"adamw": [2.5e-4, 8e-3], "sgd": [0.1, 3.2]}
CONTRACT = [
    "run",
    "run_dir",
    "status",
    "state",
    "reason",
    "model",
    "preset",
    "stem",
    "optimizer",
    "epochs",
    "lr",
    "wd",
    "batch_size",
    "seed",
    "error",
    "best_error",
    "top5_error",
    "ema_error",
    "diverged",
    "epochs_done",
    "seconds",
    "params",
    "flops",
]


def lrwd_spec(samples=8, seed=0, **extra):
    return {
        "name": "lrwd",
        "base": SMALL,
        "grid": {
            "preset": ["vit_p_fmnist_tiny", "vit_c_fmnist_tiny"],
            "optimizer": [{"optim.name": o, "optim.lr": {"log_uniform": r}} for o, r in LR_RANGES.items()],
        },
        "sample": {"optim.weight_decay": {"log_uniform": [0.02, 0.8]}},
        "samples": samples,
        "seed": seed,
        **extra,
    }


# -- specs ------------------------------------------------------------------------------------------
def test_sampling_is_deterministic_and_in_range():
    a, b = Spec.from_dict(lrwd_spec()).runs(), Spec.from_dict(lrwd_spec()).runs()
    assert [r["overrides"] for r in a] == [r["overrides"] for r in b]
    assert len(a) == 2 * 2 * 8
    c = Spec.from_dict(lrwd_spec(seed=1)).runs()
    assert [r["overrides"] for r in a] != [r["overrides"] for r in c]
    for r in a:
        cfg = r["cfg"]
        lo, hi = LR_RANGES[cfg.optim.name]
        assert lo <= cfg.optim.lr <= hi and 0.02 <= cfg.optim.weight_decay <= 0.8
        assert r["sampled"] == ["optim.lr", "optim.weight_decay"]
    assert len({r["run"] for r in a}) == len(a)
    assert a[7]["run"] == "0007-vit_p_fmnist_tiny-adamw"
    # log-uniform: about half the draws fall below the geometric mean of the range
    lrs = [r["cfg"].optim.lr for r in Spec.from_dict(lrwd_spec(samples=200)).runs() if r["cfg"].optim.name == "sgd"]
    assert 0.35 < sum(lr < (0.1 * 3.2) ** 0.5 for lr in lrs) / len(lrs) < 0.65


def test_quantization_and_duplicates_dropped():
    spec = Spec.from_dict(
        {
            "base": SMALL,
            "samples": 40,
            "seed": 3,
            "sample": {
                "optim.weight_decay": {"uniform": [0.0, 0.3], "step": 0.1},
                "train.epochs": {"uniform": [1, 3], "step": 1},
            },
        }
    )
    runs = spec.runs()
    wds = {r["cfg"].optim.weight_decay for r in runs}
    assert wds <= {0.0, 0.1, 0.2, 0.3}
    assert all(isinstance(r["cfg"].train.epochs, int) and 1 <= r["cfg"].train.epochs <= 3 for r in runs)
    assert len(runs) <= 4 * 3 and spec.dropped == 40 - len(runs) and spec.dropped > 0
    flat = [tuple(sorted(r["cfg"].flat().items(), key=str)) for r in runs]
    assert len(set(flat)) == len(flat)
    choice = Spec.from_dict(
        {
            "base": SMALL,
            "samples": 10,
            "grid": {"stem": ["conv", "patchify"]},
            "sample": {"optim.name": {"choice": ["adamw", "sgd"]}},
        }
    ).runs()
    assert len(choice) <= 4 and {r["cfg"].model.stem for r in choice} == {"conv", "patchify"}
    assert all("-conv" in r["run"] or "-patchify" in r["run"] for r in choice)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"sample": {"optim.lrr": {"uniform": [0, 1]}}}, ["optim.lrr"]),
        ({"grid": {"model.nope": [1]}}, ["model.nope"]),
        ({"sample": {"optim.lr": {"uniform": [2.0, 1.0]}}}, ["empty", "optim.lr"]),
        ({"sample": {"optim.lr": {"log_uniform": [0.0, 1.0]}}}, ["positive", "log_uniform"]),
        ({"sample": {"optim.lr": {"log_uniform": [-1e-3, 1.0]}}}, ["positive"]),
        ({"sample": {"optim.lr": {"normal": [0.0, 1.0]}}}, ["normal", "log_uniform, uniform, choice"]),
        ({"sample": {"optim.lr": {"choice": []}}}, ["choice", "non-empty"]),
        ({"sample": {"optim.lr": {"uniform": [0.1, 0.2], "step": 1.0}}}, ["no multiple of step"]),
        ({"samplez": 3}, ["samplez"]),
        ({"samples": 0}, ["samples"]),
        ({"launch": {"partition": 3}}, ["partition"]),
        ({"launch": {"gpu": 1}}, ["gpu", "gpus_per_node"]),
        ({"base": {"train": {"epochs": -1}}}, ["train.epochs"]),
        ({"grid": {"preset": ["vit_q_big"]}}, ["vit_q_big"]),
    ],
)
def test_bad_spec_is_one_line_error_before_anything_is_written(tmp_path, change, words):
    spec = {**lrwd_spec(), **change}
    with pytest.raises(ConfigError) as e:
        Sweep.from_dict(spec, root=tmp_path)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert not any(tmp_path.iterdir())


def test_all_job_specs_validate():
    specs = sorted((REPO / "jobs").glob("*.yaml"))
    assert len(specs) >= 13
    sizes = {p.stem: len(Spec.from_yaml(p).runs()) for p in specs}
    assert sizes["imagenet_lrwd_stability"] == 6 * 2 * 64
    assert sizes["fmnist_demo"] == 2 * 2 * 20  # what fits make demo's budget, never under 16 per group
    assert sizes["fmnist_demo_full"] == 2 * 2 * 24  # the 24 the powered study's rule asks for
    demo = Spec.from_yaml(REPO / "jobs" / "fmnist_demo.yaml").runs()
    study = Spec.from_yaml(REPO / "jobs" / "fmnist_power.yaml").runs()
    # the main job is the powered study's pick (p4, 10 epochs x 2000 images) with its recipe unchanged,
    # trained on seeds the study never saw
    picked = [r["cfg"] for r in study if r["cfg"].train.epochs == 10 and "p16" not in r["cfg"].model.preset]
    for r in demo:
        twin = next(
            c for c in picked if c.model.preset == r["cfg"].model.preset and c.optim.name == r["cfg"].optim.name
        )
        differs = set(twin.differences(r["cfg"])) - {"train.seed", "optim.lr", "optim.weight_decay"}
        assert not differs, differs
    assert not {r["cfg"].train.seed for r in demo} & {r["cfg"].train.seed for r in study}
    assert not {(r["cfg"].optim.lr, r["cfg"].optim.weight_decay) for r in demo} & {
        (r["cfg"].optim.lr, r["cfg"].optim.weight_decay) for r in study
    }
    for r in demo:  # small-data lrs are stated for the run's own batch: no rescaling
        cfg = r["cfg"]
        assert cfg.optim.ref_batch == cfg.train.batch_size
        assert cfg.effective_lr() == pytest.approx(cfg.optim.lr)
        if cfg.optim.name == "adamw":
            assert 2.5e-4 <= cfg.optim.lr <= 8e-3 and 0.02 <= cfg.optim.weight_decay <= 0.8
    for r in Spec.from_yaml(REPO / "jobs" / "imagenet_lrwd_stability.yaml").runs():
        cfg = r["cfg"]  # the paper's batch-2048 lr ranges, scaled to the run's batch by the engine
        assert cfg.optim.ref_batch == 2048
        assert cfg.effective_lr() == pytest.approx(cfg.optim.lr * cfg.train.batch_size / 2048)
    imagenet = Spec.from_yaml(REPO / "jobs" / "imagenet_peak.yaml").runs()
    assert {r["cfg"].data.name for r in imagenet} == {"imagefolder"}
    assert all(r["cfg"].train.epochs == 400 and r["cfg"].train.mixup == 0.8 for r in imagenet)


def test_same_folder_other_spec_is_refused(tmp_path):
    Sweep.from_dict(lrwd_spec(samples=1), root=tmp_path)
    Sweep.from_dict(lrwd_spec(samples=1), root=tmp_path)  # the same spec again is fine
    with pytest.raises(ConfigError, match="another spec"):
        Sweep.from_dict(lrwd_spec(samples=2), root=tmp_path)
    reordered = lrwd_spec(samples=1)  # the same axes in another order give other run ids: refused
    reordered["grid"] = dict(reversed(reordered["grid"].items()))
    with pytest.raises(ConfigError, match="another spec"):
        Sweep.from_dict(reordered, root=tmp_path)
    relaunched = {**lrwd_spec(samples=1), "launch": {"cluster": "local", "parallel": 2}}
    assert Sweep.from_dict(relaunched, root=tmp_path).launch_options().parallel == 2  # same runs


def test_model_names():
    assert model_name("vit_p_4gf", "patchify") == "ViT_P-4GF"
    assert model_name("vit_c_fmnist_tiny", "conv") == "ViT_C-fmnist_tiny"
    assert model_name("vit_c_4gf", "conv_ln") == "conv_ln-4GF"


def test_plan_batches_only_compatible_runs(tmp_path):
    dirs = []
    for i, (preset, lr, epochs) in enumerate(
        [
            ("vit_p_fmnist_tiny", 1e-3, 1),
            ("vit_p_fmnist_tiny", 2e-3, 1),
            ("vit_c_fmnist_tiny", 1e-3, 1),
            ("vit_p_fmnist_tiny", 3e-3, 1),
            ("vit_p_fmnist_tiny", 1e-3, 2),
        ]
    ):
        d = tmp_path / f"r{i}"
        d.mkdir()
        cfg = RunConfig().replace({"model.preset": preset, "optim.lr": lr, "train.epochs": epochs})
        (d / "config.yaml").write_text(cfg.to_yaml())
        dirs.append(str(d))
    assert plan(dirs, 1) == [[d] for d in dirs]
    assert plan(dirs, 2) == [[dirs[0], dirs[1]], [dirs[2]], [dirs[3]], [dirs[4]]]
    assert plan(dirs, 3) == [[dirs[0], dirs[1], dirs[3]], [dirs[2]], [dirs[4]]]


# -- launching locally --------------------------------------------------------------------------
@pytest.mark.slow
def test_local_sweep_end_to_end(tmp_path):
    """Two local processes train 3 runs (one fails); jobs run the launched snapshot of the code."""
    code = tmp_path / "src" / "analysis"
    shutil.copytree(REPO / "analysis", code, ignore=shutil.ignore_patterns("__pycache__"))
    spec = {
        "name": "e2e",
        "base": SMALL,
        "launch": {"cluster": "local", "parallel": 2, "timeout_min": 20},
        "grid": {
            "run": [
                {"preset": "vit_p_fmnist_tiny", "optimizer": "adamw"},
                {"preset": "vit_c_fmnist_tiny", "optimizer": "sgd"},
                {"preset": "vit_c_fmnist_tiny", "optimizer": "adamw", "train.batch_size": 1000},
            ]
        },
    }
    sweep = Sweep.from_dict(spec, root=tmp_path / "sweeps")
    ids = sweep.launch(code=code)
    # the user edits their code right after launching: the jobs must not see it
    (code / "engine" / "train.py").write_text("raise RuntimeError('edited after launch')\n")
    assert len(ids) == 2  # two processes, not one per run
    first = sweep.status()
    assert set(first["state"]) <= {"pending", "running"}  # launch returned before anything finished
    final = sweep.wait(timeout=600, poll=1)
    states = dict(zip(final["run"], final["state"]))
    ok, bad = "0000-vit_p_fmnist_tiny-adamw", "0002-vit_c_fmnist_tiny-adamw"
    assert states == {ok: "completed", "0001-vit_c_fmnist_tiny-sgd": "completed", bad: "failed"}
    assert "exceeds" in final.set_index("run").loc[bad, "log_tail"]
    launch = json.loads((sweep.dir / "launches.json").read_text())["launches"][0]
    assert [j["runs"] for j in launch["jobs"]] == [[ok, "0001-vit_c_fmnist_tiny-sgd"], [bad]]
    snapshot = sweep.dir / launch["code"] / "analysis"
    assert "edited after launch" not in (snapshot / "engine" / "train.py").read_text()
    logs = "".join(p.read_text() for p in (sweep.dir / launch["submitit"]).glob("*_log.out"))
    assert f"analysis code: {snapshot}" in logs

    frame = collect(sweep.dir)
    assert list(frame.columns[: len(CONTRACT)]) == CONTRACT
    assert "cfg.optim.warmup_epochs" in frame.columns
    row = frame.set_index("run").loc[ok]
    assert row["status"] == "completed" and row["model"] == "ViT_P-fmnist_tiny" and 0 <= row["error"] <= 100
    default = RunConfig().optim
    assert row["epochs_done"] == 1 and row["params"] > 0
    assert row["lr"] == pytest.approx(default.lr * 50 / default.ref_batch)
    failed = frame.set_index("run").loc[bad]
    assert failed["status"] == "failed" and pd.isna(failed["error"]) and "exceeds" in failed["reason"]

    # complete runs are never launched again; resubmit respects the retry cap
    assert sweep.launch(runs=[ok, "0001-vit_c_fmnist_tiny-sgd"]) == []
    with pytest.warns(UserWarning, match=bad):
        assert sweep.resubmit(max_retries=0) == []

    # a new process finds everything from the folder alone
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "analysis", "sweep", "status", str(sweep.dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "completed: 2, failed: 1" in out.stdout and "exceeds" in out.stdout
    for name in ("table.csv", "table.parquet"):
        out = subprocess.run(
            [sys.executable, "-m", "analysis", "sweep", "collect", str(sweep.dir), "--out", str(tmp_path / name)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
    back = pd.read_parquet(tmp_path / "table.parquet")
    assert len(back) == 3 and set(back["status"]) == {"completed", "failed"}


@pytest.mark.slow
def test_local_cancel_then_resubmit_completes(tmp_path):
    base = {**SMALL, "data": {"train_per_class": 100, "test_per_class": 10}, "train": {**SMALL["train"], "epochs": 2}}
    sweep = Sweep.from_dict({"name": "cancel", "base": base, "launch": {"cluster": "local"}}, root=tmp_path)
    sweep.launch()
    run = sweep.run_ids[0]
    deadline = time.monotonic() + 300
    while sweep.status()["state"][0] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert sweep.cancel() != []
    status = sweep.wait(timeout=60, poll=0.5)
    assert status["state"][0] == "cancelled" and not rundir.is_complete(sweep.run_dir(run))
    reopened = Sweep.open(sweep.dir)  # the cancellation is on record for a new process too
    assert reopened.status()["state"][0] == "cancelled"
    assert len(reopened.resubmit()) == 1
    final = reopened.wait(timeout=600, poll=1)
    assert final["state"][0] == "completed" and final["attempts"][0] == 2


@pytest.mark.slow
def test_preemption_signal_checkpoints_and_resume_matches(tmp_path, monkeypatch):
    """USR2 during run_group: the trainer checkpoints and stops; rerunning resumes to the same end."""
    cfg = RunConfig().replace(
        {
            "data.train_per_class": 60,
            "data.test_per_class": 10,
            "train.epochs": 2,
            "train.batch_size": 50,
            "train.precision": "fp32",
            "train.progress": "none",
        }
    )
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
        (d / "config.yaml").write_text(cfg.to_yaml())
    run_group([str(dirs[0])])

    # the signal comes with the run's first log line (written as it starts, in the training thread), so
    # it always arrives before the run's 24 steps end: the real log_line still writes, then USR2 is sent
    log_line = rundir.log_line

    def signal_when_started(run_dir, text):
        log_line(run_dir, text)
        if Path(run_dir) == dirs[1] and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGUSR2)

    sent = []
    monkeypatch.setattr(rundir, "log_line", signal_when_started)
    with pytest.raises(Stopped):
        run_group([str(dirs[1])])
    assert (dirs[1] / rundir.CHECKPOINT).exists() and not rundir.is_complete(dirs[1])
    assert "stopped and checkpointed" in (dirs[1] / rundir.LOG).read_text()
    assert signal.getsignal(signal.SIGUSR2) in (signal.SIG_DFL, None) and sent == [True]
    monkeypatch.undo()
    run_group([str(dirs[1])])
    a, b = rundir.read_metrics(dirs[0]), rundir.read_metrics(dirs[1])
    for key in ("test_top1_err", "test_top5_err", "train_loss"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-5)


def test_preemption_hands_over_to_previous_handler():
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    try:
        with Preemption() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.requested and calls == []
            with pytest.raises(Stopped):
                stop.hand_over()
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


# -- collecting ---------------------------------------------------------------------------------
def _fake_run(d: Path, cfg: RunConfig, epochs_done: int, result: dict | str | None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(cfg.to_yaml())
    for e in range(1, epochs_done + 1):
        rundir.append_metrics(
            d,
            {
                "epoch": e,
                "step": 10 * e,
                "train_loss": 1.0,
                "test_top1_err": 50.0 - e,
                "test_top5_err": 5.0,
                "ema_top1_err": None,
                "ema_top5_err": None,
                "lr": 0.1,
                "seconds": 1.0,
                "images_per_s": 100.0,
                "elapsed": 1.0 * e,
            },
        )
    if isinstance(result, dict):
        rundir.write_json(d / "result.json", result)
    elif isinstance(result, str):
        (d / "result.json").write_text(result)


@pytest.mark.filterwarnings("ignore:.*unreadable")
def test_collect_tolerates_partial_and_corrupt_dirs(tmp_path, monkeypatch):
    cfg = RunConfig().replace({"train.epochs": 3})
    done = {
        "status": "completed",
        "reason": None,
        "epoch": 3,
        "step": 30,
        "top1_err": 12.5,
        "top5_err": 1.0,
        "best_top1_err": 12.0,
        "ema_top1_err": None,
        "params": 1000,
        "flops": 5000,
        "seconds": 3.0,
    }
    _fake_run(tmp_path / "done", cfg, 3, done)
    _fake_run(
        tmp_path / "diverged",
        cfg,
        1,
        {**done, "status": "diverged", "reason": "non-finite loss", "top1_err": 100.0, "best_top1_err": 100.0},
    )
    _fake_run(tmp_path / "running", cfg, 2, None)
    _fake_run(tmp_path / "pending", cfg, 0, None)
    _fake_run(tmp_path / "torn", cfg, 1, '{"status": "compl')
    (tmp_path / "badcfg").mkdir()
    (tmp_path / "badcfg" / "config.yaml").write_text("train: [unclosed\n")
    (tmp_path / "notarun").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = collect(tmp_path)
    messages = " ".join(str(w.message) for w in caught)
    assert "torn" in messages and "badcfg" in messages
    by = frame.set_index("run")
    assert sorted(by.index) == ["diverged", "done", "pending", "running", "torn"]
    assert by.loc["done", "status"] == "completed" and by.loc["done", "error"] == 12.5
    assert by.loc["done", "best_error"] == 12.0 and by.loc["done", "epochs_done"] == 3
    assert by.loc["diverged", "error"] == 100.0 and bool(by.loc["diverged", "diverged"])
    assert by.loc["running", "status"] == "running" and pd.isna(by.loc["running", "error"])
    assert by.loc["pending", "status"] == "pending" and by.loc["pending", "epochs_done"] == 0
    assert by.loc["torn", "status"] == "failed" and "result.json" in by.loc["torn", "reason"]
    assert by.loc["done", "model"] == "ViT_C-fmnist_tiny" and by.loc["done", "stem"] == "conv"

    # re-collecting reads only run directories whose files changed
    calls = []
    original = collect_module.run_row
    monkeypatch.setattr(collect_module, "run_row", lambda *a: calls.append(a[0]) or original(*a))
    collect(tmp_path)
    assert sorted(calls) == ["torn"]  # unreadable result: not cached as final... but only it
    calls.clear()
    # a rewrite is seen with no wait: write_json renames a new file into place, and the cache key holds
    # the inode (rundir.file_key), so equal size and a coarse mtime cannot hide it
    before = rundir.file_key(tmp_path / "done" / "result.json")
    rundir.write_json(tmp_path / "done" / "result.json", {**done, "top1_err": 11.0})
    assert rundir.file_key(tmp_path / "done" / "result.json")[0] != before[0]
    again = collect(tmp_path).set_index("run")
    assert "done" in calls and "running" not in calls
    assert again.loc["done", "error"] == 11.0


def test_collect_sweep_reports_missing_run_dirs(tmp_path):
    sweep = Sweep.from_dict(lrwd_spec(samples=1), root=tmp_path)
    shutil.rmtree(sweep.run_dir(sweep.run_ids[0]))
    with pytest.warns(UserWarning, match=sweep.run_ids[0]):
        frame = collect(sweep.dir)
    assert len(frame) == len(sweep.run_ids) - 1
    assert set(frame["status"]) == {"pending"}  # never launched
    assert {"optim.lr", "optim.weight_decay"} <= set(frame.columns)  # the sampled hyperparameters
    assert frame["cfg.optim.lr"].tolist() == frame["optim.lr"].tolist()
    status = sweep.status()
    assert set(status["state"]) == {"not_launched"}
    html = status._repr_html_()
    assert "<table>" in html and "not_launched" in html


def test_slurm_options_reach_the_sbatch_script(tmp_path):
    """Launch options from the spec and the call become sbatch options (no cluster needed)."""
    import submitit

    spec = {
        **lrwd_spec(samples=1),
        "launch": {
            "partition": "gpu",
            "account": "vision",
            "qos": "high",
            "gpus_per_node": 8,
            "mem_gb": 400,
            "timeout_min": 600,
        },
    }
    sweep = Sweep.from_dict(spec, root=tmp_path)
    opts = sweep.launch_options(
        constraint="volta32gb", additional={"exclude": "node[1-2]"}, parallel=16, cpus_per_task=10
    )
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(**opts.executor_params("slurm", sweep.name))
    script = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in (
        "--partition=gpu",
        "--account=vision",
        "--qos=high",
        "--constraint=volta32gb",
        "--gpus-per-node=8",
        "--ntasks-per-node=8",
        "--cpus-per-task=10",
        "--mem=400GB",
        "--time=600",
        "--exclude='node[1-2]'",
        "--signal=USR2@120",
    ):
        assert f"#SBATCH {line}" in script, line
    assert executor._executor.parameters["array_parallelism"] == 16
    with pytest.raises(ConfigError, match="gpus_per_node"):
        sweep.launch_options(gpus_per_node="eight")


def test_auto_parallel_local_jobs_share_the_cores(monkeypatch):
    from analysis.sweeps import LaunchConfig, options

    monkeypatch.setattr(options, "available_cores", lambda: 8)
    auto = LaunchConfig.from_dict({"parallel": "auto"})
    assert [auto.job_threads("local", n) for n in (1, 3, 8, 20)] == [8, 2, 1, 1]
    assert LaunchConfig().job_threads("local", 4) == 2  # locally no value means auto
    assert LaunchConfig.from_dict({"parallel": 4}).job_threads("local", 4) is None
    assert auto.job_threads("slurm", 4) is None  # SLURM jobs take their allocation (SLURM_CPUS_PER_TASK)


def test_a_job_gives_its_share_of_threads_to_runs_without_train_threads(tmp_path, monkeypatch):
    """Runs leaving train.threads null train with the job's share, before and after a run that sets its own."""
    import torch

    from analysis.engine.precision import run_device
    from analysis.sweeps import job

    dirs = []
    for i, threads in enumerate([None, 3, None]):
        cfg = RunConfig().replace({"train.threads": threads})
        _fake_run(tmp_path / f"r{i}", cfg, 0, None)
        dirs.append(str(tmp_path / f"r{i}"))
    seen = []

    class Trainer:  # what run_group needs of the engine's Trainer; run_device sets the threads as the engine does
        def __init__(self, cfgs, run_dirs, job=None):
            self.cfgs = cfgs

        def run(self):
            run_device(self.cfgs[0], SimpleNamespace(world=1, rank=0))
            seen.append(torch.get_num_threads())
            return [{"status": "completed"}]

    monkeypatch.setattr(job, "Trainer", Trainer)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    before = torch.get_num_threads()
    try:
        job.run_group(dirs, 1, threads=2)
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 3, 2]


def test_readme_shows_the_main_jobs_spec():
    """The README's yaml block is jobs/fmnist_demo.yaml as it is (its comment lines aside)."""
    readme = (REPO / "README.md").read_text()
    head = "# jobs/fmnist_demo.yaml, the main job's spec"
    assert head in readme
    block = readme.split(head, 1)[1].split("\n", 1)[1].split("```", 1)[0]
    spec = (REPO / "jobs" / "fmnist_demo.yaml").read_text()
    lines = [line for line in spec.splitlines() if not line.lstrip().startswith("#")]
    assert block.strip() == "\n".join(lines).strip()

"""Sweep throughput on this machine's cores, for the main job's kind of sweep (its presets, read from
jobs/fmnist_demo.yaml, on a Fashion-MNIST subset, log-uniform lr/wd, AdamW and SGD), in these layouts:

- engine_process_per_run: one run per process, as many one-thread processes side by side as there
  are cores, each training its share one run after another (the main job's layout; the best
  process-per-run layout on a 2-core CPU, where two threads in one process scale badly);
- reference_process_per_run: the same layout with the plain timm reference loop;
- stacked_per_core: the same processes, each training its share as stacked groups
  (analysis.engine.train.train_group: one vmapped forward/backward for all runs of a preset);
- stacked_one_process: one process with one thread per core, all runs of a preset stacked.

Wall times include process start-up, data loading and a test pass per epoch. Ratios are against
engine_process_per_run measured in the same run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RANGES = {"adamw": ((2.5e-4, 8e-3), (0.02, 0.8)), "sgd": ((0.025, 0.8), (1.25e-5, 4e-4))}


def main_job_presets() -> list[str]:
    """The main job's preset pair (jobs/fmnist_demo.yaml's grid)."""
    import yaml

    return list(yaml.safe_load((REPO / "jobs" / "fmnist_demo.yaml").read_text())["grid"]["preset"])


def sample_runs(samples: int, seed: int = 0, presets: list[str] | None = None) -> list[dict]:
    """Dotted overrides of every run: preset x optimizer x `samples` log-uniform (lr, wd) pairs."""
    rng = np.random.default_rng(seed)
    out = []
    for preset in presets or main_job_presets():
        for name, ((lr_lo, lr_hi), (wd_lo, wd_hi)) in RANGES.items():
            for i in range(samples):
                out.append(
                    {
                        "model.preset": preset,
                        "optim.name": name,
                        "train.seed": i,
                        "optim.lr": math.exp(rng.uniform(math.log(lr_lo), math.log(lr_hi))),
                        "optim.weight_decay": math.exp(rng.uniform(math.log(wd_lo), math.log(wd_hi))),
                    }
                )
    return out


def base_overrides(epochs: int, per_class: int, test_per_class: int, batch: int) -> dict:
    return {
        "data.train_per_class": per_class,
        "data.test_per_class": test_per_class,
        "train.epochs": epochs,
        "train.batch_size": batch,
        "train.precision": "fp32",
        "train.progress": "none",
        "train.checkpoint_minutes": 0,
        "optim.ref_batch": batch,
        "train.device": "cpu",
        "train.label_smoothing": 0.1,
    }


def worker(spec: str) -> None:
    """One benchmark process: train its runs one by one ("solo") or stacked per preset ("stacked")."""
    import torch

    from analysis.config import RunConfig
    from analysis.engine.train import train, train_group

    s = json.loads(spec)
    torch.set_num_threads(s["threads"])
    cfgs = [(Path(s["out"]) / f"run{i}", RunConfig().replace({**s["base"], **run})) for i, run in s["runs"]]
    if s["mode"] == "solo":
        for out, cfg in cfgs:
            train(cfg, out)
        return
    for preset in dict.fromkeys(c.model.preset for _, c in cfgs):
        mine = [(o, c) for o, c in cfgs if c.model.preset == preset]
        if mine:
            train_group([c for _, c in mine], [o for o, _ in mine])


def _run_parallel(cmds: list[list[str]], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for cmd in cmds
    ]
    for p, cmd in zip(procs, cmds):
        _, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"{' '.join(cmd[:4])} failed: {err.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def _workers(runs: list[dict], base: dict, out: Path, mode: str, processes: int, threads: int) -> list[list[str]]:
    shares = [[(i, r) for i, r in enumerate(runs) if i % processes == p] for p in range(processes)]
    return [
        [
            sys.executable,
            "-c",
            "from benchmarks.sweep import worker; worker(%r)"
            % json.dumps({"runs": share, "base": base, "out": str(out), "mode": mode, "threads": threads}),
        ]
        for share in shares
    ]


def _reference(runs: list[dict], base: dict, processes: int) -> list[list[str]]:
    """One shell loop per process running its share of reference runs one after another (the
    reference loop has AdamW only: SGD runs take AdamW with lr 1e-3, which costs the same)."""
    cmds = []
    for p in range(processes):
        lines = [
            " ".join(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.reference",
                    "--preset",
                    r["model.preset"],
                    "--epochs",
                    str(base["train.epochs"]),
                    "--batch-size",
                    str(base["train.batch_size"]),
                    "--lr",
                    str(r["optim.lr"] if r["optim.name"] == "adamw" else 1e-3),
                    "--wd",
                    str(r["optim.weight_decay"]),
                    "--seed",
                    str(r["train.seed"]),
                    "--train-per-class",
                    str(base["data.train_per_class"]),
                    "--test-per-class",
                    str(base["data.test_per_class"]),
                    ">/dev/null",
                ]
            )
            for i, r in enumerate(runs)
            if i % processes == p
        ]
        cmds.append(["bash", "-c", " && ".join(lines)])
    return cmds


def run(quick: bool = False) -> dict:
    """Time each layout once (a sweep is long), interleaving nothing: the layouts run in turn."""
    samples, epochs, per_class, test_per_class = (2, 1, 100, 50) if quick else (4, 2, 300, 100)
    batch, cores = 128, os.cpu_count() or 1
    presets = main_job_presets()
    runs = sample_runs(samples, presets=presets)
    base = base_overrides(epochs, per_class, test_per_class, batch)
    walls = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        walls["engine_process_per_run"] = _run_parallel(_workers(runs, base, d / "solo", "solo", cores, 1), 1)
        walls["stacked_per_core"] = _run_parallel(_workers(runs, base, d / "stacked", "stacked", cores, 1), 1)
        walls["stacked_one_process"] = _run_parallel(_workers(runs, base, d / "one", "stacked", 1, cores), cores)
        walls["reference_process_per_run"] = _run_parallel(_reference(runs, base, cores), 1)
    n, ref = len(runs), walls["engine_process_per_run"]
    rows = {
        k: {"wall_s": w, "runs_per_hour": n / w * 3600, "vs_engine_process_per_run": ref / w} for k, w in walls.items()
    }
    return {
        "runs": n,
        "epochs": epochs,
        "train_images": per_class * 10,
        "test_images": test_per_class * 10,
        "batch_size": batch,
        "cores": cores,
        "presets": presets,
        "results": rows,
        "notes": "one measurement of each layout, one after another; processes of one thread each "
        "(stacked_one_process: one process with a thread per core)",
    }

"""Sweep throughput: the small-data stability sweep (tiny presets, Fashion-MNIST subset, random
log-uniform lr/wd, AdamW) as batched groups in one process, against one process per run with
the reference loop (each run its own `python -m benchmarks.reference`, one after another).
Wall times include process start-up, data loading and a test pass per epoch for both.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PRESETS = ["vit_p_fmnist_tiny", "vit_c_fmnist_tiny"]


def sample_runs(runs_per_preset: int, seed: int = 0) -> list[dict]:
    """Dotted overrides of every run: each preset x runs_per_preset log-uniform (lr, wd) pairs."""
    rng = np.random.default_rng(seed)
    out = []
    for preset in PRESETS:
        for i in range(runs_per_preset):
            lr = math.exp(rng.uniform(math.log(2.5e-4), math.log(8e-3)))
            wd = math.exp(rng.uniform(math.log(0.02), math.log(0.8)))
            out.append({"model.preset": preset, "optim.lr": lr, "optim.weight_decay": wd, "train.seed": i})
    return out


def base_overrides(epochs: int, per_class: int, test_per_class: int, batch: int) -> dict:
    return {"data.train_per_class": per_class, "data.test_per_class": test_per_class, "train.epochs": epochs,
            "train.batch_size": batch, "train.precision": "fp32", "train.progress": "none",
            "train.checkpoint_minutes": 0, "optim.ref_batch": batch, "train.device": "cpu"}


def batched_main(spec: str) -> None:
    """Entry of the batched sweep process: train every preset's runs as one group."""
    from analysis.batched import train_group
    from analysis.config import RunConfig

    s = json.loads(spec)
    by_preset: dict[str, list] = {}
    for i, run in enumerate(s["runs"]):
        by_preset.setdefault(run["model.preset"], []).append((i, RunConfig().replace({**s["base"], **run})))
    for runs in by_preset.values():
        train_group([c for _, c in runs], [Path(s["out"]) / f"run{i}" for i, _ in runs])


def _timed(cmds: list[list[str]]) -> float:
    t0 = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def run(quick: bool = False) -> dict:
    """Time the batched sweep, the reference (and, in full mode, the engine one process per run)."""
    runs_per_preset, epochs = (3, 1) if quick else (4, 2)
    per_class, test_per_class, batch = 100, 50, 100
    runs = sample_runs(runs_per_preset)
    base = base_overrides(epochs, per_class, test_per_class, batch)
    py = sys.executable
    walls = {}
    with tempfile.TemporaryDirectory() as d:
        spec = json.dumps({"runs": runs, "base": base, "out": str(Path(d) / "batched")})
        walls["batched_one_process"] = _timed([[py, "-c", f"from benchmarks.sweep import batched_main; batched_main({spec!r})"]])
        ref_cmds = [[py, "-m", "benchmarks.reference", "--preset", r["model.preset"], "--epochs", str(epochs),
                     "--batch-size", str(batch), "--lr", str(r["optim.lr"]), "--wd", str(r["optim.weight_decay"]),
                     "--seed", str(r["train.seed"]), "--train-per-class", str(per_class),
                     "--test-per-class", str(test_per_class)] for r in runs]
        walls["reference_process_per_run"] = _timed(ref_cmds)
        if not quick:
            eng_cmds = [[py, "-m", "analysis", "train", "--preset", r["model.preset"], "--out", str(Path(d) / f"solo{i}")]
                        + [f"{k}={v}" for k, v in {**base, **r}.items() if k != "model.preset"] for i, r in enumerate(runs)]
            walls["engine_process_per_run"] = _timed(eng_cmds)
    n = len(runs)
    rows = {k: {"wall_s": w, "runs_per_hour": n / w * 3600, "run_epochs_per_hour": n * epochs / w * 3600}
            for k, w in walls.items()}
    ref = walls["reference_process_per_run"]
    for k in rows:
        rows[k]["speedup_vs_reference"] = ref / walls[k]
    return {"runs": n, "epochs": epochs, "train_images": per_class * 10, "test_images": test_per_class * 10,
            "batch_size": batch, "presets": PRESETS, "results": rows,
            "notes": "one measurement each (a sweep is long); reference runs are sequential processes with "
                     "torch's default threads"}

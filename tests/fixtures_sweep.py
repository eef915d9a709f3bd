"""A small, realistic sweep for the figure tests: real run folders, read by collect().

Two Fashion-MNIST models (patchify and conv stem) x {adamw, sgd}; 16 random log-uniform (lr, wd)
pairs each at 20 epochs, and tuned runs at 10/20/40 epochs with two seeds. Errors follow a bowl
in log lr / log wd that is steeper for the patchify stem; patchify + SGD at high lr diverges. One
failed, one running and one pending run have no error. Each run folder holds the files the engine
writes (config.yaml, result.json when it ended, metrics.jsonl of its finished epochs), and the
frame is `analysis.sweeps.collect` of them: the figure tests see collect()'s own columns.
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.config import RunConfig
from analysis.sweeps import collect

MODELS = {  # display name: (preset, stem, base error, sensitivity)
    "ViT_C-fmnist": ("vit_c_fmnist", "conv", 9.0, 2.0),
    "ViT_P-fmnist": ("vit_p_fmnist", "patchify", 10.5, 5.0),
}
GOOD = {"adamw": (2e-3, 0.2), "sgd": (0.8, 4e-5)}  # (lr, wd) at the bowl's bottom
RANGES = {"adamw": ((2.5e-4, 8e-3), (0.02, 0.8)), "sgd": ((0.1, 3.2), (4e-6, 1.2e-4))}


def _error(rng, model: str, optimizer: str, lr: float, wd: float, epochs: int) -> float:
    _, stem, base, sens = MODELS[model]
    lr0, wd0 = GOOD[optimizer]
    bowl = math.log10(lr / lr0) ** 2 + 0.5 * math.log10(wd / wd0) ** 2
    gap = 2.5 if (stem == "patchify" and optimizer == "sgd") else 0.3 if optimizer == "sgd" else 0.0
    length = -1.2 * math.log2(epochs / 20)
    return float(base + gap + length + sens * bowl + rng.normal(0, 0.2))


def make_sweep_frame(root: Path, seed: int = 0) -> pd.DataFrame:
    """Return the fixture frame; writes each run's directory under `root`."""
    rng = np.random.default_rng(seed)
    specs = []
    for model in MODELS:
        for optimizer in ("adamw", "sgd"):
            (lr_lo, lr_hi), (wd_lo, wd_hi) = RANGES[optimizer]
            for _ in range(16):
                lr = float(np.exp(rng.uniform(np.log(lr_lo), np.log(lr_hi))))
                wd = float(np.exp(rng.uniform(np.log(wd_lo), np.log(wd_hi))))
                specs.append((model, optimizer, 20, lr, wd, 0))
            for epochs in (10, 20, 40):
                for s in (0, 1):
                    specs.append((model, optimizer, epochs, *GOOD[optimizer], s))

    runs = []  # (config overrides, result or None, epochs done, error, diverged)
    for model, optimizer, epochs, lr, wd, run_seed in specs:
        stem = MODELS[model][1]
        error = _error(rng, model, optimizer, lr, wd, epochs)
        diverged = stem == "patchify" and optimizer == "sgd" and lr > 1.6 and rng.random() < 0.8
        done = int(rng.integers(2, epochs)) if diverged else epochs
        err = 100.0 if diverged else error
        result = {
            "status": "diverged" if diverged else "completed",
            "reason": "loss is NaN" if diverged else None,
            "epoch": done,
            "top1_err": err,
            "best_top1_err": 100.0 if diverged else error - 0.1,
            "top5_err": 100.0 if diverged else error / 8,
            "ema_top1_err": None,
            "seconds": 3.0 * done,
            "params": 1.2e6,
            "flops": 5.0e7,
        }
        runs.append((_overrides(model, optimizer, epochs, lr, wd, run_seed), result, done, error, diverged))
    # runs without an error: one failed, one still running, one not started
    for status, model, optimizer, done in (
        ("failed", "ViT_C-fmnist", "sgd", 1),
        ("running", "ViT_P-fmnist", "adamw", 7),
        ("pending", "ViT_C-fmnist", "adamw", 0),
    ):
        result = {"status": "failed", "reason": "CUDA error"} if status == "failed" else None
        runs.append((_overrides(model, optimizer, 20, *GOOD[optimizer], 0), result, done, math.nan, False))
    for i, (overrides, result, done, error, diverged) in enumerate(runs):
        run_dir = root / f"r{i:03d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(RunConfig().replace(overrides).to_yaml())
        if result is not None:
            (run_dir / "result.json").write_text(json.dumps(result))
        write_metrics(run_dir, overrides["train.epochs"], done, overrides["optim.lr"], error, diverged)
    return collect(root, cache=False)


def _overrides(model: str, optimizer: str, epochs: int, lr: float, wd: float, seed: int) -> dict:
    """A run's config: the model's preset, the optimizer at its lr and wd for batch 256."""
    return {
        "model.preset": MODELS[model][0],
        "optim.name": optimizer,
        "optim.lr": lr,
        "optim.weight_decay": wd,
        "optim.ref_batch": 256,
        "optim.warmup_epochs": 2,
        "train.batch_size": 256,
        "train.epochs": epochs,
        "train.seed": seed,
    }


def write_metrics(run_dir: Path, epochs: int, done: int, peak_lr: float, final_err: float, diverged: bool) -> None:
    """Write `done` epochs of a plausible metrics.jsonl (warmup + cosine lr, decaying error)."""
    lines = []
    for e in range(1, done + 1):
        lr = peak_lr * (e / 2 if e <= 2 else 0.5 * (1 + math.cos(math.pi * (e - 2) / (epochs - 2))))
        nan_now = diverged and e == done
        err = 60.0 if (diverged or math.isnan(final_err)) else final_err + 40.0 * math.exp(-e / 3)
        lines.append(
            json.dumps(
                {
                    "epoch": e,
                    "step": 235 * e,
                    "train_loss": None if nan_now else 2.3 * math.exp(-e / 5) + 0.3,
                    "test_top1_err": 100.0 if nan_now else err,
                    "test_top5_err": err / 8,
                    "ema_top1_err": None,
                    "ema_top5_err": None,
                    "lr": lr,
                    "seconds": 3.0,
                    "images_per_s": 20000.0,
                    "elapsed": 3.0 * e,
                }
            )
        )
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))


@pytest.fixture(scope="session")
def sweep_frame(tmp_path_factory) -> pd.DataFrame:
    """The fixture sweep frame (a fresh copy per test) with its run directories."""
    return make_sweep_frame(tmp_path_factory.mktemp("sweep"))


@pytest.fixture
def sweep(sweep_frame) -> pd.DataFrame:
    """A copy of the fixture frame that a test may change."""
    return sweep_frame.copy()

"""A small, realistic collected sweep frame with real run directories, for the figure tests.

Shaped like the collected sweep (one row per run, the columns of the sweep contract): two
Fashion-MNIST models (patchify and conv stem) x {adamw, sgd}; 16 random log-uniform (lr, wd)
pairs each at 20 epochs, and tuned runs at 10/20/40 epochs with two seeds. Errors follow a
bowl in log lr / log wd that is steeper for the patchify stem; patchify + SGD at high lr
diverges. One failed, one running and one pending run have no error. Every run has a
directory with a metrics.jsonl of its finished epochs.
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

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

    rows = []
    for i, (model, optimizer, epochs, lr, wd, run_seed) in enumerate(specs):
        preset, stem, _, _ = MODELS[model]
        error = _error(rng, model, optimizer, lr, wd, epochs)
        diverged = stem == "patchify" and optimizer == "sgd" and lr > 1.6 and rng.random() < 0.8
        status, epochs_done = ("diverged", int(rng.integers(2, epochs))) if diverged else ("completed", epochs)
        rows.append(
            dict(
                run=f"r{i:03d}",
                status=status,
                reason="loss is NaN" if diverged else None,
                model=model,
                preset=preset,
                stem=stem,
                optimizer=optimizer,
                epochs=epochs,
                lr=lr,
                wd=wd,
                batch_size=256,
                seed=run_seed,
                error=100.0 if diverged else error,
                best_error=100.0 if diverged else error - 0.1,
                top5_error=100.0 if diverged else error / 8,
                ema_error=np.nan,
                diverged=diverged,
                epochs_done=epochs_done,
                seconds=3.0 * epochs_done,
                params=1.2e6,
                flops=5.0e7,
            )
        )
    # runs without an error: one failed, one still running, one not started
    for status, model, optimizer, done in (
        ("failed", "ViT_C-fmnist", "sgd", 1),
        ("running", "ViT_P-fmnist", "adamw", 7),
        ("pending", "ViT_C-fmnist", "adamw", 0),
    ):
        preset, stem, _, _ = MODELS[model]
        lr, wd = GOOD[optimizer]
        rows.append(
            dict(
                run=f"r{len(rows):03d}",
                status=status,
                reason="CUDA error" if status == "failed" else None,
                model=model,
                preset=preset,
                stem=stem,
                optimizer=optimizer,
                epochs=20,
                lr=lr,
                wd=wd,
                batch_size=256,
                seed=0,
                error=np.nan,
                best_error=np.nan,
                top5_error=np.nan,
                ema_error=np.nan,
                diverged=False,
                epochs_done=done,
                seconds=3.0 * done,
                params=1.2e6,
                flops=5.0e7,
            )
        )
    frame = pd.DataFrame(rows)
    frame["cfg.optim.warmup_epochs"] = 2
    frame.insert(1, "run_dir", [str(root / run) for run in frame["run"]])
    for row in frame.itertuples():
        write_metrics(Path(row.run_dir), row.epochs, row.epochs_done, row.lr, row.error, row.diverged)
    return frame


def write_metrics(run_dir: Path, epochs: int, done: int, peak_lr: float, final_err: float, diverged: bool) -> None:
    """Write `done` epochs of a plausible metrics.jsonl (warmup + cosine lr, decaying error)."""
    run_dir.mkdir(parents=True, exist_ok=True)
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

"""Trained runs back from their run directories: config, model (trained or at init), test images.

    model = load_model("runs/demo/vit_c")          # last checkpoint's weights, eval mode
    images, labels, raw = sample_images(load_config("runs/demo/vit_c"), n=8)
"""

from __future__ import annotations

import sys
from contextlib import nullcontext, redirect_stderr
from pathlib import Path

import torch

from analysis import config, rundir
from analysis import data as D
from analysis.errors import ConfigError


def load_config(run_dir: str | Path) -> config.RunConfig:
    """The run's resolved config."""
    path = Path(run_dir) / rundir.CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {rundir.CONFIG}); train one with "
                          "`python -m analysis train --out DIR`")
    return config.load(path)


def load_model(run_dir: str | Path, ema: bool = False, initial: bool = False, device: str = "cpu",
               fused_attn: bool = True) -> torch.nn.Module:
    """The run's model in eval mode: the last checkpoint's weights (its EMA weights with ema=True),
    or the untrained initialisation the run started from with initial=True."""
    from analysis.train import build_model, seed_everything

    cfg = load_config(run_dir)
    cfg.model.fused_attn = fused_attn
    seed_everything(cfg.train.seed)
    model = build_model(cfg)
    if not initial:
        ckpt = rundir.load_checkpoint(run_dir)
        if ckpt is None:
            raise ConfigError(f"{run_dir} has no {rundir.CHECKPOINT} yet; wait for its first epoch or use initial=True")
        key = "ema" if ema else "model"
        if key not in ckpt:
            raise ConfigError(f"{run_dir} was trained without EMA (train.ema_decay is null); use ema=False")
        model.load_state_dict(ckpt[key])
    model.run_dir = str(run_dir)
    return model.to(device).eval()


def sample_images(cfg: config.RunConfig, n: int = 8, one_per_class: bool = True):
    """(normalised images (n, C, H, W), labels (n,), raw uint8 images (n, C, H, W)) from the run's
    test set: the first image of each class in turn when one_per_class, else the first n."""
    if cfg.data.name == "imagefolder":
        raise ConfigError("sample_images reads array datasets (fashion_mnist, cifar10, cifar100); "
                          "for imagefolder load images with timm's transforms")
    data = D.load_arrays(cfg.data.name, cfg.data.root, False)
    if one_per_class:  # class 0's first image, class 1's first, ..., then each class's second
        k = -(-n // len(data.classes))
        idx = torch.stack([torch.nonzero(data.labels == c).flatten()[:k] for c in range(len(data.classes))])
        idx = idx.T.flatten()[:n]
    else:
        idx = torch.arange(n)
    raw = data.images[idx]
    mean = torch.tensor(data.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(data.std).view(1, -1, 1, 1) * 255
    return (raw.float() - mean) / std, data.labels[idx], raw


def class_names(cfg: config.RunConfig) -> tuple[str, ...]:
    """Class names of the run's dataset."""
    return D.load_arrays(cfg.data.name, cfg.data.root, False, per_class=1).classes


def ensure_trained(presets: tuple[str, ...] = ("vit_p_fmnist_tiny", "vit_c_fmnist_tiny"), root: str | Path = "runs",
                   overrides: dict | None = None, progress: bool = False) -> dict[str, Path]:
    """Train each preset into root/<preset> unless that run is already complete; return
    {preset: run_dir}. Overrides are dotted config keys shared by every run (e.g. train.epochs).
    A folder holding a run with another config raises ConfigError instead of being reused.

    progress=True shows tqdm.auto bars (a notebook widget in Jupyter): one over the runs and the
    engine's bar over each epoch's steps (train.progress "bar"; its log lines go to stdout). A run
    folder keeps the train.progress it was started with: the setting only changes what is shown."""
    from tqdm.auto import tqdm

    from analysis.train import train

    out = {}
    bar = tqdm(presets, desc="runs", unit="run") if progress else None
    for preset in presets:
        cfg = config.RunConfig().replace({**(overrides or {}), "model.preset": preset})
        run_dir = Path(root) / preset
        stored = run_dir / rundir.CONFIG
        if stored.is_file():
            cfg.train.progress = config.load(stored).train.progress
        elif progress:
            cfg.train.progress = "bar"
        if bar is not None:
            bar.set_postfix_str(preset)
        with redirect_stderr(sys.stdout) if progress else nullcontext():
            train(cfg, run_dir)  # returns at once for a complete run with this config
        out[preset] = run_dir
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out

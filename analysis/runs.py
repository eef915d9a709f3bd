"""Trained runs back from their run directories: config, model (trained or at init), test images;
and `as_model`, which turns any model source the probes accept into a model.

    model = load_model("runs/demo/vit_c")          # last checkpoint's weights, eval mode
    images, labels, raw = sample_images(load_config("runs/demo/vit_c"), n=8)
    as_model("runs/demo/vit_c"); as_model("resnet18", checkpoint_path="weights.pth", num_classes=10)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from analysis import config, rundir, trust
from analysis.engine import data as D
from analysis.errors import ConfigError


def load_config(run_dir: str | Path) -> config.RunConfig:
    """The run's resolved config, vetted as data of the folder it was read from (analysis.trust)."""
    path = Path(run_dir) / rundir.CONFIG
    if not path.is_file():
        raise ConfigError(
            f"{run_dir} is not a run directory (no {rundir.CONFIG}); train one with "
            "`python -m analysis train --out DIR`"
        )
    cfg = config.load(path)
    trust.check_config(cfg, run_dir)
    return cfg


def load_model(
    run_dir: str | Path,
    ema: bool = False,
    initial: bool = False,
    device: str = "cpu",
    fused_attn: bool = True,
    trust_code: bool = False,
) -> torch.nn.Module:
    """The run's model in eval mode: the last checkpoint's weights (its EMA weights with ema=True),
    or the untrained initialisation the run started from with initial=True. A stem import path in
    the run's config is imported only with trust_code=True, never from inside the folder (analysis.trust)."""
    from analysis.engine.model import build_model
    from analysis.engine.seed import seed_everything

    cfg = load_config(run_dir)
    trust.check_stem(cfg.model.stem, run_dir, trust_code)
    cfg.model.fused_attn = fused_attn
    seed_everything(cfg.train.seed)
    model = build_model(cfg)
    if not initial:
        ckpt = rundir.load_checkpoint(run_dir, model=model)
        if ckpt is None:
            raise ConfigError(f"{run_dir} has no {rundir.CHECKPOINT} yet; wait for its first epoch or use initial=True")
        key = "ema" if ema else "model"
        if key not in ckpt:
            raise ConfigError(f"{run_dir} was trained without EMA (train.ema_decay is null); use ema=False")
        try:
            model.load_state_dict(ckpt[key])
        except RuntimeError as e:  # other shapes: a checkpoint of another model
            raise rundir.CheckpointError(
                f"checkpoint {Path(run_dir) / rundir.CHECKPOINT} does not fit this run's model "
                f"({str(e).splitlines()[0][:200]})"
            ) from None
    model.run_dir = str(run_dir)
    return model.to(device).eval()


def as_model(
    source: nn.Module | str | Path,
    checkpoint_path: str | Path | None = None,
    *,
    pretrained: bool = False,
    ema: bool = False,
    initial: bool = False,
    fused_attn: bool | None = None,
    device: str = "cpu",
    trust_code: bool = False,
    **kwargs,
) -> nn.Module:
    """A model ready to probe, from any of:

    - an nn.Module: returned as it is (probes switch it to eval mode only while they read it);
    - a run folder (it holds config.yaml), or its checkpoint.pt: `load_model(folder, ema, initial, trust_code)`;
    - a suite preset name (analysis.models.PRESETS): `create_model(name, **kwargs)`, freshly initialised;
    - a timm model name: `timm.create_model(name, pretrained=pretrained, **kwargs)`, the path users take
      with pretrained weights (which need timm's download or a local cache);
    and, for a preset or timm name, `checkpoint_path`: weights loaded by timm's `load_checkpoint` with
    weights_only=True, from a checkpoint dict (state_dict, model, ...; ema=True takes the EMA weights)
    or a plain state dict (.pt, .pth, .safetensors). kwargs (num_classes, in_chans, img_size, ...) go
    to the model's constructor. Loaded models are in eval mode on `device`.
    """
    if isinstance(source, nn.Module):
        if initial:
            raise ConfigError("initial=True needs a run folder (it rebuilds the run's initialisation); got a model")
        return source
    if not isinstance(source, (str, Path)):
        raise ConfigError(
            f"a model source must be an nn.Module, a run folder, a preset or timm model name, "
            f"got {type(source).__name__}"
        )
    path = _run_folder(source)
    if path is not None:
        if checkpoint_path is not None or kwargs:
            raise ConfigError(
                f"{source} is a run folder: its config builds the model; checkpoint_path and "
                f"model arguments {sorted(kwargs)} do not apply"
            )
        return load_model(
            path,
            ema=ema,
            initial=initial,
            device=device,
            fused_attn=True if fused_attn is None else fused_attn,
            trust_code=trust_code,
        )
    if initial:
        raise ConfigError(f"initial=True needs a run folder (it rebuilds the run's initialisation); got {source!r}")
    model = _named_model(str(source), pretrained, fused_attn, kwargs)
    if checkpoint_path is not None:
        _load_weights(model, checkpoint_path, ema, str(source))
    return model.to(device).eval()


def _run_folder(source: str | Path) -> Path | None:
    """The run folder `source` names (the folder or its checkpoint.pt), or None when it names no file
    or folder; another file is a weights file, which needs its architecture: ConfigError."""
    path = Path(source)
    if path.is_file() and path.name == rundir.CHECKPOINT and (path.parent / rundir.CONFIG).is_file():
        path = path.parent
    if path.is_file():
        raise ConfigError(
            f"{source} is a weights file; name its architecture and pass the file as "
            f"checkpoint_path, e.g. as_model('resnet18', checkpoint_path='{source}')"
        )
    return path if path.is_dir() else None


def _named_model(name: str, pretrained: bool, fused_attn: bool | None, kwargs: dict) -> nn.Module:
    """A model by name from timm's registry, which holds every suite preset (analysis.models.timm_presets)."""
    import timm

    from analysis.models import PRESETS, set_fused_attn, timm_name

    name = timm_name(name) if name in PRESETS else name
    if not timm.is_model(name):
        raise ConfigError(
            f"cannot make a model of {name!r}: not a run folder, a suite preset "
            "(python -m analysis presets) or a timm model name (timm.list_models())"
        )
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (RuntimeError, OSError) as e:  # e.g. pretrained weights that cannot be downloaded
        raise ConfigError(f"timm could not create {name!r}: {str(e).splitlines()[0]}") from None
    if fused_attn is not None:
        set_fused_attn(model, fused_attn)
    return model


def _load_weights(model: nn.Module, path: str | Path, ema: bool, name: str) -> None:
    """timm's load_checkpoint (weights_only=True); a mismatch becomes one line."""
    from timm.models import load_checkpoint

    if not Path(path).is_file():
        raise ConfigError(f"checkpoint_path {path} is not a file")
    try:
        load_checkpoint(model, str(path), use_ema=ema, strict=True, weights_only=True)
    except (RuntimeError, KeyError) as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[:2])
        raise ConfigError(f"{path} does not hold weights for {name}: {detail[:300]}") from None


def sample_images(cfg: config.RunConfig, n: int = 8, one_per_class: bool = True, train: bool = False):
    """(normalised images (n, C, H, W), labels (n,), raw uint8 images (n, C, H, W)) from the run's
    test set at the run's input size (training set with train=True): the first image of each class in turn when
    one_per_class, else the first n."""
    if cfg.data.name == "imagefolder":
        raise ConfigError(
            "sample_images reads array datasets (fashion_mnist, cifar10, cifar100); "
            "for imagefolder load images with timm's transforms"
        )
    data = D.load_arrays(cfg.data.name, cfg.data.root, train)
    if one_per_class:  # class 0's first image, class 1's first, ..., then each class's second
        k = -(-n // len(data.classes))
        idx = torch.stack([torch.nonzero(data.labels == c).flatten()[:k] for c in range(len(data.classes))])
        idx = idx.T.flatten()[:n]
    else:
        idx = torch.arange(n)
    from analysis.engine.model import input_size

    raw = D.resize(
        D.ArrayData(data.images[idx], data.labels[idx], data.classes, data.mean, data.std), input_size(cfg)
    ).images
    mean = torch.tensor(data.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(data.std).view(1, -1, 1, 1) * 255
    return (raw.float() - mean) / std, data.labels[idx], raw


def class_names(cfg: config.RunConfig) -> tuple[str, ...]:
    """Class names of the run's dataset."""
    return D.load_arrays(cfg.data.name, cfg.data.root, False, per_class=1).classes


def equal_steps(overrides: dict, per_class: int) -> dict:
    """Overrides for a run on `per_class` training images per class that takes about as many optimizer
    steps, and warmup steps, as the run `overrides` describe (their data.train_per_class and
    train.epochs; the defaults of RunConfig where absent): epochs and warmup scale by the size ratio."""
    base = config.RunConfig().replace(overrides)
    full = base.data.train_per_class
    if full is None:
        raise ConfigError("equal_steps needs data.train_per_class in the overrides (the reference size)")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or not 1 <= per_class:
        raise ConfigError(f"per_class must be a positive integer, got {per_class!r}")
    ratio = full / per_class
    return {
        **overrides,
        "data.train_per_class": per_class,
        "train.epochs": max(1, round(base.train.epochs * ratio)),
        "optim.warmup_epochs": base.optim.warmup_epochs * ratio,
    }


def ensure_trained(
    presets: tuple[str, ...] = ("vit_p_fmnist_tiny", "vit_c_fmnist_tiny"),
    root: str | Path = "runs",
    overrides: dict | None = None,
    progress: bool = False,
) -> dict[str, Path]:
    """Train each preset into root/<preset> unless that run is already complete; return
    {preset: run_dir}. Overrides are dotted config keys shared by every run (e.g. train.epochs).
    A folder holding a run with another config raises ConfigError instead of being reused.

    progress=True shows tqdm.auto bars (a notebook widget in Jupyter): one over the runs and the
    engine's bar over each epoch's steps (train.progress "bar"; its log lines go to stdout)."""
    from tqdm.auto import tqdm

    from analysis.engine.train import train

    out = {}
    bar = tqdm(presets, desc="runs", unit="run") if progress else None
    for preset in presets:
        cfg = config.RunConfig().replace({**(overrides or {}), "model.preset": preset})
        run_dir = Path(root) / preset
        if progress:
            cfg.train.progress = "bar"
        if bar is not None:
            bar.set_postfix_str(preset)
        train(cfg, run_dir)  # returns at once for a complete run with this config
        out[preset] = run_dir
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out

"""A run config's model: its preset shaped for the run's dataset and input size."""

from __future__ import annotations

import torch

from analysis.config import RunConfig


def data_shape(cfg: RunConfig) -> dict:
    """in_chans and num_classes implied by the dataset, and img_size when data.img_size sets it
    (otherwise the model keeps its preset's input size and the images are resized to it)."""
    name = cfg.data.name
    shape = {}
    if name == "fashion_mnist":
        shape = {"in_chans": 1, "num_classes": 10}
    elif name in ("cifar10", "cifar100"):
        shape = {"in_chans": 3, "num_classes": 10 if name == "cifar10" else 100}
    if cfg.data.img_size:
        shape["img_size"] = cfg.data.img_size
    return shape


def input_size(cfg: RunConfig) -> int:
    """The side in pixels the run's images are fed at: data.img_size, else the preset's img_size."""
    from analysis.models.presets import get_preset

    return cfg.data.img_size or get_preset(cfg.model.preset)["img_size"]


def build_model(cfg: RunConfig) -> torch.nn.Module:
    """The model for a run config, shaped for its dataset."""
    from analysis.models import create_model

    m = cfg.model
    return create_model(m.preset, stem=m.stem, local_mlp=m.local_mlp, fused_attn=m.fused_attn, **data_shape(cfg))

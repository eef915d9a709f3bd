"""Mean attention distance per layer and head, in pixels (Raghu et al. 2021; Dosovitskiy et al. 2020)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from analysis.errors import ConfigError
from analysis.probes.attention import attention_model, capture_attention
from analysis.probes.features import iter_batches
from analysis.probes.layout import token_layout


def token_distances(grid_size: tuple[int, int], stride: int) -> torch.Tensor:
    """Return the (P, P) pixel distances between token centres on a (gh, gw) grid of pitch `stride`."""
    gh, gw = grid_size
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], dim=-1).double() * stride
    return torch.cdist(pos, pos)


def uniform_distance(model) -> float:
    """Mean attention distance (px) of attention spread evenly over the model's patch tokens: the
    reference a head's distance is read against (a head well below it attends locally)."""
    layout = token_layout(attention_model(model))
    return float(token_distances(layout.grid_size, layout.stride).mean())


def mean_attention_distance(
    attentions: Sequence[torch.Tensor],
    grid_size: tuple[int, int],
    stride: int,
    num_prefix_tokens: int,
    renormalize: bool = True,
) -> np.ndarray:
    """Return a (layers, heads) array: sum_j A[i, j] * ||p_i - p_j|| in pixels, averaged over queries i and the batch.

    Prefix tokens are dropped as queries and as keys. With `renormalize` each query's remaining
    attention over patch tokens is rescaled to sum to 1, so attention to the class token neither
    shortens nor lengthens the distance.
    """
    dist = token_distances(grid_size, stride)
    p = dist.shape[0]
    out = []
    for attn in attentions:
        a = attn.detach().double()[..., num_prefix_tokens:, num_prefix_tokens:]
        dist = dist.to(a.device)
        if a.shape[-1] != p:
            raise ConfigError(f"attention has {a.shape[-1]} patch tokens, grid {grid_size} has {p}")
        if renormalize:
            a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        per_query = (a * dist).sum(dim=-1)  # (B, heads, P)
        out.append(per_query.mean(dim=(0, 2)).cpu().numpy())
    return np.stack(out)


def attention_distance(
    model,
    batches: Iterable,
    max_images: int | None = None,
    renormalize: bool = True,
) -> pd.DataFrame:
    """Return a DataFrame (layer, head, distance_px) of mean attention distance over the images in `batches`.

    `batches` yields image tensors or (images, labels) pairs. Layers count blocks from 0; the
    token pitch is the stem stride. Batches are weighted by their number of images.
    """
    model = attention_model(model)
    layout = token_layout(model)
    total, count = None, 0
    for images, _ in iter_batches(batches, max_images):
        _, attns = capture_attention(model, images)
        d = mean_attention_distance(attns, layout.grid_size, layout.stride, layout.num_prefix_tokens, renormalize)
        total = d * len(images) if total is None else total + d * len(images)
        count += len(images)
    if count == 0:
        raise ConfigError("attention_distance got no images")
    mean = total / count
    layers, heads = np.meshgrid(np.arange(mean.shape[0]), np.arange(mean.shape[1]), indexing="ij")
    return pd.DataFrame({"layer": layers.ravel(), "head": heads.ravel(), "distance_px": mean.ravel()})


def distance_vs_data(
    runs: pd.DataFrame, batches: Iterable, max_images: int | None = None, renormalize: bool = True
) -> pd.DataFrame:
    """Return mean attention distance per model, training-set size, layer and head.

    `runs` has one row per trained ViT: `model` (a label, e.g. ViT_P-fmnist), `train_per_class`
    (training images per class; None/NaN for the full set; a collected sweep's
    `cfg.data.train_per_class` column is used when `train_per_class` is absent) and `run_dir` (or
    `source`: anything analysis.runs.as_model takes). Every model sees the same images. Runs that
    share a model and size (seeds) are averaged; `runs` counts them. Columns: model,
    train_per_class, layer, head, distance_px, stride_px (the token pitch), runs.
    """
    if "train_per_class" not in runs and "cfg.data.train_per_class" in runs:
        runs = runs.assign(train_per_class=runs["cfg.data.train_per_class"])
    source = "source" if "source" in runs else "run_dir"
    missing = [c for c in ("model", "train_per_class", source) if c not in runs]
    if missing or runs.empty:
        raise ConfigError(
            f"distance_vs_data needs rows with model, train_per_class and run_dir (or source); "
            f"missing {missing or 'rows'}"
        )
    batches = list(batches)
    frames = []
    for row in runs.itertuples(index=False):
        model = attention_model(getattr(row, source))
        frame = attention_distance(model, batches, max_images, renormalize)
        size = row.train_per_class
        frames.append(
            frame.assign(
                model=row.model,
                train_per_class=None if pd.isna(size) else int(size),
                stride_px=token_layout(model).stride,
            )
        )
    out = pd.concat(frames, ignore_index=True)
    keys = ["model", "train_per_class", "layer", "head"]
    out["train_per_class"] = out["train_per_class"].astype("Int64")
    grouped = out.groupby(keys, dropna=False, sort=False)
    return grouped.agg(
        distance_px=("distance_px", "mean"), stride_px=("stride_px", "first"), runs=("distance_px", "size")
    ).reset_index()


def local_heads(frame: pd.DataFrame, blocks: int = 2, within_tokens: float = 1.5) -> pd.DataFrame:
    """Return, per model and training-set size, the share of heads in the first `blocks` blocks whose
    mean attention distance is under `within_tokens` token pitches (stride_px): Raghu et al.'s
    question whether early heads stay local when data is scarce. Columns: model, train_per_class,
    heads, local, local_frac."""
    early = frame[frame["layer"] < blocks]
    if early.empty:
        raise ConfigError(f"no heads in the first {blocks} blocks")
    local = early["distance_px"] < within_tokens * early["stride_px"]
    table = early.assign(local=local).groupby(["model", "train_per_class"], dropna=False, sort=False)
    out = table.agg(heads=("local", "size"), local=("local", "sum")).reset_index()
    out["local_frac"] = out["local"] / out["heads"]
    return out

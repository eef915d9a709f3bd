"""Mean attention distance per layer and head, in pixels (Raghu et al. 2021; Dosovitskiy et al. 2020)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from analysis.errors import ConfigError
from analysis.probes.attention import capture_attention
from analysis.probes.layout import token_layout


def token_distances(grid_size: tuple[int, int], stride: int) -> torch.Tensor:
    """Return the (P, P) pixel distances between token centres on a (gh, gw) grid of pitch `stride`."""
    gh, gw = grid_size
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], dim=-1).double() * stride
    return torch.cdist(pos, pos)


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
    model: nn.Module,
    batches: Iterable,
    max_images: int | None = None,
    renormalize: bool = True,
) -> pd.DataFrame:
    """Return a DataFrame (layer, head, distance_px) of mean attention distance over the images in `batches`.

    `batches` yields image tensors or (images, labels) pairs. Layers count blocks from 0; the
    token pitch is the stem stride. Batches are weighted by their number of images.
    """
    layout = token_layout(model)
    total, count = None, 0
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if max_images is not None:
            images = images[: max_images - count]
        if len(images) == 0:
            break
        _, attns = capture_attention(model, images)
        d = mean_attention_distance(attns, layout.grid_size, layout.stride, layout.num_prefix_tokens, renormalize)
        total = d * len(images) if total is None else total + d * len(images)
        count += len(images)
        if max_images is not None and count >= max_images:
            break
    if count == 0:
        raise ConfigError("attention_distance got no images")
    mean = total / count
    layers, heads = np.meshgrid(np.arange(mean.shape[0]), np.arange(mean.shape[1]), indexing="ij")
    return pd.DataFrame({"layer": layers.ravel(), "head": heads.ravel(), "distance_px": mean.ravel()})

"""First-layer filters, their principal components, and position-embedding similarity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from analysis.errors import ConfigError
from analysis.probes.layout import first_conv, token_layout
from analysis.runs import as_model


def first_layer_filters(model) -> np.ndarray:
    """Return the first conv's weights as (out, C, k, k): p x p patchify filters, 3x3 conv-stem
    filters, or a CNN's first filters. `model` is any source analysis.runs.as_model takes."""
    return first_conv(as_model(model)).weight.detach().cpu().double().numpy()


@dataclass
class FilterPCA:
    """PCA across filters: each filter (C, k, k) flattened to a row of a (d, C*k*k) matrix."""

    mean: np.ndarray  # (C, k, k) mean filter
    components: np.ndarray  # (m, C, k, k) principal directions, by decreasing variance
    explained_variance_ratio: np.ndarray  # (m,)
    scores: np.ndarray  # (d, m) coordinates of each filter

    def top(self, k: int) -> np.ndarray:
        """Return the first k components as (k, C, kh, kw) tiles."""
        return self.components[:k]

    def reconstruct(self, k: int | None = None) -> np.ndarray:
        """Return the (d, C, kh, kw) filters rebuilt from the first k components (all when None)."""
        k = self.components.shape[0] if k is None else k
        flat = self.scores[:, :k] @ self.components[:k].reshape(k, -1)
        return flat.reshape(-1, *self.mean.shape) + self.mean


def filter_pca(weights) -> FilterPCA:
    """Return the FilterPCA of (d, C, k, k) weights (or of a model's first-layer filters: any
    source analysis.runs.as_model takes).

    Filters are centred on their mean; components come from an SVD, so all of them together
    rebuild the weights exactly.
    """
    if isinstance(weights, (nn.Module, str, Path)):
        weights = first_layer_filters(weights)
    w = torch.as_tensor(weights).detach().cpu().double().numpy()
    if w.ndim != 4:
        raise ConfigError(f"filters must be (d, C, k, k), got shape {w.shape}")
    flat = w.reshape(w.shape[0], -1)
    mean = flat.mean(axis=0)
    centred = flat - mean
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    total = var.sum()
    ratio = var / total if total > 0 else np.zeros_like(var)
    return FilterPCA(
        mean=mean.reshape(w.shape[1:]),
        components=vt.reshape(-1, *w.shape[1:]),
        explained_variance_ratio=ratio,
        scores=u * s,
    )


def position_similarity(model) -> np.ndarray:
    """Return (gh, gw, gh, gw) cosine similarity of each position's embedding with every other, prefix tokens dropped."""
    model = as_model(model)
    layout = token_layout(model)
    pos = getattr(model, "pos_embed", None)
    if pos is None:
        raise ConfigError("model has no learned position embedding (pos_embed is None)")
    pos = pos.detach().cpu().double()[0]
    if pos.shape[0] == layout.num_patches + layout.num_prefix_tokens:
        pos = pos[layout.num_prefix_tokens :]
    if pos.shape[0] != layout.num_patches:
        raise ConfigError(f"pos_embed has {pos.shape[0]} rows, grid {layout.grid_size} has {layout.num_patches}")
    unit = pos / pos.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    gh, gw = layout.grid_size
    return (unit @ unit.T).reshape(gh, gw, gh, gw).numpy()

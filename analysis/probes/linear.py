"""Layerwise linear probes (Raghu et al. 2021): how much of the label a linear read-out finds in
each layer's pooled features.

Pooled features per layer (analysis.probes.features.Layer.pooled): the class token and the mean
of the patch tokens for ViTs (the stem output has only the mean), the global average for CNNs.
The classifier is closed-form ridge regression onto one-hot labels (our choice: deterministic,
no learning rate to tune, seconds on a CPU): features standardised with the training split's mean
and standard deviation, W = argmin ||X W - Y||^2 + ridge * n * ||W||^2 (n training examples),
prediction = argmax of X W plus the training class frequencies. Accuracy is measured on a
held-out split.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import torch

from analysis.errors import ConfigError
from analysis.probes.features import iter_batches, read_layers
from analysis.runs import as_model


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(1e-8)
    return (train - mean) / std, (test - mean) / std


def ridge_probe(
    train_x, train_y, test_x, test_y, ridge: float = 1e-3, num_classes: int | None = None
) -> tuple[float, float]:
    """Return (test accuracy, train accuracy) of a closed-form ridge classifier; x are (n, d) features,
    y integer labels. The solve runs in float64 in the smaller of the primal (d) and dual (n) forms."""
    x, xt = torch.as_tensor(train_x).double(), torch.as_tensor(test_x).double()
    y, yt = torch.as_tensor(train_y).long(), torch.as_tensor(test_y).long()
    if x.ndim != 2 or xt.ndim != 2 or x.shape[1] != xt.shape[1]:
        raise ConfigError(f"features must be (n, d) with the same d, got {tuple(x.shape)} and {tuple(xt.shape)}")
    if len(x) != len(y) or len(xt) != len(yt) or len(x) < 2 or len(xt) < 1:
        raise ConfigError(
            f"need one label per example and at least 2 training / 1 test examples, got "
            f"{len(x)}/{len(y)} and {len(xt)}/{len(yt)}"
        )
    if ridge <= 0:
        raise ConfigError(f"ridge must be > 0, got {ridge}")
    k = num_classes or int(max(y.max(), yt.max())) + 1
    x, xt = _standardise(x, xt)
    onehot = torch.nn.functional.one_hot(y, k).double()
    prior = onehot.mean(dim=0)
    target = onehot - prior
    n, d = x.shape
    lam = ridge * n
    if d <= n:
        w = torch.linalg.solve(x.T @ x + lam * torch.eye(d, dtype=x.dtype), x.T @ target)
    else:
        w = x.T @ torch.linalg.solve(x @ x.T + lam * torch.eye(n, dtype=x.dtype), target)
    test_acc = ((xt @ w + prior).argmax(dim=1) == yt).double().mean()
    train_acc = ((x @ w + prior).argmax(dim=1) == y).double().mean()
    return float(test_acc), float(train_acc)


def pooled_features(model, batches: Iterable, max_images: int | None = None):
    """Return ({(layer, pool): (n, C) features}, labels (n,), layer names in order) over labelled batches."""
    model = as_model(model)
    feats: dict[tuple[str, str], list[torch.Tensor]] = {}
    labels, names = [], []
    for images, y in iter_batches(batches, max_images):
        if y is None:
            raise ConfigError("linear probes need labelled batches: (images, labels) pairs")
        layers = read_layers(model, images)
        names = [layer.name for layer in layers]
        for layer in layers:
            for pool, value in layer.pooled().items():
                feats.setdefault((layer.name, pool), []).append(value.double().cpu())
        labels.append(torch.as_tensor(y).cpu())
    if not labels:
        raise ConfigError("linear probes got no images")
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels), names


def linear_probes(
    model,
    train_batches: Iterable,
    test_batches: Iterable,
    ridge: float = 1e-3,
    max_train: int | None = None,
    max_test: int | None = None,
    num_classes: int | None = None,
) -> pd.DataFrame:
    """Return one row per layer and pool: layer, depth (0 = stem), pool (class_token, patch_mean or
    global_avg), dim, accuracy (held-out), train_accuracy, chance (the most frequent test class's share).

    `model` is any source analysis.runs.as_model takes; both batch streams yield (images, labels)."""
    train, y, names = pooled_features(model, train_batches, max_train)
    test, yt, _ = pooled_features(model, test_batches, max_test)
    k = num_classes or int(max(y.max(), yt.max())) + 1
    chance = float(np.bincount(yt.numpy(), minlength=k).max() / len(yt))
    rows = []
    for (layer, pool), x in train.items():
        acc, train_acc = ridge_probe(x, y, test[(layer, pool)], yt, ridge, k)
        rows.append(
            {
                "layer": layer,
                "depth": names.index(layer),
                "pool": pool,
                "dim": x.shape[1],
                "accuracy": acc,
                "train_accuracy": train_acc,
                "chance": chance,
            }
        )
    return pd.DataFrame(rows)

"""Linear CKA between layers: full batch for checking, and minibatch (streamed) for real data.

Layers are read by analysis.probes.features (timm's forward_intermediates), so any two models
compare: ViTs (stem output and every block, tokens flattened) and CNNs (stem and every stage).

Minibatch CKA (Nguyen et al. 2021): for each batch of n >= 4 images, Gram matrices K = X X^T of
every layer's flattened features, the unbiased HSIC_1 of every layer pair, summed over batches;
CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) is formed from the sums at the end. Memory is
bounded by one batch of features plus a (layers x layers) table.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from analysis.errors import ConfigError, one_of
from analysis.probes.features import block_features, iter_batches
from analysis.runs import as_model

MIN_BATCH = 4  # HSIC_1 divides by n (n - 3)


def gram(x: torch.Tensor) -> torch.Tensor:
    """Return the (n, n) float64 linear Gram matrix of features flattened per example."""
    x = x.reshape(x.shape[0], -1).double()
    return x @ x.T


def hsic1(grams: torch.Tensor) -> torch.Tensor:
    """Return the (L, L) unbiased HSIC_1 of every pair of the (L, n, n) Gram matrices."""
    n = grams.shape[-1]
    if n < MIN_BATCH:
        raise ConfigError(f"unbiased HSIC needs at least {MIN_BATCH} examples, got {n}")
    k = grams.clone()
    k.diagonal(dim1=-2, dim2=-1).zero_()
    flat = k.reshape(k.shape[0], -1)
    trace = flat @ flat.T  # tr(K~ L~) for symmetric Grams
    sums = flat.sum(dim=-1)
    rows = k.sum(dim=-1)  # K~ 1
    return (trace + torch.outer(sums, sums) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * rows @ rows.T) / (n * (n - 3))


def cka_from_hsic(hsic: torch.Tensor | np.ndarray) -> np.ndarray:
    """Return the CKA matrix HSIC_ij / sqrt(HSIC_ii HSIC_jj) of a square HSIC table."""
    h = np.asarray(hsic, dtype=np.float64)
    d = np.sqrt(np.clip(np.diag(h), 1e-300, None))
    return h / np.outer(d, d)


def linear_cka(x: torch.Tensor, y: torch.Tensor, unbiased: bool = False) -> float:
    """Return the full-batch linear CKA of features x (n, ...) and y (n, ...).

    Biased: centred Grams, HSIC = tr(Kc Lc) / (n - 1)^2. Unbiased: HSIC_1 on the whole batch.
    """
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"x and y need the same number of examples, got {x.shape[0]} and {y.shape[0]}")
    k, l = gram(x), gram(y)
    if unbiased:
        return float(cka_from_hsic(hsic1(torch.stack([k, l])))[0, 1])
    n = k.shape[0]
    h = torch.eye(n, dtype=k.dtype) - 1.0 / n
    kc, lc = h @ k @ h, h @ l @ h
    return float((kc * lc).sum() / torch.sqrt((kc * kc).sum() * (lc * lc).sum()))


class MinibatchCKA:
    """Streams per-batch HSIC_1 sums of every layer pair; `result()` gives the CKA matrix."""

    def __init__(self) -> None:
        self.hsic_sum: torch.Tensor | None = None
        self.batches = 0
        self.examples = 0
        self.skipped = 0  # batches with fewer than 4 examples

    def update(self, features: Sequence[torch.Tensor]) -> None:
        """Add one batch: one (n, ...) feature tensor per layer, same n for all layers."""
        n = features[0].shape[0]
        if any(f.shape[0] != n for f in features):
            raise ConfigError("every layer's features need the same number of examples")
        if n < MIN_BATCH:
            self.skipped += 1
            return
        h = hsic1(torch.stack([gram(f) for f in features]))
        if self.hsic_sum is not None and h.shape != self.hsic_sum.shape:
            raise ConfigError(f"got {h.shape[0]} layers, earlier batches had {self.hsic_sum.shape[0]}")
        self.hsic_sum = h if self.hsic_sum is None else self.hsic_sum + h
        self.batches += 1
        self.examples += n

    def result(self) -> np.ndarray:
        """Return the (L, L) CKA matrix from the batch-averaged HSIC_1 table."""
        if self.hsic_sum is None:
            raise ConfigError(f"no batch of at least {MIN_BATCH} examples was seen")
        return cka_from_hsic(self.hsic_sum.cpu().numpy() / self.batches)


def _stream(
    models: Sequence, batches: Iterable, max_images: int | None, prefix_tokens: bool
) -> tuple[MinibatchCKA, list[list[str]]]:
    models = [as_model(m) for m in models]
    acc, names = MinibatchCKA(), []
    for images, _ in iter_batches(batches, max_images):
        feats = [block_features(m, images, prefix_tokens) for m in models]
        names = [list(f) for f in feats]
        acc.update([t for f in feats for t in f.values()])
    return acc, names


def cka_matrix(model, batches: Iterable, max_images: int | None = None, prefix_tokens: bool = True) -> pd.DataFrame:
    """Return the minibatch CKA between all layers (stem, block0, ... or a CNN's stages) of one model
    as a square DataFrame.

    `model` is any source analysis.runs.as_model takes (a model, a run folder, a preset or timm name).
    `batches` yields image tensors or (images, labels) pairs; batches under 4 images are skipped.
    Without `prefix_tokens` a ViT's class/register tokens are left out of its block features.
    """
    acc, names = _stream([model], batches, max_images, prefix_tokens)
    return pd.DataFrame(acc.result(), index=names[0], columns=names[0])


def cka_between(
    model_a, model_b, batches: Iterable, max_images: int | None = None, prefix_tokens: bool = True
) -> pd.DataFrame:
    """Return the minibatch CKA between the layers of two models: rows model_a's layers, columns model_b's.

    Any two models (ViT against ViT or CNN, run folders, timm names, ...) see the same images;
    batches under 4 images are skipped.
    """
    acc, names = _stream([model_a, model_b], batches, max_images, prefix_tokens)
    la = len(names[0])
    return pd.DataFrame(acc.result()[:la, la:], index=names[0], columns=names[1])


def cka_pairs(
    models: Mapping[str, object],
    batches: Iterable,
    pairs: Sequence[tuple[str, str]] | None = None,
    max_images: int | None = None,
    prefix_tokens: bool = True,
) -> dict[tuple[str, str], pd.DataFrame]:
    """Return {(a, b): CKA DataFrame (rows a's layers, columns b's)} for pairs of labelled models,
    all read in one pass over `batches` (Raghu et al.'s layer-by-layer heatmaps, e.g. ViT_P vs
    ResNet, ViT_C vs ResNet, ViT_P vs ViT_C). `pairs` defaults to every pair in the given order."""
    labels = list(models)
    pairs = list(pairs) if pairs is not None else [(a, b) for i, a in enumerate(labels) for b in labels[i + 1 :]]
    for a, b in pairs:
        for label in (a, b):
            if label not in models:
                raise one_of("model label in pairs", label, labels)
    if not pairs:
        raise ConfigError("cka_pairs needs at least two models or one pair")
    acc, names = _stream([models[k] for k in labels], batches, max_images, prefix_tokens)
    table = acc.result()
    start = np.cumsum([0] + [len(n) for n in names])
    where = {k: (start[i], start[i + 1], names[i]) for i, k in enumerate(labels)}
    out = {}
    for a, b in pairs:
        (a0, a1, na), (b0, b1, nb) = where[a], where[b]
        out[(a, b)] = pd.DataFrame(table[a0:a1, b0:b1], index=na, columns=nb)
    return out

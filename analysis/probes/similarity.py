"""Linear CKA between layers: full batch for checking, and minibatch (streamed) for real data.

Minibatch CKA (Nguyen et al. 2021): for each batch of n >= 4 images, Gram matrices K = X X^T of
every layer's flattened features, the unbiased HSIC_1 of every layer pair, summed over batches;
CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) is formed from the sums at the end. Memory is
bounded by one batch of features plus a (layers x layers) table.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from analysis.errors import ConfigError
from analysis.probes.layout import evaluating

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


def block_features(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return {"stem": stem output, "block0": ..., "blockK": ...}, each flattened to (B, features), no grad."""
    outputs: dict[str, torch.Tensor] = {}
    modules = [("stem", model.patch_embed)] + [(f"block{i}", b) for i, b in enumerate(model.blocks)]

    def hook_for(name: str):
        def hook(module, inputs, output):
            outputs[name] = output.detach().reshape(output.shape[0], -1)

        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in modules]
    try:
        with evaluating(model), torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return {name: outputs[name] for name, _ in modules}


def _images(batch) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _stream(models: Sequence[nn.Module], batches: Iterable, max_images: int | None) -> tuple[MinibatchCKA, list[list[str]]]:
    acc, names, seen = MinibatchCKA(), [], 0
    for batch in batches:
        images = _images(batch)
        if max_images is not None:
            images = images[: max_images - seen]
        if len(images) == 0:
            break
        feats = [block_features(m, images) for m in models]
        names = [list(f) for f in feats]
        acc.update([t for f in feats for t in f.values()])
        seen += len(images)
        if max_images is not None and seen >= max_images:
            break
    return acc, names


def cka_matrix(model: nn.Module, batches: Iterable, max_images: int | None = None) -> pd.DataFrame:
    """Return the minibatch CKA between all layers (stem, block0, ...) of one model as a square DataFrame.

    `batches` yields image tensors or (images, labels) pairs; batches under 4 images are skipped.
    """
    acc, names = _stream([model], batches, max_images)
    return pd.DataFrame(acc.result(), index=names[0], columns=names[0])


def cka_between(model_a: nn.Module, model_b: nn.Module, batches: Iterable, max_images: int | None = None) -> pd.DataFrame:
    """Return the minibatch CKA between the layers of two models: rows model_a's layers, columns model_b's.

    Both models see the same images; batches under 4 images are skipped.
    """
    acc, names = _stream([model_a, model_b], batches, max_images)
    la = len(names[0])
    return pd.DataFrame(acc.result()[:la, la:], index=names[0], columns=names[1])

"""Residual-stream strength (Raghu et al. 2021): how much each block's branches change the stream.

timm's Block adds two branches to the stream: x = x + ls1(attn(norm1(x))), then
x = x + ls2(mlp(norm2(x))). We report each branch separately (our choice; the attention and MLP
branches behave differently, and their per-block mean hides that): for branch b of block i and a
token type (the class token, or the patch tokens), the ratio

    mean over images and tokens of ||x_t||  /  mean over images and tokens of ||branch(x)_t||

of the L2 norms of the stream entering the branch (norm1's / norm2's input) and of the branch's
output (ls1's / ls2's output, before drop-path, which is off in eval mode). A large ratio: the
block passes the stream on nearly unchanged. A branch whose output is zero gives an infinite
ratio and `zero_branch` True. Read by forward hooks on those four submodules of every block,
so models whose blocks lack them (CNNs, post-norm blocks) are refused with one line.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from analysis.errors import ConfigError
from analysis.probes.features import iter_batches
from analysis.probes.layout import evaluating
from analysis.runs import as_model

BRANCHES = {"attn": ("norm1", "ls1"), "mlp": ("norm2", "ls2")}  # (stream input, branch output) modules


def _blocks(model: nn.Module) -> list[nn.Module]:
    blocks = list(getattr(model, "blocks", None) or [])
    need = [m for pair in BRANCHES.values() for m in pair]
    if not blocks or any(not hasattr(b, m) for b in blocks for m in need):
        raise ConfigError(
            f"{type(model).__name__} has no pre-norm transformer blocks (timm Block with "
            f"{', '.join(need)}); residual_strength reads ViTs"
        )
    return blocks


def _token_norms(x: torch.Tensor, prefix: int) -> dict[str, torch.Tensor]:
    """{"class": sum of class-token norms, "patch": sum of patch-token norms, "n_class", "n_patch"} for (B, N, C)."""
    norms = x.detach().double().norm(dim=-1)  # (B, N)
    out = {"patch": norms[:, prefix:].sum(), "n_patch": norms[:, prefix:].numel()}
    if prefix:
        out.update({"class": norms[:, 0].sum(), "n_class": norms.shape[0]})
    return out


def residual_strength(model, batches: Iterable, max_images: int | None = None) -> pd.DataFrame:
    """Return one row per block, branch (attn, mlp) and tokens (class, patch): residual_norm,
    branch_norm (mean L2 norms per token), ratio (residual_norm / branch_norm; inf when the branch
    outputs zeros), zero_branch. `model` is any source analysis.runs.as_model takes."""
    model = as_model(model)
    blocks = _blocks(model)
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    sums: dict[tuple, torch.Tensor | int] = {}  # tensors until the end: no device sync per hook

    def hook_for(i: int, branch: str, side: str):
        def hook(module, inputs, output):
            x = inputs[0] if side == "residual" else output
            for key, value in _token_norms(x, prefix).items():
                sums[(i, branch, side, key)] = sums.get((i, branch, side, key), 0) + value

        return hook

    handles = [
        getattr(b, m).register_forward_hook(hook_for(i, branch, side))
        for i, b in enumerate(blocks)
        for branch, pair in BRANCHES.items()
        for side, m in zip(("residual", "branch"), pair)
    ]
    seen = 0
    try:
        with evaluating(model), torch.no_grad():
            for images, _ in iter_batches(batches, max_images):
                model(images)
                seen += len(images)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ConfigError("residual_strength got no images")
    rows = []
    for i in range(len(blocks)):
        for branch in BRANCHES:
            for tokens in ("class", "patch") if prefix else ("patch",):
                res = float(sums[(i, branch, "residual", tokens)]) / sums[(i, branch, "residual", f"n_{tokens}")]
                out = float(sums[(i, branch, "branch", tokens)]) / sums[(i, branch, "branch", f"n_{tokens}")]
                rows.append(
                    {
                        "block": i,
                        "branch": branch,
                        "tokens": tokens,
                        "residual_norm": res,
                        "branch_norm": out,
                        "ratio": res / out if out > 0 else np.inf,
                        "zero_branch": out == 0,
                    }
                )
    return pd.DataFrame(rows)

"""Attention probes: explicit attention, per-layer capture, class-token maps, rollout.

timm's Attention uses fused scaled_dot_product_attention when it can, and then no attention
matrix exists. `explicit_attention` switches every module with a `fused_attn` flag to the
explicit path (softmax, then `attn_drop`, then `attn @ v`); `record_attention` hooks each
block's `attn_drop` and keeps its input, the softmaxed (B, heads, N, N) attention.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from analysis.errors import ConfigError, one_of
from analysis.probes.layout import evaluating, target_classes, token_layout
from analysis.runs import as_model

HEAD_FUSIONS = ("mean", "max", "min")


@contextmanager
def explicit_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Set `fused_attn = False` on every attention module; restore the old values after (also on error)."""
    saved = [(m, m.fused_attn) for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    try:
        for m, _ in saved:
            m.fused_attn = False
        yield model
    finally:
        for m, value in saved:
            m.fused_attn = value


def _block_attentions(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    mods = [getattr(b, "attn", None) for b in blocks] if blocks is not None else []
    if not mods or any(m is None or not hasattr(m, "attn_drop") for m in mods):
        raise ConfigError(
            f"{type(model).__name__} has no attention to read: attention probes need a ViT whose "
            "blocks hold timm Attention (attn with attn_drop); CNNs have none"
        )
    return mods


def attention_model(source) -> nn.Module:
    """as_model(source), checked to hold attention (one line saying so when it does not, e.g. a CNN)."""
    model = as_model(source)
    _block_attentions(model)
    return model


@contextmanager
def record_attention(model: nn.Module) -> Iterator[list[torch.Tensor | None]]:
    """Yield a list that holds, after each forward pass, every block's softmaxed attention (B, heads, N, N).

    The tensors stay in the autograd graph when the forward pass records one, so gradients with
    respect to them can be taken. The explicit path is on for the whole block.
    """
    mods = _block_attentions(model)
    store: list[torch.Tensor | None] = [None] * len(mods)

    def hook_for(i: int):
        def hook(module, inputs, output):
            store[i] = inputs[0]

        return hook

    with explicit_attention(model):
        handles = [m.attn_drop.register_forward_hook(hook_for(i)) for i, m in enumerate(mods)]
        try:
            yield store
        finally:
            for h in handles:
                h.remove()


def capture_attention(model, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Return (logits, attentions): one (B, heads, N, N) softmaxed attention per block, eval mode, no grad.

    `model` is any source analysis.runs.as_model takes (so are the other probes' models)."""
    model = attention_model(model)
    with evaluating(model), record_attention(model) as store, torch.no_grad():
        logits = model(images)
    return logits, list(store)


def _query_rows(attn: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """(..., N, N) -> (..., P): class-token row over patch keys, or the mean over patch queries without one."""
    if num_prefix > 0:
        return attn[..., 0, num_prefix:]
    return attn.mean(dim=-2)


def to_image(
    maps: torch.Tensor, grid_size: tuple[int, int], size: tuple[int, int] | None, mode: str = "bilinear"
) -> torch.Tensor:
    """Reshape (..., P) token values to (..., gh, gw), upsampled to `size` (H, W) unless None."""
    lead = maps.shape[:-1]
    grid = maps.reshape(-1, 1, *grid_size)
    if size is not None:
        kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        grid = F.interpolate(grid, size=tuple(size), mode=mode, **kw)
    return grid.reshape(*lead, *grid.shape[-2:])


def class_token_attention(model, images: torch.Tensor, upsample: bool = True, mode: str = "bilinear") -> torch.Tensor:
    """Return (B, layers, heads, H, W) attention of the class token to every patch token.

    Each layer's map is the class-token row with all prefix tokens dropped, reshaped to the
    model's token grid and (when `upsample`) resized to the image. For a model without class
    token (num_prefix_tokens == 0, e.g. sequence pooling) the mean over all query tokens is used
    instead. Without `upsample` the last two dims are the grid (gh, gw).
    """
    model = attention_model(model)
    layout = token_layout(model)
    _, attns = capture_attention(model, images)
    rows = torch.stack([_query_rows(a, layout.num_prefix_tokens) for a in attns], dim=1)
    size = tuple(images.shape[-2:]) if upsample else None
    return to_image(rows, layout.grid_size, size, mode)


def _fuse_heads(attn: torch.Tensor, head_fusion: str) -> torch.Tensor:
    if head_fusion == "mean":
        return attn.mean(dim=1)
    if head_fusion == "max":
        return attn.amax(dim=1)
    if head_fusion == "min":
        return attn.amin(dim=1)
    raise one_of("head_fusion", head_fusion, HEAD_FUSIONS)


def rollout_matrix(
    attentions: Sequence[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """Return the (B, N, N) attention rollout (Abnar & Zuidema 2020) of per-layer (B, heads, N, N) attentions.

    Per layer: fuse heads (mean/max/min), zero the lowest `discard_ratio` fraction of the entries
    of each image's matrix, add the identity (the residual), row-normalise; then multiply the
    layers, last layer on the left.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise one_of("head_fusion", head_fusion, HEAD_FUSIONS)
    if not 0.0 <= discard_ratio < 1.0:
        raise ConfigError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    if not attentions:
        raise ConfigError("rollout needs at least one attention matrix")
    result = None
    for attn in attentions:
        a = _fuse_heads(attn.detach().double(), head_fusion)
        b, n, _ = a.shape
        k = int(n * n * discard_ratio)
        if k > 0:
            flat = a.reshape(b, -1).clone()
            lowest = flat.topk(k, dim=-1, largest=False).indices
            flat.scatter_(-1, lowest, 0.0)
            a = flat.reshape(b, n, n)
        a = a + torch.eye(n, dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result.float()


def rollout_maps(
    model: nn.Module,
    images: torch.Tensor,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    upsample: bool = True,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Return (B, H, W) attention-rollout maps ((B, gh, gw) without `upsample`).

    The class-token row of the rollout with all prefix tokens dropped; for a model without class
    token, the mean over query tokens.
    """
    model = attention_model(model)
    layout = token_layout(model)
    _, attns = capture_attention(model, images)
    roll = rollout_matrix(attns, head_fusion, discard_ratio)
    rows = _query_rows(roll, layout.num_prefix_tokens)
    return to_image(rows, layout.grid_size, tuple(images.shape[-2:]) if upsample else None, mode)


def gradient_rollout(
    model: nn.Module,
    images: torch.Tensor,
    target: int | torch.Tensor | None = None,
    upsample: bool = True,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Return (B, H, W) gradient-weighted rollout maps (Chefer et al. 2021) for the target logit.

    Per layer: A_bar = mean over heads of clamp(grad(A) * A, min=0), where grad is the gradient of
    each image's target logit (predicted class when `target` is None); relevance R starts as the
    identity and updates R <- R + A_bar @ R through the layers. Read the class-token row with all
    prefix tokens dropped (for a model without class token, the mean over query tokens).
    """
    model = attention_model(model)
    layout = token_layout(model)
    with evaluating(model), record_attention(model) as store, torch.enable_grad():
        logits = model(images)
        classes = target_classes(logits, target)
        score = logits.gather(1, classes[:, None]).sum()
        attns = list(store)
        grads = torch.autograd.grad(score, attns)
    b, _, n, _ = attns[0].shape
    rel = torch.eye(n, dtype=torch.float64, device=attns[0].device).expand(b, n, n).clone()
    for attn, grad in zip(attns, grads):
        a_bar = (grad.detach() * attn.detach()).clamp(min=0).mean(dim=1).double()
        rel = rel + a_bar @ rel
    rows = _query_rows(rel.float(), layout.num_prefix_tokens)
    return to_image(rows, layout.grid_size, tuple(images.shape[-2:]) if upsample else None, mode)

"""How a ViT lays its tokens over the image: grid, token pitch, prefix tokens, first conv.

Works for the suite's stems (which expose `stride`, `grid_size`, `first_conv`, `kind`) and for
timm's plain `PatchEmbed` (pitch = `patch_size[0]`, first conv = `proj`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from analysis.errors import ConfigError


@dataclass(frozen=True)
class TokenLayout:
    """Token geometry of one model."""

    grid_size: tuple[int, int]  # (gh, gw) token grid
    stride: int  # token pitch in pixels (total stem stride)
    num_prefix_tokens: int  # class / register tokens in front of the patch tokens
    first_conv: nn.Conv2d  # the stem's first convolution
    kind: str  # stem kind ("patchify" for timm's PatchEmbed)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]


def token_layout(model: nn.Module) -> TokenLayout:
    """Return the TokenLayout of a timm VisionTransformer (grid from the stem, never sqrt(N))."""
    stem = getattr(model, "patch_embed", None)
    if stem is None or getattr(stem, "grid_size", None) is None:
        raise ConfigError(
            f"{type(model).__name__} has no patch_embed with a grid_size: it has no tokens to lay "
            "over the image; expected a ViT (timm VisionTransformer)"
        )
    stride = getattr(stem, "stride", None)
    if stride is None:
        stride = stem.patch_size[0]
    first_conv = getattr(stem, "first_conv", None)
    if first_conv is None:
        first_conv = getattr(stem, "proj", None)
    if not isinstance(first_conv, nn.Conv2d):
        raise ConfigError("stem has neither first_conv nor proj as an nn.Conv2d")
    gh, gw = stem.grid_size
    return TokenLayout(
        grid_size=(int(gh), int(gw)),
        stride=int(stride),
        num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)),
        first_conv=first_conv,
        kind=str(getattr(stem, "kind", "patchify")),
    )


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first convolution the image meets: a ViT stem's (token_layout), else timm's
    `pretrained_cfg["first_conv"]`, else the model's first nn.Conv2d."""
    if getattr(model, "patch_embed", None) is not None:
        return token_layout(model).first_conv
    name = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(name, str):
        try:
            conv = model.get_submodule(name)
        except AttributeError:
            conv = None
        if isinstance(conv, nn.Conv2d):
            return conv
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ConfigError(f"{type(model).__name__} has no nn.Conv2d to read filters from")
    return conv


def target_classes(logits: torch.Tensor, target: int | torch.Tensor | None) -> torch.Tensor:
    """Return one class index per image: `target` broadcast, or the predicted class when None."""
    if target is None:
        return logits.argmax(dim=-1)
    target = torch.as_tensor(target, device=logits.device, dtype=torch.long)
    return target.expand(logits.shape[0]).clone() if target.ndim == 0 else target


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the block; restore each module's previous mode after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode

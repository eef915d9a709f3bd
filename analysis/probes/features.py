"""One way to read any model's layers: timm's `forward_intermediates`.

ViTs (timm VisionTransformer and its subclasses, the suite's StemViT included: models with a
`patch_embed`, `num_prefix_tokens` and prefix-token support in forward_intermediates) give token
features (B, N, C): first the stem output (what `patch_embed` returns, before the position
embedding and prefix tokens; forward_intermediates does not return it, so one forward hook on
patch_embed keeps it), then every block's output with its prefix tokens (class, register) in front.

Other models (timm's ResNet, RegNet, ConvNeXt, Swin, ...) give NCHW feature maps: timm's feature
stages, named after `feature_info` (ResNet: the stem after its activation, called "stem", then
layer1..layer4; RegNet: stem, s1..s4; ConvNeXt, EfficientNet and Swin start at their first stage,
as timm returns no stem output for them). timm returns one map per stage, not per residual block.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

from analysis.errors import ConfigError
from analysis.probes.layout import evaluating
from analysis.runs import as_model

STEM_MODULES = ("act1", "stem")  # timm feature_info names of a CNN's stem output


@dataclass(frozen=True)
class Layer:
    """One layer's features for a batch of images."""

    name: str
    value: torch.Tensor  # (B, N, C) tokens or (B, C, H, W) map
    num_prefix: int = 0  # prefix tokens in front of a token layer's patch tokens

    @property
    def is_tokens(self) -> bool:
        return self.value.ndim == 3

    def flat(self, prefix_tokens: bool = True) -> torch.Tensor:
        """(B, features): every value of the layer; without `prefix_tokens` only the patch tokens."""
        v = self.value if prefix_tokens or not self.is_tokens else self.value[:, self.num_prefix :]
        return v.reshape(v.shape[0], -1)

    def pooled(self) -> dict[str, torch.Tensor]:
        """{pool: (B, C)}: "class_token" (when the layer has one) and "patch_mean" (mean of the patch
        tokens) for token layers, "global_avg" (mean over H, W) for maps."""
        if not self.is_tokens:
            return {"global_avg": self.value.mean(dim=(2, 3))}
        out = {"class_token": self.value[:, 0]} if self.num_prefix else {}
        out["patch_mean"] = self.value[:, self.num_prefix :].mean(dim=1)
        return out


def has_tokens(model: nn.Module) -> bool:
    """Whether the model is read as a ViT (token features) rather than as a CNN (maps)."""
    fi = getattr(model, "forward_intermediates", None)
    if fi is None or not hasattr(model, "patch_embed") or not hasattr(model, "num_prefix_tokens"):
        return False
    return "return_prefix_tokens" in inspect.signature(fi).parameters


def _check(model: nn.Module) -> None:
    if not callable(getattr(model, "forward_intermediates", None)):
        raise ConfigError(
            f"{type(model).__name__} has no forward_intermediates; the probes read timm models "
            "(VisionTransformer, ResNet, RegNet, ...) and the suite's own"
        )


def _token_layers(model: nn.Module, images: torch.Tensor) -> list[Layer]:
    kept: dict[str, torch.Tensor] = {}
    hook = model.patch_embed.register_forward_hook(lambda m, i, out: kept.__setitem__("stem", out))
    try:
        outs = model.forward_intermediates(images, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True)
    finally:
        hook.remove()
    stem = kept["stem"]
    stem = stem.flatten(1, 2) if stem.ndim == 4 else stem  # NHWC with dynamic image size
    p = int(model.num_prefix_tokens)
    layers = [Layer("stem", stem)]
    for i, out in enumerate(outs):
        value = torch.cat([out[1], out[0]], dim=1) if isinstance(out, tuple) else out
        layers.append(Layer(f"block{i}", value, p))
    return layers


def _map_names(model: nn.Module, n: int) -> list[str]:
    info = getattr(model, "feature_info", None)
    modules = [f.get("module") for f in info] if isinstance(info, list) and len(info) == n else []
    if not modules or None in modules:
        return [f"feature{i}" for i in range(n)]
    return ["stem" if m in STEM_MODULES else m for m in modules]


def read_layers(model, images: torch.Tensor) -> list[Layer]:
    """Return every layer of `model` for `images` (eval mode, no grad): the stem output first,
    then each block (ViTs, tokens) or each feature stage (CNNs, maps). See the module docstring.
    `model` is any source analysis.runs.as_model takes."""
    model = as_model(model)
    _check(model)
    with evaluating(model), torch.no_grad():
        if has_tokens(model):
            return _token_layers(model, images)
        outs = model.forward_intermediates(images, intermediates_only=True)
    if any(o.ndim != 4 for o in outs):
        raise ConfigError(
            f"{type(model).__name__}.forward_intermediates returned shapes "
            f"{[tuple(o.shape) for o in outs]}; expected NCHW maps"
        )
    return [Layer(name, o) for name, o in zip(_map_names(model, len(outs)), outs)]


def block_features(model, images: torch.Tensor, prefix_tokens: bool = True) -> dict[str, torch.Tensor]:
    """Return {layer name: (B, features)}: every layer of read_layers flattened (the CKA input)."""
    return {layer.name: layer.flat(prefix_tokens) for layer in read_layers(model, images)}


def iter_batches(
    batches: Iterable, max_images: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield (images, labels or None) from batches of image tensors or (images, labels) pairs,
    stopping after `max_images` images (the last batch cut short)."""
    seen = 0
    for batch in batches:
        images, labels = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        if max_images is not None:
            images = images[: max_images - seen]
            labels = None if labels is None else labels[: len(images)]
        if len(images) == 0:
            break
        yield images, labels
        seen += len(images)
        if max_images is not None and seen >= max_images:
            break

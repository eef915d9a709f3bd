"""Input attributions through captum, each returned as (B, H, W) maps over the image.

Channel handling: Integrated Gradients and occlusion sum their (B, C, H, W) attributions over
channels (signed); saliency-based SmoothGrad sums absolute gradients. The target is one class
per image; None means each image's predicted class.
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion, Saliency
from torch import nn

from analysis.errors import ConfigError, one_of
from analysis.probes.layout import evaluating, first_conv, target_classes, token_layout
from analysis.runs import as_model

SMOOTHGRAD_BASES = ("saliency", "ig")


def _targets(model: nn.Module, images: torch.Tensor, target) -> torch.Tensor:
    with torch.no_grad():
        return target_classes(model(images), target)


def _check(images: torch.Tensor) -> None:
    if images.ndim != 4:
        raise ConfigError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")


def integrated_gradients(
    model,
    images: torch.Tensor,
    target: int | torch.Tensor | None = None,
    steps: int = 32,
    internal_batch_size: int = 32,
    baseline: float = 0.0,
) -> torch.Tensor:
    """Return (B, H, W) Integrated Gradients from a constant `baseline` image, summed over channels."""
    _check(images)
    model = as_model(model)
    with evaluating(model):
        classes = _targets(model, images, target)
        attr = IntegratedGradients(model).attribute(
            images, baselines=baseline, target=classes, n_steps=steps, internal_batch_size=internal_batch_size
        )
    return attr.sum(dim=1).detach()


def smoothgrad(
    model,
    images: torch.Tensor,
    target: int | torch.Tensor | None = None,
    base: str = "saliency",
    samples: int = 8,
    stdev: float = 0.15,
    steps: int = 16,
    internal_batch_size: int = 32,
) -> torch.Tensor:
    """Return (B, H, W) SmoothGrad maps: captum's NoiseTunnel over Saliency or Integrated Gradients.

    `stdev` is the noise standard deviation in input units; `steps` and `internal_batch_size`
    apply to the IG base only.
    """
    _check(images)
    model = as_model(model)
    if base not in SMOOTHGRAD_BASES:
        raise one_of("smoothgrad base", base, SMOOTHGRAD_BASES)
    with evaluating(model):
        classes = _targets(model, images, target)
        if base == "saliency":
            method, extra = Saliency(model), {"abs": True}
        else:
            method, extra = IntegratedGradients(model), {"n_steps": steps, "internal_batch_size": internal_batch_size}
        attr = NoiseTunnel(method).attribute(
            images, nt_type="smoothgrad", nt_samples=samples, stdevs=stdev, target=classes, **extra
        )
    return attr.sum(dim=1).detach()


def occlusion(
    model,
    images: torch.Tensor,
    target: int | torch.Tensor | None = None,
    window: int | None = None,
    baseline: float = 0.0,
    perturbations_per_eval: int = 16,
) -> torch.Tensor:
    """Return (B, H, W) occlusion maps: drop in the target logit when a token-sized square is set to `baseline`.

    The window and its stride default to the stem's token pitch, so each window covers one token.
    """
    _check(images)
    model = as_model(model)
    if window is None and getattr(model, "patch_embed", None) is None:
        raise ConfigError(f"{type(model).__name__} has no tokens to size the occlusion window by; pass window=")
    size = token_layout(model).stride if window is None else int(window)
    c = images.shape[1]
    with evaluating(model), torch.no_grad():
        classes = _targets(model, images, target)
        attr = Occlusion(model).attribute(
            images,
            sliding_window_shapes=(c, size, size),
            strides=(c, size, size),
            baselines=baseline,
            target=classes,
            perturbations_per_eval=perturbations_per_eval,
        )
    return attr.mean(dim=1).detach()


def stem_gradcam(
    model, images: torch.Tensor, target: int | torch.Tensor | None = None, relu: bool = True
) -> torch.Tensor:
    """Return (B, H, W) Grad-CAM on the first conv (the stem's, an NCHW layer), upsampled bilinearly to the image."""
    _check(images)
    model = as_model(model)
    layer = first_conv(model)
    with evaluating(model):
        classes = _targets(model, images, target)
        cam = LayerGradCam(model, layer).attribute(images, target=classes, relu_attributions=relu)
        cam = LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), interpolate_mode="bilinear")
    return cam[:, 0].detach()

"""create_model: a preset name plus overrides -> a ready model with its settings attached.

Every preset is a model in timm's registry (analysis.models.timm_presets): `create_model` looks it up
there, as `timm.create_model` does; timm's entrypoint calls `build`, the one builder of presets.
"""

from typing import Any, Dict, Optional

import timm
from torch import nn

from analysis.errors import ConfigError
from analysis.models.cnn import build_cnn
from analysis.models.presets import get_preset, timm_name
from analysis.models.registry import lookup_stem
from analysis.models.vit import build_vit


OVERRIDES = ("stem", "local_mlp", "num_classes", "in_chans", "img_size")  # what `resolve` takes


def resolve(preset: str, **overrides) -> Dict[str, Any]:
    """Returns the preset's settings with the overrides applied (keywords: OVERRIDES; None keeps the
    preset's value), after checking them; raises ConfigError on bad input or an unknown keyword."""
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ConfigError(f"unknown override {', '.join(unknown)}; allowed: {', '.join(OVERRIDES)}")
    stem, local_mlp = overrides.get("stem"), overrides.get("local_mlp")
    s = get_preset(preset)
    if s["family"] == "cnn":
        if stem is not None:
            raise ConfigError(
                f"stem {stem!r} given for CNN preset {preset!r}; allowed: stem=None (stems apply to ViT presets: vit_*)"
            )
        if local_mlp:
            raise ConfigError(
                f"local_mlp=True given for CNN preset {preset!r}; "
                f"allowed: local_mlp=None/False (local_mlp applies to ViT presets: vit_*)"
            )
    else:
        if stem is not None:
            s["stem"] = stem
        if local_mlp is not None:
            s["local_mlp"] = bool(local_mlp)
    for key in ("num_classes", "in_chans", "img_size"):
        value = overrides.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
            s[key] = value
    if s["family"] == "vit":
        entry = lookup_stem(s["stem"])  # a registered name or an importable module.path:callable
        # stems that state their stride before they are built (the suite's) are checked here, others when built
        stride = entry.stride(s["patch_size"], s["stem_strides"]) if entry.stride else s["patch_size"]
        if s["img_size"] % stride:
            raise ConfigError(
                f"img_size {s['img_size']} is not divisible by the {s['stem']} stem's "
                f"total stride {stride}; allowed: multiples of {stride}"
            )
    return s


def build(preset: str, fused_attn: bool = True, **overrides) -> nn.Module:
    """Returns a freshly initialised model for a preset; `overrides` are `resolve`'s keyword arguments
    (OVERRIDES: stem, local_mlp, num_classes, in_chans, img_size), as `create_model` takes them."""
    s = resolve(preset, **overrides)
    model = build_vit(s, fused_attn) if s["family"] == "vit" else build_cnn(s)
    model.preset = preset
    model.family = s["family"]
    model.img_size = s["img_size"]
    model.in_chans = s["in_chans"]
    model.num_classes = s["num_classes"]
    model.settings = s
    return model


def create_model(
    preset: str,
    stem: Optional[str] = None,
    local_mlp: Optional[bool] = None,
    num_classes: Optional[int] = None,
    in_chans: Optional[int] = None,
    img_size: Optional[int] = None,
    fused_attn: bool = True,
) -> nn.Module:
    """Returns a freshly initialised model for a preset; keyword arguments override the preset.

    The same as `timm.create_model(preset, ...)` (with `regnety_1.6gf` as timm's `regnety_1_6gf`).
    fused_attn=False switches every attention module to the explicit softmax path (needed to
    read attention maps). The model carries `preset`, `family`, `img_size`, `in_chans`,
    `num_classes`, `settings` (the resolved preset dict), timm's `pretrained_cfg` and, for ViTs,
    `stem_name`.
    """
    get_preset(preset)  # an unknown preset: one line naming the presets
    overrides = dict(stem=stem, local_mlp=local_mlp, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    return timm.create_model(timm_name(preset), fused_attn=fused_attn, **overrides)

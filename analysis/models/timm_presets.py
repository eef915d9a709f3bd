"""The presets in timm's model registry: `timm.create_model("vit_c_fmnist_tiny")`,
`timm.list_models("vit_c_*")` and `timm.get_pretrained_cfg(name)` know every preset.

Each preset is registered (on import of analysis.models) under `timm_name(preset)` with an
entrypoint that calls `analysis.models.factory.build`, and a pretrained_cfg stating its input
(input_size (C, H, W), num_classes, the mean/std of its dataset); it has no weights (url/hf_hub_id
unset). A built model's `pretrained_cfg` states its own input size and classes (after overrides).
"""

from typing import Any, Callable, Dict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, is_model, register_model, resolve_pretrained_cfg
from torch import nn

from analysis.errors import ConfigError
from analysis.models.factory import OVERRIDES as PRESET_OVERRIDES
from analysis.models.factory import build
from analysis.models.presets import DATASET_STATS as STATS
from analysis.models.presets import PRESETS, timm_name

OVERRIDES = (*PRESET_OVERRIDES, "fused_attn")  # what a preset's entrypoint takes
MODULE = __name__.rsplit(".", 1)[-1]  # the module name timm files the presets under


def pretrained_cfg(p: Dict[str, Any]) -> Dict[str, Any]:
    """The pretrained_cfg of a preset dict: its input, classes and its dataset's mean/std."""
    mean, std = (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) if p["dataset"] == "imagenet" else STATS[p["dataset"]]
    first_conv = "patch_embed.first_conv" if p["family"] == "vit" else None
    return dict(
        input_size=(p["in_chans"], p["img_size"], p["img_size"]),
        num_classes=p["num_classes"],
        mean=tuple(mean),
        std=tuple(std),
        first_conv=first_conv,
        classifier="head" if p["family"] == "vit" else None,
    )


def entrypoint(preset: str) -> Callable[..., nn.Module]:
    """timm's entrypoint for one preset: timm.create_model's arguments -> `build(preset, ...)`."""
    name = timm_name(preset)

    def create(
        pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs
    ) -> nn.Module:
        if pretrained:
            raise ConfigError(f"{preset} is a suite preset: it has no pretrained weights; pass checkpoint_path")
        unknown = sorted(set(kwargs) - set(OVERRIDES))
        if unknown:
            raise ConfigError(f"preset {preset} takes no {', '.join(unknown)}; allowed: {', '.join(OVERRIDES)}")
        model = build(preset, **kwargs)
        cfg = resolve_pretrained_cfg(name, pretrained_cfg, pretrained_cfg_overlay).to_dict()
        cfg.update(input_size=(model.in_chans, model.img_size, model.img_size), num_classes=model.num_classes)
        model.pretrained_cfg = model.default_cfg = cfg
        return model

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"The suite preset {preset} (analysis.models.presets), built by analysis.models.factory.build."
    return create


def register_presets() -> None:
    """Registers every preset in timm's model registry; refuses a name timm already has for another model."""
    for preset in PRESETS:
        name = timm_name(preset)
        if is_model(name) and name not in globals():
            raise RuntimeError(f"timm already has a model {name!r}; a preset cannot take its name")
        globals()[name] = register_model(entrypoint(preset))


default_cfgs = generate_default_cfgs({timm_name(n): pretrained_cfg(p) for n, p in PRESETS.items()})
register_presets()

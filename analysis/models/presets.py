"""Named model presets: the paper's eight ViTs (Table 1), small-image versions and CNN baselines.

Every preset is a plain JSON-able dict. ViT keys:
  family "vit"; img_size, in_chans, num_classes; embed_dim (d), depth (blocks), num_heads,
  mlp_ratio (MLP width / d); stem (one of STEMS); patch_size (total stem stride);
  stem_channels / stem_strides (the conv stem's 3x3 layers, then a 1x1 conv to d; kept on
  ViT_P presets too so that any stem can be swapped in); local_mlp (LocalViT MLP).
CNN keys: family "cnn"; arch ("regnety_016", ..., or "resnet_small"); img_size, in_chans, num_classes.
Both: dataset ("imagenet", "fashion_mnist" or "cifar10"), the data the preset is shaped for; its
mean/std go into the preset's pretrained_cfg in timm's registry (analysis.models.timm_presets).

ViT_C has one block fewer than ViT_P (the conv stem costs about one block).
Small presets use patch 4: two stride-2 3x3 convs doubling the width, then the 1x1 to d; the
widths are chosen so that the conv stem costs about one transformer block.
"""

from typing import Any, Dict, List, Optional

from analysis.errors import one_of

FAMILIES = ("vit", "cnn")


def _vit_pair(
    name: str,
    d: int,
    mlp: int,
    heads: int,
    blocks_p: int,
    channels: List[int],
    strides: List[int],
    img_size: int,
    in_chans: int,
    num_classes: int,
    dataset: str,
) -> Dict[str, dict]:
    """Returns {vit_p_<name>: ..., vit_c_<name>: ...}: same widths, C with the conv stem, one block fewer."""
    patch = 1
    for s in strides:
        patch *= s
    base = {
        "family": "vit",
        "dataset": dataset,
        "img_size": img_size,
        "in_chans": in_chans,
        "num_classes": num_classes,
        "embed_dim": d,
        "num_heads": heads,
        "mlp_ratio": mlp / d,
        "patch_size": patch,
        "stem_channels": list(channels),
        "stem_strides": list(strides),
        "local_mlp": False,
    }
    return {
        f"vit_p_{name}": dict(base, stem="patchify", depth=blocks_p),
        f"vit_c_{name}": dict(base, stem="conv", depth=blocks_p - 1),
    }


def _cnn(arch: str, img_size: int, in_chans: int, num_classes: int, dataset: str) -> dict:
    """Returns a CNN preset dict."""
    return dict(family="cnn", dataset=dataset, arch=arch, img_size=img_size, in_chans=in_chans, num_classes=num_classes)


IMAGENET, FMNIST, CIFAR = "imagenet", "fashion_mnist", "cifar10"
# Per-channel mean/std on [0, 1] pixels of the small datasets: the data loaders normalise with them and
# each preset's pretrained_cfg in timm's registry carries them (ImageNet takes timm's own).
DATASET_STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_S16 = [2, 2, 2, 2]
_S16_DEEP = [2, 2, 1, 2, 1, 2]
_DEEP = [64, 128, 128, 256, 256, 512]

PRESETS: Dict[str, Dict[str, Any]] = {
    # Table 1 (224 px ImageNet)
    **_vit_pair("1gf", 192, 576, 3, 12, [24, 48, 96, 192], _S16, 224, 3, 1000, IMAGENET),
    **_vit_pair("4gf", 384, 1152, 6, 12, [48, 96, 192, 384], _S16, 224, 3, 1000, IMAGENET),
    **_vit_pair("18gf", 768, 3072, 12, 12, _DEEP, _S16_DEEP, 224, 3, 1000, IMAGENET),
    **_vit_pair("36gf", 1024, 4096, 16, 14, _DEEP, _S16_DEEP, 224, 3, 1000, IMAGENET),
    # small images, patch 4
    **_vit_pair("fmnist", 128, 384, 4, 7, [96, 192], [2, 2], 28, 1, 10, FMNIST),
    **_vit_pair("cifar", 128, 384, 4, 7, [96, 192], [2, 2], 32, 3, 10, CIFAR),
    **_vit_pair("fmnist_tiny", 64, 192, 2, 5, [48, 96], [2, 2], 28, 1, 10, FMNIST),
    **_vit_pair("cifar_tiny", 64, 192, 2, 5, [48, 96], [2, 2], 32, 3, 10, CIFAR),
    # small images at the paper's stem geometry: patch 16 on 64 px (four stride-2 3x3 convs, then the
    # 1x1), patch 8 on 32 px (three stride-2 convs): 16 tokens each; images are resized on load. As the
    # paper does for its models, the conv widths are picked so that ViT_C's flops are within 1% of
    # ViT_P's (tests/test_models.py checks every pair): the paper's doubling rule (d/8..d) where it
    # lands within 1%, else the doubling widths nearest to it that do (fmnist_p16: 15-120, fmnist_p8_tiny:
    # 17-68), and for cifar_p16_tiny, where no doubling stack does, 9-18-36 and a wider last 3x3 (84)
    **_vit_pair("fmnist_p16_tiny", 64, 192, 2, 5, [8, 16, 32, 64], _S16, 64, 1, 10, FMNIST),
    **_vit_pair("fmnist_p16", 128, 384, 4, 7, [15, 30, 60, 120], _S16, 64, 1, 10, FMNIST),
    **_vit_pair("cifar_p16_tiny", 64, 192, 2, 5, [9, 18, 36, 84], _S16, 64, 3, 10, CIFAR),
    **_vit_pair("cifar_p16", 128, 384, 4, 7, [16, 32, 64, 128], _S16, 64, 3, 10, CIFAR),
    **_vit_pair("fmnist_p8_tiny", 64, 192, 2, 5, [17, 34, 68], [2, 2, 2], 32, 1, 10, FMNIST),
    # CNN baselines
    "regnety_1.6gf": _cnn("regnety_016", 224, 3, 1000, IMAGENET),
    "regnety_4gf": _cnn("regnety_040", 224, 3, 1000, IMAGENET),
    "regnety_16gf": _cnn("regnety_160", 224, 3, 1000, IMAGENET),
    "resnet_fmnist": _cnn("resnet_small", 28, 1, 10, FMNIST),
    "resnet_cifar": _cnn("resnet_small", 32, 3, 10, CIFAR),
}


def preset_names(kind: Optional[str] = None) -> List[str]:
    """Returns the preset names, all or those of one family ("vit" or "cnn")."""
    if kind is None:
        return list(PRESETS)
    if kind not in FAMILIES:
        raise one_of("preset kind", kind, FAMILIES)
    return [n for n, p in PRESETS.items() if p["family"] == kind]


def timm_name(preset: str) -> str:
    """The preset's name in timm's model registry: the same, with '.' as '_' (timm reads what follows a
    '.' as a weight tag, so `regnety_1.6gf` is `regnety_1_6gf` there)."""
    return preset.replace(".", "_")


def get_preset(name: str) -> Dict[str, Any]:
    """Returns a copy of the named preset's settings."""
    if name not in PRESETS:
        raise one_of("preset", name, PRESETS)
    p = dict(PRESETS[name])
    for k in ("stem_channels", "stem_strides"):
        if k in p:
            p[k] = list(p[k])
    return p

"""Names of models and stems, in one place: the display name of a stem and of a model, a preset's
size and family, and the stem a run, a frame row or (for labels without a frame) a label names.

Figures colour by the `stem` column of collect()'s frame (see plots.style.color_map); `stem_of_label`
is the fallback for figures given only names (e.g. {"ViT_C-fmnist": distances}).
"""

from __future__ import annotations

import re

# Display names of the paper's two stems; other stems are shown by their registered name.
STEM_NAMES = {"patchify": "ViT_P", "conv": "ViT_C"}
CNN = "cnn"  # the colour key of the CNN baselines (they have no stem)
_GF = re.compile(r"\d+(\.\d+)?gf")  # pycls' size names: 1gf, 4gf, 18gf -> 1GF, 4GF, 18GF


def stem_name(stem: str | None) -> str:
    """ViT_P / ViT_C for the paper's stems, else the stem's own name."""
    return STEM_NAMES.get(stem, str(stem))


def family(preset: str) -> str:
    """ "vit" or "cnn": the preset's family (presets not known here are taken as ViTs)."""
    from analysis.models import PRESETS

    return PRESETS.get(preset, {}).get("family", "vit")


def preset_size(preset: str) -> str:
    """The size part of a ViT preset: vit_c_fmnist_tiny -> fmnist_tiny, vit_p_4gf -> 4GF."""
    size = re.sub(r"^vit_[a-z]+_", "", str(preset))
    return size.upper() if _GF.fullmatch(size) else size


def model_name(preset: str, stem: str | None) -> str:
    """Display name: the stem's display name, then the preset's size ("ViT_C-4GF"); a CNN by its preset."""
    if family(preset) == "cnn":
        return preset
    return f"{stem_name(stem)}-{preset_size(preset)}"


def preset_stem(preset: str) -> str | None:
    """The stem a preset is built with (None for a CNN or an unknown preset)."""
    from analysis.models import PRESETS

    return PRESETS.get(preset, {}).get("stem")


def stem_of_config(cfg) -> str | None:
    """A run's stem: its model.stem, else its preset's."""
    return cfg.model.stem or preset_stem(cfg.model.preset)


def colour_key(stem, preset=None) -> str | None:
    """What a row is coloured by: its stem, "cnn" for a CNN preset, else None."""
    if isinstance(stem, str) and stem:
        return stem
    return CNN if isinstance(preset, str) and family(preset) == "cnn" else None


def stem_of_label(label: str) -> str | None:
    """The stem a label names, for figures given names without a frame: a word that is a stem
    ("conv_ln-fmnist"), a display name ("ViT_P-4GF"), a preset or run id holding a preset
    ("0003-vit_p_fmnist_tiny-sgd"), or a CNN baseline (resnet*, regnet*: "cnn")."""
    from analysis.models import PRESETS, stem_names

    stems = set(stem_names())
    prefixes = {v.lower(): k for k, v in STEM_NAMES.items()}  # "vit_p", the display name, is also the presets' prefix
    for word in re.split(r"[\s\-,·/()]+", str(label)):
        low = word.lower()
        if low in stems:
            return low
        if low in PRESETS:
            return colour_key(preset_stem(low), low)
        for prefix, stem in prefixes.items():
            if low == prefix or low.startswith(prefix + "_"):
                return stem
        if low.startswith(("resnet", "regnet")):
            return CNN
    return None

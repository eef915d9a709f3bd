"""Models: ViTs with patchify / conv / other stems on timm, CNN baselines, presets, complexity.

from analysis.models import create_model, PRESETS, STEMS, complexity, preset_names
model = create_model("vit_c_fmnist", stem="cct", local_mlp=True)
complexity(model, model.img_size, model.in_chans)  # {"flops", "params", "acts"}
timm.create_model("vit_c_fmnist_tiny")  # the same model: presets are in timm's registry

@register_stem("my_stem")            # a stem of your own (analysis.models.registry)
def my_stem(img_size, patch_size, in_chans, embed_dim, **kwargs): ...
"""

from analysis.models.complexity import complexity
from analysis.models.factory import create_model, resolve
from analysis.models.presets import PRESETS, preset_names
from analysis.models.registry import STEMS, register_stem, stem_names
from analysis.models.stems import CCTStem, ConvStem, PatchifyStem, Stem
from analysis.models.timm_presets import timm_name
from analysis.models.vit import LocalMlp, StemViT, set_fused_attn

__all__ = [
    "create_model",
    "resolve",
    "PRESETS",
    "STEMS",
    "complexity",
    "preset_names",
    "timm_name",
    "Stem",
    "PatchifyStem",
    "ConvStem",
    "CCTStem",
    "StemViT",
    "LocalMlp",
    "set_fused_attn",
    "register_stem",
    "stem_names",
]

"""The initial weights of every ViT follow the paper's code (pycls `vitconfigs`, `init_weights_vit`).

Each parameter group (a stem layer, or one kind of parameter pooled over all blocks) is checked
against the reference rule, written out here from the reference independently of analysis/models:
exact zeros and ones where the rule is a constant; for random rules the sample standard deviation
within 5 standard errors of the rule's (the standard error of a sample std from n draws of a
distribution with kurtosis k is std * sqrt((k - 1) / (4 n)): k = 3 normal, 1.8 uniform), the mean
within 5 standard errors of 0, and the shape: a uniform rule stays inside its bound and reaches
close to it, a normal rule puts 8.3% of its draws beyond sqrt(3) std (a uniform puts none there).
Models are built under a fixed seed, so the checks are deterministic.
"""

import math
import re

import pytest
import torch
from torch import nn

from analysis.models import create_model, preset_names

Z = 5.0  # standard errors allowed
NORMAL_TAIL = math.erfc(math.sqrt(3.0) / math.sqrt(2.0))  # P(|x| > sqrt(3) std) for a normal, 0.0833
PAPER = [n for n in preset_names("vit") if n.endswith("gf")]
SMALL = [n for n in preset_names("vit") if not n.endswith("gf")]
BIG = ("18gf", "36gf")


def fan_in(weight: torch.Tensor) -> int:
    return weight[0].numel()


def stem_rule(model: nn.Module, name: str, module: nn.Module, param: str) -> tuple:
    """The rule of one stem parameter: the paper's for patchify and conv, the suite's for the rest."""
    kind = model.stem.kind
    if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
        return ("const", 1.0) if param == "weight" else ("const", 0.0)
    if param == "bias":
        return ("const", 0.0)
    w = module.weight
    if kind in ("patchify", "patchify_bn"):
        return ("trunc_normal", math.sqrt(1.0 / fan_in(w)), 2.0)
    if kind == "cct":
        return ("normal", math.sqrt(2.0 / fan_in(w)))
    last = [m for m in model.stem.body if isinstance(m, nn.Conv2d)][-1]
    if module is last:  # the conv stem's final 1x1
        return ("normal", math.sqrt(2.0 / w.shape[0]))
    return ("uniform", 1.0 / math.sqrt(fan_in(w)))  # PyTorch's default: kaiming_uniform(a=sqrt(5))


def rule(model: nn.Module, name: str) -> tuple:
    """The reference rule of the parameter `name`: ("const", v), ("normal", std),
    ("trunc_normal", std, bound) or ("uniform", bound)."""
    module_name, _, param = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if name == "cls_token":
        return ("const", 0.0)
    if name == "pos_embed":
        return ("normal", 0.02)
    if module_name.startswith("patch_embed."):
        return stem_rule(model, name, module, param)
    if isinstance(module, nn.LayerNorm):
        return ("const", 1.0) if param == "weight" else ("const", 0.0)
    if module_name == "head":
        return ("const", 0.0)
    if module_name == "seq_pool":  # CCT's choice (the suite's)
        return ("trunc_normal", 0.02, 2.0) if param == "weight" else ("const", 0.0)
    w = module.weight
    if module_name.endswith("attn.qkv"):
        return ("uniform", math.sqrt(6.0 / (w.shape[0] + w.shape[1]))) if param == "weight" else ("const", 0.0)
    if module_name.endswith("attn.proj"):
        return ("uniform", 1.0 / math.sqrt(fan_in(w))) if param == "weight" else ("const", 0.0)
    if module_name.endswith("mlp.dwconv"):  # LocalViT: the suite's choice, PyTorch's default
        return ("uniform", 1.0 / math.sqrt(fan_in(w)))
    if re.search(r"mlp\.fc[12]$", module_name):
        return ("uniform", math.sqrt(6.0 / (w.shape[0] + w.shape[1]))) if param == "weight" else ("normal", 1e-6)
    raise AssertionError(f"no reference rule for {name}")


def grouped(model: nn.Module) -> dict:
    """{group: [(flat values, rule)]}: block parameters pooled over blocks, each other parameter alone."""
    out = {}
    for name, p in model.named_parameters():
        key = re.sub(r"^blocks\.\d+\.", "blocks.*.", name)
        out.setdefault(key, []).append((p.detach().flatten(), rule(model, name)))
    return out


def check_group(key: str, parts: list) -> None:
    """Asserts the pooled draws of one group follow its rule (see the module docstring)."""
    kind = parts[0][1][0]
    assert all(r[0] == kind for _, r in parts), f"{key}: one group, several rules"
    if kind == "const":
        for v, r in parts:
            assert torch.all(v == r[1]), f"{key}: expected all {r[1]}, got values in [{v.min()}, {v.max()}]"
        return
    for v, r in parts:
        if kind == "trunc_normal":
            assert v.abs().max() <= r[2] + 1e-6, f"{key}: draws beyond the +-{r[2]} truncation"
    x = torch.cat([v.double() / r[1] for v, r in parts])  # in units of the rule's scale: std 1, or bound 1
    n = x.numel()
    if kind == "uniform":
        std, kurt = 1.0 / math.sqrt(3.0), 1.8
        assert x.abs().max() <= 1.0 + 1e-6, f"{key}: {x.abs().max():.4f} x bound, outside the uniform bound"
        assert x.abs().max() >= 1.0 - 20.0 / n, f"{key}: draws stop at {x.abs().max():.4f} x the uniform bound"
    else:
        std, kurt = 1.0, 3.0
        tail = float((x.abs() > math.sqrt(3.0)).double().mean())
        se = math.sqrt(NORMAL_TAIL * (1 - NORMAL_TAIL) / n)
        assert abs(tail - NORMAL_TAIL) <= Z * se, f"{key}: {tail:.4f} beyond sqrt(3) std, normal gives 0.0833"
    rel = Z * math.sqrt((kurt - 1.0) / (4.0 * n))
    got = float(x.std())
    assert abs(got / std - 1.0) <= rel, f"{key}: std {got / std:.4f} x the rule's (n={n}, tolerance {rel:.4f})"
    assert abs(float(x.mean())) <= Z * std / math.sqrt(n), f"{key}: mean {float(x.mean()):.4g} x scale"


def check_model(model: nn.Module) -> list[str]:
    """Checks every parameter group of `model`; returns the group names."""
    groups = grouped(model)
    for key, parts in groups.items():
        check_group(key, parts)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)
    return list(groups)


def build(preset: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_model(preset, **kwargs)


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p.endswith(BIG) else p for p in PAPER])
def test_paper_presets_start_as_the_reference(preset):
    model = build(preset)
    groups = check_model(model)
    stem = [g for g in groups if g.startswith("patch_embed.")]
    if model.stem.kind == "conv":  # 3x3 convs (weight, BN weight, BN bias each), then the 1x1 (weight, bias)
        assert len(stem) == 3 * len(model.settings["stem_channels"]) + 2
    else:
        assert stem == ["patch_embed.body.0.weight", "patch_embed.body.0.bias"]
    for g in (
        "blocks.*.attn.qkv.weight",
        "blocks.*.attn.proj.weight",
        "blocks.*.attn.proj.bias",
        "blocks.*.mlp.fc1.bias",
        "blocks.*.mlp.fc2.weight",
        "head.weight",
        "pos_embed",
    ):
        assert g in groups


@pytest.mark.parametrize("preset", SMALL)
def test_small_presets_start_as_the_reference(preset):
    check_model(build(preset))


@pytest.mark.parametrize(
    "stem, local_mlp", [("patchify_bn", False), ("conv_ln", False), ("cct", False), ("conv", True), ("cct", True)]
)
def test_other_stems_and_local_mlp_follow_their_documented_rules(stem, local_mlp):
    model = build("vit_c_cifar", stem=stem, local_mlp=local_mlp)
    groups = check_model(model)
    assert ("blocks.*.mlp.dwconv.weight" in groups) == local_mlp
    assert ("seq_pool.weight" in groups) == (stem == "cct")


def test_mlp_bias_noise_and_zero_biases_are_exact():
    model = build("vit_p_fmnist")
    fc1 = model.blocks[0].mlp.fc1.bias
    assert torch.count_nonzero(fc1) == fc1.numel() and fc1.abs().max() < 1e-5
    for b in model.blocks:
        assert torch.count_nonzero(b.attn.qkv.bias) == 0 and torch.count_nonzero(b.attn.proj.bias) == 0
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0


def test_checks_catch_a_wrong_rule():
    # xavier on the attention output projection (what timm's "jax" scheme does) is caught
    model = build("vit_c_fmnist_tiny")
    with torch.no_grad():
        for b in model.blocks:
            nn.init.xavier_uniform_(b.attn.proj.weight)
    with pytest.raises(AssertionError, match="attn.proj.weight"):
        check_model(model)
    # He-normal (fan_out) on the conv stem's 3x3 convs is caught
    model = build("vit_c_fmnist_tiny")
    with torch.no_grad():
        nn.init.kaiming_normal_(model.stem.body[3].weight, mode="fan_out", nonlinearity="relu")
    with pytest.raises(AssertionError, match="patch_embed.body.3.weight"):
        check_model(model)

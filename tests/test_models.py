"""Tests for analysis.models: stems, presets (Table 1 of Xiao et al. 2021), complexity, errors."""

import gc
import json

import pytest
import torch
from torch import nn
from timm.layers import Attention, LayerNorm2d

from analysis.errors import ConfigError
from analysis.models.presets import get_preset
from analysis.models import PRESETS, STEMS, LocalMlp, complexity, create_model, preset_names, set_fused_attn

# Table 1 as printed: GF (1e9 flops), params (M), acts (M); compared to the digits given
TABLE1 = {
    "vit_p_1gf": ("1.08", "4.83", "5.52"),
    "vit_c_1gf": ("1.08", "4.57", "5.63"),
    "vit_p_4gf": ("3.91", "18.51", "11.04"),
    "vit_c_4gf": ("3.97", "17.75", "11.26"),
    "vit_p_18gf": ("17.58", "86.57", "23.90"),
    "vit_c_18gf": ("17.73", "81.57", "24.02"),
    "vit_p_36gf": ("36.0", "178.4", "37.1"),
    "vit_c_36gf": ("35.0", "167.8", "36.6"),
}
SMALL = [n for n in preset_names("vit") if not n.endswith("gf")]


def batch(preset: str, n: int = 2) -> torch.Tensor:
    """Returns a random input batch of the preset's image size and channels."""
    p = PRESETS[preset]
    return torch.randn(n, p["in_chans"], p["img_size"], p["img_size"])


def randomize_head(model: nn.Module) -> None:
    """Gives the (zero-initialised) head random weights so outputs depend on the features."""
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)
        model.head.bias.normal_(std=0.5)


def as_printed(value: float, printed: str) -> str:
    """`value` rounded to as many decimals as `printed` shows."""
    decimals = len(printed.partition(".")[2])
    return f"{value:.{decimals}f}"


@pytest.mark.slow
def test_table1_complexity():
    # flops count bias adds as pycls does; every entry equals the table to its last printed digit
    rows = []
    for name, printed in TABLE1.items():
        model = create_model(name)
        c = complexity(model, 224, 3)
        del model
        gc.collect()
        got = tuple(as_printed(v, p) for v, p in zip((c["flops"] / 1e9, c["params"] / 1e6, c["acts"] / 1e6), printed))
        rows.append(
            f"{name:11s} GF {c['flops'] / 1e9:.4f}  params {c['params'] / 1e6:.4f}M  "
            f"acts {c['acts'] / 1e6:.4f}M  (table {' / '.join(printed)})"
        )
        assert got == printed, rows[-1]
    print("\n" + "\n".join(rows))


@pytest.mark.parametrize("preset", SMALL)
@pytest.mark.parametrize("stem", STEMS)
def test_every_stem_runs_fused_and_explicit(preset, stem):
    model = create_model(preset, stem=stem).eval()
    randomize_head(model)
    x = batch(preset)
    assert all(m.fused_attn for m in model.modules() if isinstance(m, Attention))
    with torch.no_grad():
        fused = model(x)
        set_fused_attn(model, False)
        explicit = model(x)
    assert fused.shape == (2, PRESETS[preset]["num_classes"])
    assert torch.isfinite(fused).all()
    assert fused.abs().max() > 0
    torch.testing.assert_close(fused, explicit, rtol=1e-4, atol=1e-5)


def test_fused_attn_false_sets_every_attention():
    model = create_model("vit_c_fmnist_tiny", fused_attn=False)
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(attns) == model.settings["depth"] and not any(m.fused_attn for m in attns)


@pytest.mark.parametrize("size", ["1gf", "4gf", "18gf", "36gf", "fmnist", "cifar", "fmnist_tiny", "cifar_tiny"])
def test_vit_c_has_one_block_fewer(size):
    p, c = PRESETS[f"vit_p_{size}"], PRESETS[f"vit_c_{size}"]
    assert (p["stem"], c["stem"]) == ("patchify", "conv")
    assert c["depth"] == p["depth"] - 1
    assert {k: v for k, v in p.items() if k not in ("stem", "depth")} == {
        k: v for k, v in c.items() if k not in ("stem", "depth")
    }
    if not size.endswith("gf") or size == "1gf":  # keep the big ones out of the fast tests
        assert len(create_model(f"vit_c_{size}").blocks) == len(create_model(f"vit_p_{size}").blocks) - 1


def check_conv_stem(body: nn.Sequential, in_chans: int, d: int, channels, strides, norm) -> None:
    """Asserts the conv stem layout: [3x3 conv no bias -> norm -> ReLU] x n, then 1x1 conv with bias."""
    mods = list(body)
    assert len(mods) == 3 * len(channels) + 1
    c_in = in_chans
    for i, (c, s) in enumerate(zip(channels, strides)):
        conv, nrm, act = mods[3 * i : 3 * i + 3]
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
        assert conv.bias is None and conv.stride == (s, s)
        assert conv.in_channels == c_in and conv.out_channels == c
        if i > 0:  # stride 2 doubles the width, stride 1 keeps it
            assert c == (2 * c_in if s == 2 else c_in)
        assert isinstance(nrm, norm)
        assert (nrm.normalized_shape[0] if norm is LayerNorm2d else nrm.num_features) == c
        assert isinstance(act, nn.ReLU)
        c_in = c
    last = mods[-1]
    assert isinstance(last, nn.Conv2d) and last.kernel_size == (1, 1) and last.bias is not None
    assert last.in_channels == c_in and last.out_channels == d


@pytest.mark.parametrize("preset", ["vit_c_1gf", "vit_c_4gf", "vit_c_18gf", "vit_c_fmnist", "vit_c_cifar_tiny"])
def test_conv_stem_structure(preset):
    p = PRESETS[preset]
    model = create_model(preset)
    stem = model.stem
    check_conv_stem(stem.body, p["in_chans"], p["embed_dim"], p["stem_channels"], p["stem_strides"], nn.BatchNorm2d)
    prod = 1
    for s in p["stem_strides"]:
        prod *= s
    assert stem.stride == prod == p["patch_size"]
    assert stem.first_conv is stem.body[0] and stem.kind == "conv"


def test_table1_stem_widths():
    assert PRESETS["vit_c_1gf"]["stem_channels"] == [24, 48, 96, 192]
    assert PRESETS["vit_c_4gf"]["stem_channels"] == [48, 96, 192, 384]
    assert PRESETS["vit_c_18gf"]["stem_channels"] == [64, 128, 128, 256, 256, 512]
    assert PRESETS["vit_c_18gf"]["stem_strides"] == [2, 2, 1, 2, 1, 2]
    assert PRESETS["vit_c_36gf"]["stem_channels"] == PRESETS["vit_c_18gf"]["stem_channels"]
    assert [PRESETS[f"vit_p_{s}"]["embed_dim"] for s in ("1gf", "4gf", "18gf", "36gf")] == [192, 384, 768, 1024]


def test_ablation_stems_structure():
    p = PRESETS["vit_c_cifar"]
    ln = create_model("vit_c_cifar", stem="conv_ln").stem
    check_conv_stem(ln.body, 3, 128, p["stem_channels"], p["stem_strides"], LayerNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ln.modules())
    bn = create_model("vit_p_cifar", stem="patchify_bn").stem
    conv, norm, act = bn.body
    assert conv.kernel_size == conv.stride == (4, 4) and conv.bias is not None
    assert isinstance(norm, nn.BatchNorm2d) and isinstance(act, nn.ReLU)
    patchify = create_model("vit_p_1gf").stem
    assert len(patchify.body) == 1 and patchify.first_conv.kernel_size == (16, 16)
    assert patchify.first_conv.stride == (16, 16) and patchify.first_conv.bias is not None


@pytest.mark.parametrize("stem", STEMS)
def test_stem_attributes_and_tokens(stem):
    model = create_model("vit_p_cifar", stem=stem).eval()
    s = model.stem
    assert s.kind == stem and model.stem_name == stem and s.stride == 4
    assert s.grid_size == (8, 8) and s.num_patches == 64 and s.feat_ratio() == 4
    assert isinstance(s.first_conv, nn.Conv2d) and s.first_conv.in_channels == 3
    assert s.first_conv is next(m for m in s.modules() if isinstance(m, nn.Conv2d))
    x = batch("vit_p_cifar")
    assert s(x).shape == (2, 64, 128)
    feats = model.forward_intermediates(x, indices=1, intermediates_only=True)
    assert feats[0].shape == (2, 128, 8, 8)


def test_init():
    model = create_model("vit_c_cifar")
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    assert torch.count_nonzero(model.cls_token) == 0
    assert model.pos_embed.shape == (1, 65, 128)
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.settings["depth"] == len(model.blocks) == 6
    assert isinstance(model.norm, nn.LayerNorm) and isinstance(model.blocks[0].mlp.act, nn.GELU)
    assert model.blocks[0].mlp.fc1.out_features == 384


def test_local_mlp_is_local_and_keeps_shapes():
    model = create_model("vit_p_cifar_tiny", local_mlp=True).eval()
    plain = create_model("vit_p_cifar_tiny").eval()
    assert all(isinstance(b.mlp, LocalMlp) for b in model.blocks)
    assert not any(isinstance(b.mlp, LocalMlp) for b in plain.blocks)
    dw = model.blocks[0].mlp.dwconv
    assert dw.kernel_size == (3, 3) and dw.groups == dw.in_channels == 192
    randomize_head(model)
    assert model(batch("vit_p_cifar_tiny")).shape == (2, 10)
    # a change at grid token (0, 0) reaches its neighbour (0, 1), not (3, 3) nor the class token
    mlp = model.blocks[0].mlp
    x = torch.randn(1, 65, 64)
    y = x.clone()
    y[0, 1] += 1.0  # token 1 is grid (0, 0)
    with torch.no_grad():
        delta = (mlp(y) - mlp(x)).abs().sum(-1)[0]
    assert delta[2] > 1e-4  # grid (0, 1)
    assert delta[1 + 3 * 8 + 3] == 0 and delta[0] == 0  # grid (3, 3); class token
    assert mlp(x).shape == x.shape


def test_local_mlp_with_cct_and_conv():
    for stem in ("cct", "conv"):
        model = create_model("vit_c_fmnist_tiny", stem=stem, local_mlp=True)
        assert model.blocks[0].mlp.num_prefix_tokens == (0 if stem == "cct" else 1)
        assert model(batch("vit_c_fmnist_tiny")).shape == (2, 10)


def test_cct_has_no_class_token_and_pools_sequence():
    model = create_model("vit_c_cifar_tiny", stem="cct").eval()
    assert model.cls_token is None and model.num_prefix_tokens == 0
    assert model.pos_embed.shape[1] == model.stem.num_patches == 64
    convs = [m for m in model.stem.body if isinstance(m, nn.Conv2d)]
    pools = [m for m in model.stem.body if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == len(pools) == 2 and convs[-1].out_channels == 64
    # sequence pooling is a softmax-weighted average over tokens
    tokens = torch.randn(2, 64, 64)
    with torch.no_grad():
        w = model.seq_pool(tokens).softmax(dim=1)
        torch.testing.assert_close(model.pool(tokens), (w * tokens).sum(1))
        same = torch.randn(2, 1, 64).expand(2, 64, 64)
        torch.testing.assert_close(model.pool(same), same[:, 0])


def test_overrides_and_attributes():
    model = create_model("vit_p_cifar_tiny", num_classes=7, in_chans=1, img_size=48)
    assert (model.preset, model.family, model.img_size, model.in_chans, model.num_classes) == (
        "vit_p_cifar_tiny",
        "vit",
        48,
        1,
        7,
    )
    assert model.stem.grid_size == (12, 12)
    assert model(torch.randn(2, 1, 48, 48)).shape == (2, 7)
    assert PRESETS["vit_p_cifar_tiny"]["img_size"] == 32  # presets are not mutated


def test_presets_listing():
    json.dumps(PRESETS)
    assert STEMS == ("patchify", "conv", "patchify_bn", "conv_ln", "cct")
    names = set(preset_names())
    assert set(preset_names("vit")) | set(preset_names("cnn")) == names == set(PRESETS)
    assert {"regnety_1.6gf", "regnety_4gf", "regnety_16gf", "resnet_fmnist", "resnet_cifar"} == set(preset_names("cnn"))
    assert set(TABLE1) < set(preset_names("vit"))
    assert as_printed(17.58031, "17.58") == "17.58" and as_printed(35.99719, "36.0") == "36.0"


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: create_model("vit_b_16"), ["preset", "vit_c_cifar", "resnet_cifar"]),
        (lambda: create_model("vit_c_cifar", stem="conv7"), ["stem", "patchify", "conv_ln", "cct"]),
        (lambda: create_model("resnet_cifar", local_mlp=True), ["local_mlp", "vit"]),
        (lambda: create_model("resnet_cifar", stem="conv"), ["stem", "None"]),
        (lambda: create_model("vit_c_cifar", img_size=30), ["img_size", "30", "multiples of 4"]),
        (lambda: create_model("vit_p_1gf", img_size=200), ["200", "multiples of 16"]),
        (lambda: create_model("vit_c_cifar", num_classes=0), ["num_classes", "positive"]),
        (lambda: preset_names("mlp"), ["vit", "cnn"]),
    ],
)
def test_bad_input_errors(call, words):
    with pytest.raises(ConfigError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("preset", ["resnet_fmnist", "resnet_cifar", "regnety_1.6gf"])
def test_cnn_presets_forward(preset):
    model = create_model(preset).eval()
    assert model.family == "cnn" and model.preset == preset
    with torch.no_grad():
        assert model(batch(preset, 1 if preset.startswith("regnety") else 2)).shape[1] == PRESETS[preset]["num_classes"]


def test_small_resnet_stem():
    model = create_model("resnet_cifar")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert [b.conv1.in_channels for b in (model.layer1[0], model.layer2[0])] == [24, 24]


def test_complexity_counts_a_cnn_and_keeps_mode():
    model = create_model("regnety_1.6gf").train()
    c = complexity(model, 224, 3)
    assert model.training
    # pycls' RegNetY-1.6GF: 1.6 GF, 11.2 M params, 8.0 M acts
    assert c["flops"] == pytest.approx(1.61e9, rel=0.02)
    assert c["params"] == pytest.approx(11.2e6, rel=0.01)
    assert c["acts"] == pytest.approx(8.0e6, rel=0.02)


def test_complexity_of_a_conv_by_hand():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True), nn.Flatten(), nn.Linear(8 * 16, 5))
    c = complexity(conv, 8, 3)
    assert c["flops"] == 8 * 4 * 4 * (27 + 1) + 5 * (128 + 1)  # a flop per output for each bias
    assert c["acts"] == 8 * 16 + 5
    assert c["params"] == 8 * 27 + 8 + 128 * 5 + 5


def test_complexity_stem_matches_paper_table3():
    # Table 3, 4GF: patchify stem 58 M flops / 0.3 M params; conv stem 435 M flops / 1.0 M params
    for preset, mflops, mparams in (("vit_p_4gf", 58, 0.3), ("vit_c_4gf", 435, 1.0)):
        stem = create_model(preset).stem
        c = complexity(stem, 224, 3)
        assert c["flops"] / 1e6 == pytest.approx(mflops, rel=0.02)
        assert c["params"] / 1e6 == pytest.approx(mparams, abs=0.05)


# The presets at the paper's stem geometry on small images (16 tokens): flops, params and acts as the
# README's table states them; ViT_C's flops within 1% of ViT_P's.
P16_PRESETS = [
    ("vit_p_fmnist_p16_tiny", 3973898, 227018, 52884),
    ("vit_c_fmnist_p16_tiny", 3993738, 197506, 57874),
    ("vit_p_fmnist_p16", 20664330, 1194378, 147238),
    ("vit_c_fmnist_p16", 20757770, 1097229, 155298),
    ("vit_p_cifar_p16_tiny", 4498186, 259786, 52884),
    ("vit_c_cifar_p16_tiny", 4486538, 209325, 59986),
    ("vit_p_cifar_p16", 21712906, 1259914, 147238),
    ("vit_c_cifar_p16", 21506826, 1110298, 157218),
    ("vit_p_fmnist_p8_tiny", 3777290, 214730, 52884),
    ("vit_c_fmnist_p8_tiny", 3744394, 199659, 50130),
]


@pytest.mark.parametrize("name, flops, params, acts", P16_PRESETS, ids=[p[0] for p in P16_PRESETS])
def test_small_image_presets_at_the_papers_geometry(name, flops, params, acts):
    p = get_preset(name)
    model = create_model(name)
    assert complexity(model, p["img_size"], p["in_chans"]) == {"flops": flops, "params": params, "acts": acts}
    assert (p["img_size"] // p["patch_size"]) ** 2 == 16 and p["patch_size"] in (8, 16)
    x = torch.zeros(2, p["in_chans"], p["img_size"], p["img_size"])
    assert model(x).shape == (2, 10)
    if p["stem"] == "conv":  # one block fewer than ViT_P, flops within 1%
        twin = name.replace("vit_c_", "vit_p_")
        assert p["depth"] == get_preset(twin)["depth"] - 1
        assert 0.99 <= flops / {n: f for n, f, _, _ in P16_PRESETS}[twin] <= 1.01


def test_every_small_image_vit_c_is_flop_matched_to_its_vit_p_within_one_percent():
    """As the paper matches its models' flops: every ViT_C preset beyond Table 1 (whose widths are the
    paper's own, 0.97-1.02x) within 1% of its ViT_P, with one block fewer."""
    pairs = [n for n in preset_names("vit") if n.startswith("vit_c_") and not n.endswith("gf")]
    assert len(pairs) >= 9
    for name in pairs:
        twin = name.replace("vit_c_", "vit_p_")
        c, p = get_preset(name), get_preset(twin)
        fc = complexity(create_model(name), c["img_size"], c["in_chans"])["flops"]
        fp = complexity(create_model(twin), p["img_size"], p["in_chans"])["flops"]
        assert abs(fc / fp - 1) <= 0.01, (name, fc / fp)
        assert c["depth"] == p["depth"] - 1 and c["stem_channels"][-1] >= c["embed_dim"] // 2


def test_presets_are_models_in_timms_registry():
    import timm

    from analysis.models import timm_name

    assert set(timm.list_models("vit_c_*")) == {n for n in preset_names("vit") if n.startswith("vit_c_")}
    assert {timm_name(n) for n in PRESETS} <= set(timm.list_models())
    assert timm_name("regnety_1.6gf") == "regnety_1_6gf"  # timm reads what follows a '.' as a weight tag
    for name, cfg in (
        ("vit_c_fmnist_tiny", ((1, 28, 28), 10, (0.2860,))),
        ("vit_p_fmnist_p16_tiny", ((1, 64, 64), 10, (0.2860,))),
        ("vit_c_cifar", ((3, 32, 32), 10, (0.4914, 0.4822, 0.4465))),
        ("vit_p_1gf", ((3, 224, 224), 1000, (0.485, 0.456, 0.406))),
    ):
        got = timm.get_pretrained_cfg(name)
        assert (got.input_size, got.num_classes, got.mean) == cfg and not got.has_weights
    # timm.create_model and create_model build the same model, attributes and weights
    torch.manual_seed(0)
    ours = create_model("vit_c_fmnist_tiny", stem="cct", num_classes=7)
    torch.manual_seed(0)
    theirs = timm.create_model("vit_c_fmnist_tiny", stem="cct", num_classes=7)
    assert type(theirs) is type(ours) and theirs.settings == ours.settings and theirs.stem_name == "cct"
    for (k, a), (k2, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert theirs.pretrained_cfg["input_size"] == (1, 28, 28) and theirs.pretrained_cfg["num_classes"] == 7
    assert timm.data.resolve_model_data_config(theirs)["mean"] == (0.2860,)
    cnn = timm.create_model("resnet_fmnist")
    assert cnn.preset == "resnet_fmnist" and cnn.pretrained_cfg["input_size"] == (1, 28, 28)
    assert create_model("regnety_1.6gf").preset == "regnety_1.6gf"


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: __import__("timm").create_model("vit_c_fmnist_tiny", pretrained=True), ["no pretrained weights"]),
        (lambda: __import__("timm").create_model("vit_c_fmnist_tiny", drop_rate=0.1), ["drop_rate", "allowed: stem"]),
        (lambda: __import__("timm").create_model("vit_c_fmnist_tiny", stem="nope"), ["unknown stem 'nope'"]),
    ],
)
def test_timm_create_model_errors_are_one_line(call, words):
    with pytest.raises(ConfigError) as e:
        call()
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words)

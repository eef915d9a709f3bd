"""Reading any model (forward_intermediates), loading it from any source, and the representation
analyses of "Do Vision Transformers See Like CNNs?" on constructed cases with known answers."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from analysis.errors import ConfigError
from analysis.models import create_model
from analysis.plots.representations import (
    cka_pairs_figure,
    distance_vs_data_figure,
    linear_probe_figure,
    residual_figure,
)
from analysis.probes import (
    as_model,
    attention_distance,
    block_features,
    cka_between,
    cka_matrix,
    cka_pairs,
    distance_vs_data,
    first_layer_filters,
    linear_probes,
    local_heads,
    read_layers,
    residual_strength,
    ridge_probe,
    rollout_maps,
)


def images(n=8, seed=0, size=28, chans=1):
    return torch.randn(n, chans, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vits():
    torch.manual_seed(0)
    return {stem: create_model("vit_c_fmnist_tiny", stem=stem).eval() for stem in ("patchify", "conv", "cct")}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return create_model("resnet_fmnist").eval()


class MapView(nn.Module):
    """The same ViT read as a CNN: its stem and block outputs as NCHW maps of the patch tokens,
    through timm's own forward_intermediates (output_fmt NCHW)."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        return self.vit(x)

    def forward_intermediates(self, x, intermediates_only=True):
        stem = self.vit.patch_embed(x)
        b, _, c = stem.shape
        maps = self.vit.forward_intermediates(x, output_fmt="NCHW", intermediates_only=True)
        return [stem.transpose(1, 2).reshape(b, c, *self.vit.patch_embed.grid_size), *maps]


def hooked_features(model, x):
    """An independent reader: forward hooks on patch_embed and every block during model(x)."""
    out = {}
    mods = [("stem", model.patch_embed)] + [(f"block{i}", b) for i, b in enumerate(model.blocks)]
    handles = [
        m.register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o.reshape(len(o), -1)))
        for name, m in mods
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out


# --- one reader ------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", ["patchify", "conv", "cct"])
def test_reader_equals_hooks_on_the_suite_vits(vits, stem):
    model, x = vits[stem], images(4)
    ours, ref = block_features(model, x), hooked_features(model, x)
    assert list(ours) == list(ref) == ["stem", "block0", "block1", "block2", "block3"]
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=0, atol=0)
    layers = read_layers(model, x)
    prefix = 0 if stem == "cct" else 1
    assert [layer.num_prefix for layer in layers] == [0] + [prefix] * 4
    assert layers[1].value.shape == (4, 49 + prefix, 64)
    assert set(layers[1].pooled()) == ({"patch_mean"} if stem == "cct" else {"class_token", "patch_mean"})


def test_reader_on_cnns_and_models_without_it(resnet):
    layers = read_layers(resnet, images(3))
    assert [layer.name for layer in layers] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert [tuple(layer.value.shape[1:]) for layer in layers] == [
        (24, 28, 28),
        (24, 28, 28),
        (48, 14, 14),
        (96, 7, 7),
        (192, 4, 4),
    ]
    assert layers[0].pooled()["global_avg"].shape == (3, 24)
    with pytest.raises(ConfigError, match="Sequential has no forward_intermediates"):
        read_layers(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()), images(2))


def test_probes_refuse_attention_on_a_cnn_in_one_line(resnet):
    for probe in (
        lambda: attention_distance(resnet, [images(4)]),
        lambda: rollout_maps(resnet, images(2)),
        lambda: residual_strength(resnet, [images(4)]),
    ):
        with pytest.raises(ConfigError) as err:
            probe()
        assert "ResNet has no" in str(err.value) and "\n" not in str(err.value)
    assert first_layer_filters(resnet).shape == (24, 1, 3, 3)  # the CNN's first conv


# --- CKA across models --------------------------------------------------------------------------


def test_cka_of_a_model_with_itself_and_with_its_cnn_view(vits, resnet):
    vit, batches = vits["conv"], [images(8, 1), images(8, 2)]
    within = cka_matrix(vit, batches)
    np.testing.assert_allclose(np.diag(within), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.diag(cka_matrix(resnet, batches)), 1.0, atol=1e-9)
    # a ViT against a CNN wrapper of the same weights: the same features up to their order
    cross = cka_between(vit, MapView(vit), batches, prefix_tokens=False)
    assert list(cross.columns) == ["feature0", "feature1", "feature2", "feature3", "feature4"]
    np.testing.assert_allclose(np.diag(cross), 1.0, atol=1e-9)
    np.testing.assert_allclose(cross.to_numpy(), cka_matrix(vit, batches, prefix_tokens=False).to_numpy(), atol=1e-9)
    assert not np.allclose(within.to_numpy(), cka_matrix(vit, batches, prefix_tokens=False).to_numpy())


def test_cka_pairs_is_the_pairwise_cka_in_one_pass(vits, resnet):
    models = {"ViT_P": vits["patchify"], "ViT_C": vits["conv"], "ResNet": resnet}
    batches = [images(6, 3), images(6, 4)]
    pairs = cka_pairs(models, batches, pairs=[("ViT_P", "ResNet"), ("ViT_C", "ResNet"), ("ViT_P", "ViT_C")])
    assert list(pairs) == [("ViT_P", "ResNet"), ("ViT_C", "ResNet"), ("ViT_P", "ViT_C")]
    np.testing.assert_allclose(
        pairs[("ViT_C", "ResNet")].to_numpy(), cka_between(vits["conv"], resnet, batches).to_numpy(), atol=1e-10
    )
    assert pairs[("ViT_P", "ResNet")].shape == (5, 5)
    with pytest.raises(ConfigError, match="unknown model label in pairs 'nope'"):
        cka_pairs(models, batches, pairs=[("ViT_P", "nope")])
    fig = cka_pairs_figure(pairs)
    assert len(fig.data) == 3 and fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 1
    assert [a.text for a in fig.layout.annotations] == ["ViT_P vs ResNet", "ViT_C vs ResNet", "ViT_P vs ViT_C"]
    # two panels to a row and no fixed width: the figure fits a notebook (a third panel was cut off)
    assert fig.layout.width is None and fig.data[2].xaxis == "x3" and fig.layout.yaxis3.domain[1] < 0.5


# --- loading from any source ------------------------------------------------------------------


def test_timm_name_and_state_dict_file_give_the_same_features(tmp_path):
    torch.manual_seed(0)
    model = as_model("resnet18", num_classes=10, in_chans=1)
    assert type(model).__name__ == "ResNet" and not model.training
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"state_dict": model.state_dict(), "state_dict_ema": ema}, tmp_path / "timm.pth")
    x = images(4, size=32)
    want = block_features(model, x)
    for loaded in (
        as_model("resnet18", checkpoint_path=tmp_path / "plain.pt", num_classes=10, in_chans=1),
        as_model("resnet18", checkpoint_path=tmp_path / "timm.pth", num_classes=10, in_chans=1),
    ):
        got = block_features(loaded, x)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    shifted = as_model("resnet18", checkpoint_path=tmp_path / "timm.pth", ema=True, num_classes=10, in_chans=1)
    assert torch.equal(shifted.conv1.weight, model.conv1.weight + 1.0)


def test_as_model_says_what_is_wrong_in_one_line(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pt")
    cases = [
        (lambda: as_model("no_such_model"), "not a run folder, a suite preset"),
        (lambda: as_model(tmp_path / "w.pt"), "name its architecture"),
        (lambda: as_model("resnet18", checkpoint_path=tmp_path / "w.pt"), "does not hold weights for resnet18"),
        (lambda: as_model("resnet18", checkpoint_path=tmp_path / "missing.pt"), "is not a file"),
        (lambda: as_model("vit_p_fmnist_tiny", pretrained=True), "no pretrained weights"),
        (lambda: as_model("resnet18", initial=True), "initial=True needs a run folder"),
        (lambda: as_model(3), "got int"),
    ]
    for call, words in cases:
        with pytest.raises(ConfigError) as err:
            call()
        assert words in str(err.value) and "\n" not in str(err.value)


# --- layerwise linear probes ------------------------------------------------------------------


def test_ridge_probe_finds_the_label_when_features_hold_it_and_chance_on_noise():
    g = torch.Generator().manual_seed(0)
    y, yt = torch.randint(0, 10, (600,), generator=g), torch.randint(0, 10, (3000,), generator=g)
    centres = torch.randn(10, 32, generator=g) * 3
    x, xt = centres[y] + torch.randn(600, 32, generator=g), centres[yt] + torch.randn(3000, 32, generator=g)
    acc, train_acc = ridge_probe(x, y, xt, yt)
    assert acc > 0.97 and train_acc > 0.97
    noise_acc, _ = ridge_probe(torch.randn(600, 32, generator=g), y, torch.randn(3000, 32, generator=g), yt)
    assert abs(noise_acc - 0.1) < 0.03
    # d > n takes the dual form; it must predict as the primal solution computed here does
    few, yf = (centres[y[:20]] + torch.randn(20, 32, generator=g)).double(), y[:20]
    acc_dual, _ = ridge_probe(few, yf, xt, yt, ridge=0.1, num_classes=10)
    mean, std = few.mean(dim=0), few.std(dim=0)
    xs, xts = (few - mean) / std, (xt.double() - mean) / std
    onehot = torch.nn.functional.one_hot(yf, 10).double()
    w = torch.linalg.solve(xs.T @ xs + 0.1 * 20 * torch.eye(32, dtype=torch.float64), xs.T @ (onehot - onehot.mean(0)))
    assert acc_dual == pytest.approx(float(((xts @ w + onehot.mean(0)).argmax(1) == yt).double().mean()))
    with pytest.raises(ConfigError, match="ridge must be > 0"):
        ridge_probe(x, y, xt, yt, ridge=0)


def test_linear_probes_on_a_model(vits):
    g = torch.Generator().manual_seed(1)
    templates = torch.randn(10, 1, 28, 28, generator=g)

    def batches(n, informative, seed):
        gen = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 10, (n,), generator=gen)
        x = torch.randn(n, 1, 28, 28, generator=gen) * 0.3 + (templates[y] if informative else 0)
        return [(x[i : i + 100], y[i : i + 100]) for i in range(0, n, 100)]

    model = vits["patchify"]
    good = linear_probes(model, batches(400, True, 2), batches(400, True, 3))
    assert set(good["pool"]) == {"class_token", "patch_mean"}
    assert len(good) == 1 + 2 * 4 and list(good["depth"].unique()) == [0, 1, 2, 3, 4]
    assert good["accuracy"].max() > 0.9
    noise = linear_probes(model, batches(400, False, 4), batches(400, False, 5))
    assert (noise["accuracy"] < noise["chance"] + 0.1).all()
    with pytest.raises(ConfigError, match="labelled batches"):
        linear_probes(model, [images(4)], [images(4)])
    fig = linear_probe_figure({"ViT_P": good, "noise": noise})
    assert len(fig.data) == 4 and fig.layout.shapes  # two pools per model, a chance line


# --- residual-stream strength -----------------------------------------------------------------


def test_residual_ratio_matches_a_hand_computation_and_flags_a_zeroed_branch():
    torch.manual_seed(0)
    model = create_model("vit_p_fmnist_tiny").eval()
    x = images(4)
    frame = residual_strength(model, [x[:2], x[2:]])
    assert len(frame) == 5 * 2 * 2 and not frame["zero_branch"].any()
    with torch.no_grad():
        stream = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        blk = model.blocks[0]
        branch = blk.ls1(blk.attn(blk.norm1(stream)))
    for tokens, sl in (("class", slice(0, 1)), ("patch", slice(1, None))):
        want = (stream[:, sl].norm(dim=-1).mean() / branch[:, sl].norm(dim=-1).mean()).item()
        got = frame.query("block == 0 and branch == 'attn' and tokens == @tokens")["ratio"].item()
        assert got == pytest.approx(want, rel=1e-5)
    with torch.no_grad():  # zero block 1's attention output: its branch adds nothing
        model.blocks[1].attn.proj.weight.zero_()
        model.blocks[1].attn.proj.bias.zero_()
    zeroed = residual_strength(model, [x])
    hit = zeroed[(zeroed["block"] == 1) & (zeroed["branch"] == "attn")]
    assert hit["zero_branch"].all() and np.isinf(hit["ratio"]).all()
    assert not zeroed.drop(hit.index)["zero_branch"].any()
    fig = residual_figure({"ViT_P": zeroed})
    assert any(t.marker.symbol == "triangle-up" for t in fig.data)


def test_residual_strength_without_class_token(vits):
    frame = residual_strength(vits["cct"], [images(4)])
    assert set(frame["tokens"]) == {"patch"} and len(frame) == 4 * 2


# --- attention distance against training-set size ---------------------------------------------


def test_distance_vs_data_averages_runs_and_counts_local_heads(vits):
    runs = pd.DataFrame(
        {
            "model": ["ViT_C", "ViT_C", "ViT_C", "CCT"],
            "cfg.data.train_per_class": [60, 60, None, 60],
            "source": [vits["conv"], vits["conv"], vits["patchify"], vits["cct"]],
        }
    )
    frame = distance_vs_data(runs, [images(4)])
    assert set(frame.columns) == {"model", "train_per_class", "layer", "head", "distance_px", "stride_px", "runs"}
    assert len(frame) == 3 * 4 * 2
    one = frame[(frame["model"] == "ViT_C") & (frame["train_per_class"] == 60)]
    assert (one["runs"] == 2).all()
    np.testing.assert_allclose(one["distance_px"], attention_distance(vits["conv"], [images(4)])["distance_px"])
    assert frame["train_per_class"].isna().sum() == 8 and (frame["stride_px"] == 4).all()
    table = local_heads(frame, blocks=2, within_tokens=100)
    assert (table["local_frac"] == 1.0).all() and (table["heads"] == 4).all()
    assert (local_heads(frame, blocks=1, within_tokens=0)["local"] == 0).all()
    fig = distance_vs_data_figure(frame)
    assert [a.text for a in fig.layout.annotations] == ["ViT_C", "CCT"]
    assert {t.name for t in fig.data if t.showlegend} == {"60 per class", "all images"}
    assert fig.layout.yaxis.range[0] == 0 and fig.layout.yaxis.range[1] > frame["distance_px"].max()
    banded = distance_vs_data_figure(frame, uniform_px={"ViT_C": 10.0})  # the uniform-attention band, one panel
    assert [(s.y0, s.y1) for s in banded.layout.shapes] == [(9.5, 10.5)]
    assert any(a.text.startswith("uniform attention 10.0 px") for a in banded.layout.annotations)
    with pytest.raises(ConfigError, match="needs rows with model"):
        distance_vs_data(runs.drop(columns="source"), [images(4)])
    assert math.isfinite(frame["distance_px"].sum())


def test_the_data_size_spec_and_equal_steps_train_every_size_as_long():
    from pathlib import Path

    from analysis.runs import equal_steps
    from analysis.sweeps import Spec

    runs = Spec.from_yaml(Path(__file__).resolve().parents[1] / "jobs" / "fmnist_data_size.yaml").runs()
    assert {(r["cfg"].model.preset, r["cfg"].data.train_per_class) for r in runs} == {
        (p, n) for p in ("vit_p_fmnist", "vit_c_fmnist") for n in (60, 600, None)
    }
    for r in runs:  # Fashion-MNIST: 6000 training images per class, 10 classes
        cfg = r["cfg"]
        per_epoch = (cfg.data.train_per_class or 6000) * 10 // cfg.train.batch_size
        assert per_epoch * cfg.train.epochs == 6000 and per_epoch * cfg.optim.warmup_epochs == 600
    assert equal_steps({"train.epochs": 5, "data.train_per_class": 2000}, 200) == {
        "train.epochs": 50,
        "data.train_per_class": 200,
        "optim.warmup_epochs": 10.0,
    }
    with pytest.raises(ConfigError, match="needs data.train_per_class"):
        equal_steps({"train.epochs": 5}, 200)


def test_explorers_take_models_and_names_as_well_as_run_folders(vits, resnet):
    from analysis.widgets import AttentionExplorer, FilterExplorer

    ex = AttentionExplorer({"ViT_C": vits["conv"], "CCT": vits["cct"]}, images=images(2))
    assert list(ex.models) == ["ViT_C", "CCT"] and ex.class_names[0] == "class 0"
    assert ex.maps("CCT", "rollout").shape == (2, 28, 28)
    with pytest.raises(ConfigError, match="ResNet: ResNet has no attention"):
        AttentionExplorer({"ResNet": resnet}, images=images(2))
    with pytest.raises(ConfigError, match="pass images="):
        AttentionExplorer({"ViT_C": vits["conv"]})
    filters = FilterExplorer({"ResNet": resnet, "preset": "vit_c_fmnist_tiny"})
    assert filters.filters("preset", "trained").shape == (48, 1, 3, 3)
    with pytest.raises(ConfigError, match="initial=True needs a run folder"):
        filters.filters("ResNet", "initial")

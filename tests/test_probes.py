"""Probes on tiny ViTs and on hand-built attention / features with known answers."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from analysis.errors import ConfigError
from analysis.probes import (
    MinibatchCKA,
    attention_distance,
    block_features,
    capture_attention,
    cka_between,
    cka_matrix,
    class_token_attention,
    explicit_attention,
    filter_pca,
    first_layer_filters,
    gradient_rollout,
    integrated_gradients,
    linear_cka,
    mean_attention_distance,
    occlusion,
    position_similarity,
    record_attention,
    rollout_maps,
    rollout_matrix,
    smoothgrad,
    stem_gradcam,
    token_layout,
    uniform_distance,
)


class TinyConvStem(nn.Module):
    """A two-layer conv stem with the suite's stem contract (stride, grid_size, first_conv, kind)."""

    def __init__(self, img_size=32, patch_size=4, in_chans=3, embed_dim=32, **kwargs):
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.first_conv = nn.Conv2d(in_chans, 8, 3, stride=2, padding=1, bias=False)
        self.body = nn.Sequential(
            self.first_conv,
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, embed_dim, 1),
        )
        self.kind, self.stride = "conv", 4
        self.patch_size = (4, 4)
        self.img_size = img_size
        self.grid_size = (img_size[0] // 4, img_size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x):
        return self.body(x).flatten(2).transpose(1, 2)


def tiny_vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)
    args.update(kw)
    model = VisionTransformer(**args).eval()
    with torch.no_grad():  # timm starts the head at zero for some inits; make logits informative
        nn.init.normal_(model.head.weight, std=0.5)
    return model


@pytest.fixture(scope="module")
def vit_cls():
    return tiny_vit()


@pytest.fixture(scope="module")
def vit_pool():
    return tiny_vit(class_token=False, global_pool="avg")


@pytest.fixture(scope="module")
def vit_conv():
    """RGB, conv stem, non-square 6 x 8 grid."""
    return tiny_vit(img_size=(24, 32), in_chans=3, embed_layer=TinyConvStem)


def gray(n=4):
    torch.manual_seed(1)
    return torch.randn(n, 1, 28, 28)


def rgb(n=3):
    torch.manual_seed(2)
    return torch.randn(n, 3, 24, 32)


# --- layout and the fused-attention switch ---------------------------------------------------


def test_layout_from_plain_patch_embed_and_suite_stem(vit_cls, vit_pool, vit_conv):
    a, b, c = token_layout(vit_cls), token_layout(vit_pool), token_layout(vit_conv)
    assert (a.grid_size, a.stride, a.num_prefix_tokens, a.kind) == ((7, 7), 4, 1, "patchify")
    assert a.first_conv is vit_cls.patch_embed.proj
    assert b.num_prefix_tokens == 0
    assert (c.grid_size, c.stride, c.kind) == ((6, 8), 4, "conv")
    assert c.first_conv is vit_conv.patch_embed.first_conv


def test_explicit_attention_restores_flags_also_after_error(vit_cls):
    attns = [b.attn for b in vit_cls.blocks]
    attns[0].fused_attn, attns[1].fused_attn = True, False
    with explicit_attention(vit_cls):
        assert [a.fused_attn for a in attns] == [False, False]
    assert [a.fused_attn for a in attns] == [True, False]
    with pytest.raises(RuntimeError):
        with explicit_attention(vit_cls):
            raise RuntimeError("boom")
    assert [a.fused_attn for a in attns] == [True, False]
    with pytest.raises(RuntimeError):
        with record_attention(vit_cls):
            raise RuntimeError("boom")
    assert [a.fused_attn for a in attns] == [True, False]
    assert all(not a.attn_drop._forward_hooks for a in attns)


@pytest.mark.parametrize("name", ["vit_cls", "vit_pool", "vit_conv"])
def test_captured_attention_gives_fused_logits(name, request):
    model = request.getfixturevalue(name)
    images = rgb() if name == "vit_conv" else gray()
    for blk in model.blocks:
        blk.attn.fused_attn = True
    with torch.no_grad():
        fused = model(images)
    logits, attns = capture_attention(model, images)
    torch.testing.assert_close(logits, fused, atol=1e-5, rtol=1e-5)
    layout = token_layout(model)
    n = layout.num_patches + layout.num_prefix_tokens
    assert len(attns) == len(model.blocks)
    for a in attns:
        assert a.shape == (len(images), 2, n, n)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    assert all(blk.attn.fused_attn for blk in model.blocks)


def test_probes_leave_training_mode_alone(vit_cls):
    vit_cls.train()
    try:
        capture_attention(vit_cls, gray(2))
        assert vit_cls.training and vit_cls.blocks[0].training
    finally:
        vit_cls.eval()


# --- class-token maps and rollout --------------------------------------------------------------


def test_class_token_maps_shapes_and_values(vit_cls, vit_pool, vit_conv):
    x = gray(3)
    maps = class_token_attention(vit_cls, x)
    assert maps.shape == (3, 2, 2, 28, 28)
    grid = class_token_attention(vit_cls, x, upsample=False)
    _, attns = capture_attention(vit_cls, x)
    torch.testing.assert_close(grid[:, 1], attns[1][:, :, 0, 1:].reshape(3, 2, 7, 7))
    # no class token: mean over query tokens
    grid = class_token_attention(vit_pool, x, upsample=False)
    _, attns = capture_attention(vit_pool, x)
    torch.testing.assert_close(grid[:, 0], attns[0].mean(dim=-2).reshape(3, 2, 7, 7))
    # non-square grid, RGB
    assert class_token_attention(vit_conv, rgb(2), upsample=False).shape == (2, 2, 2, 6, 8)
    assert class_token_attention(vit_conv, rgb(2)).shape == (2, 2, 2, 24, 32)


def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    for fusion in ("mean", "max", "min"):
        roll = rollout_matrix([eye, eye, eye], head_fusion=fusion, discard_ratio=0.5)
        torch.testing.assert_close(roll, torch.eye(5).expand(2, 5, 5))


def test_rollout_matches_hand_computation():
    torch.manual_seed(0)
    a1 = torch.rand(1, 2, 4, 4).softmax(-1)
    a2 = torch.rand(1, 2, 4, 4).softmax(-1)
    step = lambda a: (a.mean(1) + torch.eye(4)) / 2  # rows of a.mean(1) sum to 1
    torch.testing.assert_close(rollout_matrix([a1, a2]), step(a2) @ step(a1))
    # uniform attention in every layer keeps rows stochastic and the rollout is symmetric in tokens
    uni = torch.full((1, 1, 4, 4), 0.25)
    roll = rollout_matrix([uni] * 4)
    torch.testing.assert_close(roll.sum(-1), torch.ones(1, 4))
    assert torch.allclose(roll[0].diagonal(), roll[0, 0, 0].expand(4))
    with pytest.raises(ConfigError, match="head_fusion"):
        rollout_matrix([uni], head_fusion="median")
    with pytest.raises(ConfigError, match="discard_ratio"):
        rollout_matrix([uni], discard_ratio=1.0)


def test_rollout_and_gradient_rollout_maps(vit_cls, vit_pool, vit_conv):
    x = gray(3)
    for model in (vit_cls, vit_pool):
        maps = rollout_maps(model, x, head_fusion="max", discard_ratio=0.2)
        assert maps.shape == (3, 28, 28) and (maps >= 0).all()
        g = gradient_rollout(model, x)
        assert g.shape == (3, 28, 28) and (g >= 0).all()
    grid = rollout_maps(vit_cls, x, upsample=False)
    assert grid.shape == (3, 7, 7) and (grid.sum(dim=(1, 2)) < 1).all()  # the class token keeps a share
    g0, g1 = gradient_rollout(vit_cls, x, target=0), gradient_rollout(vit_cls, x, target=torch.tensor([1, 1, 1]))
    assert not torch.allclose(g0, g1)
    assert gradient_rollout(vit_conv, rgb(2), upsample=False).shape == (2, 6, 8)


# --- mean attention distance ------------------------------------------------------------------


def test_attention_distance_on_hand_built_attention():
    eye = torch.eye(4).expand(2, 3, 4, 4)
    assert np.allclose(mean_attention_distance([eye], (2, 2), stride=16, num_prefix_tokens=0), 0.0)
    uniform = torch.full((2, 3, 4, 4), 0.25)
    expected = 16 * (0 + 1 + 1 + math.sqrt(2)) / 4
    assert np.allclose(mean_attention_distance([uniform, eye], (2, 2), 16, 0), [[expected] * 3, [0.0] * 3])
    # a class token in front: dropped as query and key, the rest renormalised
    with_cls = torch.full((1, 1, 5, 5), 0.2)
    assert np.allclose(mean_attention_distance([with_cls], (2, 2), 16, 1), expected)
    assert np.allclose(mean_attention_distance([with_cls], (2, 2), 16, 1, renormalize=False), expected * 0.8)
    # each token looks at its right neighbour on a 1 x 3 grid (last one at itself)
    shift = torch.tensor([[0, 1, 0], [0, 0, 1], [0, 0, 1.0]]).expand(1, 1, 3, 3)
    assert np.allclose(mean_attention_distance([shift], (1, 3), 8, 0), 8 * 2 / 3)


def test_uniform_distance_is_what_even_attention_measures(vit_cls):
    layout = token_layout(vit_cls)
    n = layout.grid_size[0] * layout.grid_size[1] + layout.num_prefix_tokens
    even = torch.full((1, 1, n, n), 1.0 / n)
    measured = mean_attention_distance([even], layout.grid_size, layout.stride, layout.num_prefix_tokens)
    assert uniform_distance(vit_cls) == pytest.approx(float(measured[0, 0]))
    assert uniform_distance(vit_cls) == pytest.approx(14.4379, abs=1e-3)  # 7 x 7 tokens, 4 px apart


def test_attention_distance_frame(vit_cls, vit_conv):
    x = gray(5)
    df = attention_distance(vit_cls, [(x[:3], None), (x[3:], None)], max_images=4)
    assert list(df.columns) == ["layer", "head", "distance_px"] and len(df) == 2 * 2
    assert df["distance_px"].between(0, 28 * math.sqrt(2)).all()
    first = attention_distance(vit_cls, [x[:4]])
    pd.testing.assert_frame_equal(df, first)  # max_images=4 took exactly the first four images
    assert len(attention_distance(vit_conv, [rgb(2)])) == 4


# --- CKA --------------------------------------------------------------------------------------


def hsic1_reference(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased HSIC_1 written out term by term from Song et al. / Nguyen et al."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (
        np.trace(k @ l) + one @ k @ one * (one @ l @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ k @ l @ one
    ) / (n * (n - 3))


def cka_reference(x: np.ndarray, y: np.ndarray) -> float:
    k, l = x @ x.T, y @ y.T
    return hsic1_reference(k, l) / math.sqrt(hsic1_reference(k, k) * hsic1_reference(l, l))


def features(n=64, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(d, 6, generator=g, dtype=torch.float64)) + 0.3 * torch.randn(
        n, 6, generator=g, dtype=torch.float64
    )
    return x, y


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_identity_and_invariances(unbiased):
    x, y = features()
    assert linear_cka(x, x, unbiased) == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    base = linear_cka(x, y, unbiased)
    assert 0.05 < base < 0.99
    assert linear_cka(x @ q, y, unbiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * x, 0.2 * y, unbiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, torch.randn(64, 10, dtype=torch.float64), unbiased) < base


def test_minibatch_cka_equals_full_batch_unbiased_for_one_batch():
    x, y = features()
    acc = MinibatchCKA()
    acc.update([x, y, x.reshape(64, 2, 5)])
    cka = acc.result()
    assert cka[0, 1] == pytest.approx(cka_reference(x.numpy(), y.numpy()), abs=1e-12)
    assert cka[0, 1] == pytest.approx(linear_cka(x, y, unbiased=True), abs=1e-12)
    assert np.allclose(np.diag(cka), 1.0) and np.allclose(cka, cka.T)
    assert cka[0, 2] == pytest.approx(1.0)


def test_minibatch_cka_close_to_full_batch_for_large_n():
    x, y = features(n=2000, d=4, seed=3)
    acc = MinibatchCKA()
    for i in range(0, 2000, 200):
        acc.update([x[i : i + 200], y[i : i + 200]])
    acc.update([x[:3], y[:3]])  # too small for HSIC_1: skipped
    assert (acc.batches, acc.examples, acc.skipped) == (10, 2000, 1)
    mini = acc.result()[0, 1]
    assert mini == pytest.approx(linear_cka(x, y, unbiased=True), abs=0.01)
    assert mini == pytest.approx(linear_cka(x, y, unbiased=False), abs=0.02)


def test_minibatch_cka_rejects_nothing_usable():
    acc = MinibatchCKA()
    acc.update([torch.randn(3, 2)])
    with pytest.raises(ConfigError, match="at least 4"):
        acc.result()


def test_cka_on_models(vit_cls, vit_pool):
    batches = [gray(8), gray(8) * 0.5, gray(2)]
    within = cka_matrix(vit_cls, batches)
    assert list(within.index) == list(within.columns) == ["stem", "block0", "block1"]
    assert np.allclose(np.diag(within), 1.0) and np.allclose(within, within.T)
    same = cka_between(vit_cls, vit_cls, batches)
    np.testing.assert_allclose(same.to_numpy(), within.to_numpy(), atol=1e-10)
    other = cka_between(vit_cls, vit_pool, [(gray(8), torch.zeros(8))], max_images=6)
    assert other.shape == (3, 3) and np.isfinite(other.to_numpy()).all()
    feats = block_features(vit_cls, gray(2))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "stem": (2, 49 * 32),
        "block0": (2, 50 * 32),
        "block1": (2, 50 * 32),
    }


# --- filters and position embeddings ---------------------------------------------------------


def test_first_layer_filters(vit_cls, vit_conv):
    assert first_layer_filters(vit_cls).shape == (32, 1, 4, 4)
    assert first_layer_filters(vit_conv).shape == (8, 3, 3, 3)


@pytest.mark.parametrize("shape", [(32, 3, 4, 4), (32, 1, 4, 4), (8, 3, 3, 3)])
def test_filter_pca_reconstructs_the_weights(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    pca = filter_pca(w)
    m = min(shape[0], int(np.prod(shape[1:])))
    assert pca.components.shape == (m, *shape[1:])
    assert pca.explained_variance_ratio.sum() == pytest.approx(1.0)
    assert np.all(np.diff(pca.explained_variance_ratio) <= 1e-12)
    np.testing.assert_allclose(pca.reconstruct(), w.double().numpy(), atol=1e-10)
    assert np.abs(pca.reconstruct(1) - w.numpy()).max() > 1e-3
    flat = pca.components.reshape(m, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(m), atol=1e-10)
    assert pca.top(3).shape == (3, *shape[1:])


def test_filter_pca_of_a_model(vit_conv):
    pca = filter_pca(vit_conv)
    np.testing.assert_allclose(pca.reconstruct(), first_layer_filters(vit_conv), atol=1e-10)


@pytest.mark.parametrize(
    "kw,prefix",
    [({}, 1), ({"class_token": False, "global_pool": "avg"}, 0), ({"reg_tokens": 2}, 3), ({"no_embed_class": True}, 1)],
)
def test_position_similarity_drops_prefix_tokens(kw, prefix):
    model = tiny_vit(**kw)
    assert model.num_prefix_tokens == prefix
    sim = position_similarity(model)
    assert sim.shape == (7, 7, 7, 7)
    flat = sim.reshape(49, 49)
    np.testing.assert_allclose(np.diag(flat), 1.0)
    np.testing.assert_allclose(flat, flat.T, atol=1e-12)
    pos = model.pos_embed.detach()[0, -49:].double()
    expected = torch.nn.functional.cosine_similarity(pos[10], pos[33], dim=0)
    assert sim[1, 3, 4, 5] == pytest.approx(float(expected))


def test_position_similarity_non_square(vit_conv):
    assert position_similarity(vit_conv).shape == (6, 8, 6, 8)


def test_position_similarity_without_embedding():
    with pytest.raises(ConfigError, match="position embedding"):
        position_similarity(tiny_vit(pos_embed="none"))


# --- captum attributions ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit_cls", "vit_pool", "vit_conv"])
def test_attributions_have_image_shape(name, request):
    model = request.getfixturevalue(name)
    x = rgb(2) if name == "vit_conv" else gray(2)
    shape = (2, *x.shape[-2:])
    assert integrated_gradients(model, x, steps=8, internal_batch_size=8).shape == shape
    assert smoothgrad(model, x, samples=3).shape == shape
    assert smoothgrad(model, x, base="ig", samples=2, steps=4, internal_batch_size=8).shape == shape
    assert stem_gradcam(model, x).shape == shape
    occ = occlusion(model, x)
    assert occ.shape == shape
    # one value per token-sized window
    assert torch.allclose(occ[:, :4, :4], occ[:, :1, :1].expand(2, 4, 4))


def test_integrated_gradients_completeness(vit_cls):
    x = gray(2)
    ig = integrated_gradients(vit_cls, x, target=3, steps=64, internal_batch_size=64)
    with torch.no_grad():
        gap = vit_cls(x)[:, 3] - vit_cls(torch.zeros_like(x))[:, 3]
    torch.testing.assert_close(ig.sum(dim=(1, 2)), gap, atol=2e-2 * gap.abs().max().item() + 1e-3, rtol=0)


def test_smoothgrad_rejects_unknown_base(vit_cls):
    with pytest.raises(ConfigError, match="smoothgrad base"):
        smoothgrad(vit_cls, gray(1), base="gradcam")


def test_suite_models_if_present():
    """The suite's own ViTs (patchify, conv and CCT stems) through the main probes."""
    models = pytest.importorskip("analysis.models")
    names = [n for n in models.preset_names("vit") if n.startswith("vit_c_fmnist")]
    if not names:
        pytest.skip("no Fashion-MNIST ViT preset")
    for stem in ("patchify", "conv", "cct"):
        model = models.create_model(sorted(names)[-1], stem=stem).eval()
        layout = token_layout(model)
        assert layout.num_prefix_tokens == (0 if stem == "cct" else 1)
        x = torch.randn(2, model.in_chans, *model.patch_embed.img_size)
        with torch.no_grad():
            fused = model(x)
        logits, attns = capture_attention(model, x)
        torch.testing.assert_close(logits, fused, atol=1e-4, rtol=1e-4)
        assert attns[0].shape[-1] == layout.num_patches + layout.num_prefix_tokens
        assert rollout_maps(model, x).shape == (2, *x.shape[-2:])
        assert stem_gradcam(model, x).shape == (2, *x.shape[-2:])

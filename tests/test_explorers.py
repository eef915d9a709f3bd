"""The attention and filter explorers on real trained tiny runs: each control changes the figure's data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.errors import ConfigError
from analysis.plots.maps import tile_image
from analysis.probes import first_layer_filters, gradient_rollout, rollout_maps
from analysis.runs import load_model
from analysis.widgets import AttentionExplorer, FilterExplorer, run_labels
from tests.test_notebooks import notebook_root, tiny_runs  # noqa: F401 (a fixture, shared with the notebooks)

WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def runs(notebook_root):  # noqa: F811
    return tiny_runs(notebook_root)


@pytest.fixture(scope="module")
def attention(runs):
    return AttentionExplorer(list(runs.values()), n=3)


def z(trace) -> np.ndarray:
    return np.asarray(trace.z, dtype=float)


def test_runs_are_labelled_by_model(runs):
    assert list(run_labels(list(runs.values()))) == ["ViT_P-fmnist_tiny", "ViT_C-fmnist_tiny"]
    assert list(run_labels({"a": runs["vit_p_fmnist_tiny"]})) == ["a"]
    with pytest.raises(ConfigError, match="no runs given"):
        run_labels([])


def test_attention_layer_head_and_method_change_the_maps(attention, runs):
    ex = attention
    assert list(ex.models) == ["ViT_P-fmnist_tiny", "ViT_C-fmnist_tiny"]
    assert len(ex.fig.data) == 5  # the image, then image + map per model
    assert WIDGET in ex._repr_mimebundle_()
    ex.controls["method"].value = "attention"
    ex.controls["layer"].value = ex.controls["layer"].max
    ex.controls["head"].value = 0
    last = z(ex.fig.data[2]).copy()
    # ViT_P has 5 blocks, ViT_C 4: the slider's last block is ViT_C's last as well
    assert ex.fig.layout.annotations[2].text.endswith("<br>block 3, head 0")
    ex.controls["layer"].value = 0
    first = z(ex.fig.data[2])
    assert not np.allclose(first, last)
    expected = ex.maps("ViT_P-fmnist_tiny", "attention")[ex.controls["image"].value, 0, 0].numpy()
    np.testing.assert_allclose(first, expected, rtol=1e-6)
    ex.controls["head"].value = 1
    assert not np.allclose(z(ex.fig.data[2]), first)
    assert ex.fig.layout.annotations[1].text == "ViT_P-fmnist_tiny<br>block 0, head 1"


def test_attention_rollouts_match_the_probes(attention, runs):
    ex = attention
    ex.controls["image"].value = 1
    ex.controls["method"].value = "rollout"
    assert ex.controls["layer"].disabled and ex.controls["head"].disabled
    model = load_model(runs["vit_c_fmnist_tiny"], fused_attn=False)
    np.testing.assert_allclose(z(ex.fig.data[4]), rollout_maps(model, ex.images)[1].numpy(), rtol=1e-5, atol=1e-7)
    rollout = z(ex.fig.data[4]).copy()
    ex.controls["method"].value = "gradient rollout"
    np.testing.assert_allclose(z(ex.fig.data[4]), gradient_rollout(model, ex.images)[1].numpy(), rtol=1e-4, atol=1e-6)
    assert not np.allclose(z(ex.fig.data[4]), rollout)
    assert "predicts" in ex.status.value


def test_attention_image_picker_changes_the_image(attention):
    ex = attention
    ex.controls["image"].value = 0
    image0 = z(ex.fig.data[0]).copy()
    ex.controls["image"].value = 2
    assert not np.allclose(z(ex.fig.data[0]), image0)
    np.testing.assert_allclose(z(ex.fig.data[0]), z(ex.fig.data[1]))  # the overlay's image is the same


def test_attention_takes_given_images(runs):
    images = torch.randn(2, 1, 28, 28)
    ex = AttentionExplorer({"P": runs["vit_p_fmnist_tiny"]}, images=images)
    assert [label for label, _ in ex.controls["image"].options] == ["image 0", "image 1"]
    with pytest.raises(ConfigError, match="images must be"):
        AttentionExplorer({"P": runs["vit_p_fmnist_tiny"]}, images=torch.zeros(28, 28))


def test_filter_explorer_switches_model_weights_and_view(runs):
    ex = FilterExplorer(list(runs.values()))
    ex.controls["count"].value = 64
    trained = z(ex.fig.data[0]).copy()
    assert "64 of 64 filters" in ex.fig.layout.title.text
    label = "ViT_P-fmnist_tiny"
    np.testing.assert_allclose(trained, tile_image(ex.filters(label, "trained")).mean(-1))
    ex.controls["checkpoint"].value = "initial"
    initial = ex.filters(label, "initial")
    assert not np.array_equal(initial, ex.filters(label, "trained"))  # one short epoch moved them a little
    np.testing.assert_allclose(z(ex.fig.data[0]), tile_image(initial).mean(-1))
    assert "initial" in ex.fig.layout.title.text
    ex.controls["view"].value = "principal components"
    assert "16 principal components" in ex.fig.layout.title.text  # a 1 x 4 x 4 filter has 16 components
    curve = np.asarray(ex.variance_fig.data[0].y)
    assert len(curve) == 16 and curve[-1] == pytest.approx(1.0)
    ex.controls["model"].value = "ViT_C-fmnist_tiny"
    assert "9 principal components" in ex.fig.layout.title.text  # 3 x 3 conv filters
    assert len(ex.variance_fig.data[0].y) == 9
    w = first_layer_filters(load_model(runs["vit_c_fmnist_tiny"], initial=True))
    np.testing.assert_array_equal(ex.filters("ViT_C-fmnist_tiny", "initial"), w)
    with pytest.raises(ConfigError, match="checkpoint"):
        ex.filters("ViT_C-fmnist_tiny", "best")

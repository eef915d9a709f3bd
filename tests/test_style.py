"""The figures' shared look: one colour per stem in every figure, readable axes, titles that fit,
and figure data a FigureWidget can send (strict JSON, no NaN)."""

import json

import numpy as np
import pytest
import torch

from analysis.plots import curves_figure, edf_figure, sensitivity_figure
from analysis.plots.maps import attribution_figure, distance_figure, position_similarity_figure, tiles_figure
from analysis.names import model_name, preset_size, stem_of_label
from analysis.plots.style import STEM_COLORS, color_map, head_stems, integer_ticks, log_ticks, wrap_title
from tests.fixtures_sweep import sweep, sweep_frame  # noqa: F401  (pytest fixtures)


def test_names_of_models_and_sizes():
    assert (
        model_name("vit_c_4gf", "conv") == "ViT_C-4GF"
        and model_name("vit_p_fmnist_tiny", "conv_ln") == "conv_ln-fmnist_tiny"
    )
    assert model_name("resnet_fmnist", None) == "resnet_fmnist" and preset_size("vit_p_1.6gf") == "1.6GF"


def test_labels_without_a_frame_name_their_stem():
    assert stem_of_label("ViT_P-fmnist_tiny") == "patchify" and stem_of_label("ViT_C-4GF") == "conv"
    assert stem_of_label("0003-vit_p_fmnist_tiny-sgd") == "patchify" and stem_of_label("vit_c_1gf") == "conv"
    assert stem_of_label("conv_ln-fmnist") == "conv_ln" and stem_of_label("resnet_fmnist") == "cnn"
    assert stem_of_label("ViT_P-fmnist_tiny grad rollout") == "patchify" and stem_of_label("adamw") is None
    colors = color_map(["ViT_C-1GF", "ViT_P-1GF", "ViT_C-4GF", "other"])
    assert colors["ViT_P-1GF"] == STEM_COLORS["patchify"] and colors["ViT_C-1GF"] == STEM_COLORS["conv"]
    assert colors["ViT_C-4GF"] not in (colors["ViT_C-1GF"], colors["ViT_P-1GF"])  # a shade of ViT_C's
    assert colors["other"] not in STEM_COLORS.values()


def test_colours_follow_the_stem_column_not_the_label(sweep):  # noqa: F811
    # a model named like neither stem still takes its stem's colour from the frame's stem column
    frame = sweep.assign(model=sweep["model"].map({"ViT_C-fmnist": "alpha", "ViT_P-fmnist": "beta"}))
    assert head_stems(frame, ["model", "optimizer"]) == {"alpha": "conv", "beta": "patchify"}
    colors = color_map(["alpha", "beta"], head_stems(frame, "model"))
    assert colors == {"alpha": STEM_COLORS["conv"], "beta": STEM_COLORS["patchify"]}
    edf = edf_figure(frame)
    assert {t.line.color for t in edf.data if t.meta["kind"] == "edf" and t.meta["group"].startswith("beta")} == {
        STEM_COLORS["patchify"]
    }
    mixed = frame.assign(stem=[("conv", "patchify")[i % 2] for i in range(len(frame))])
    assert head_stems(mixed, "model") == {}  # a group of two stems has no stem colour


def test_one_colour_per_stem_in_curves_edfs_and_distances(sweep):  # noqa: F811
    rows = sweep.groupby("model").head(1)  # one ViT_C and one ViT_P run, coloured by their stem column
    curves = curves_figure(rows, labels=list(rows["model"]))
    edf = edf_figure(sweep)
    distance = distance_figure({name: _distances() for name in ("ViT_C-fmnist", "ViT_P-fmnist")})
    for stem, name in (("patchify", "ViT_P-fmnist"), ("conv", "ViT_C-fmnist")):
        colour = STEM_COLORS[stem]
        assert {t.line.color for t in curves.data if t.name == name} == {colour}
        assert {t.line.color for t in edf.data if t.meta["kind"] == "edf" and t.meta["group"].startswith(name)} == {
            colour
        }
        assert [t.marker.color for t in distance.data if t.name == name] == [colour]


def _distances():
    import pandas as pd

    return pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "distance_px": [3.0, 5.0, 6.0, 9.0]})


def test_epochs_tick_on_whole_numbers(sweep):  # noqa: F811
    assert integer_ticks(5)["dtick"] == 1 and integer_ticks(40)["dtick"] == 5 and integer_ticks(400)["dtick"] == 50
    fig = curves_figure(sweep.head(2))
    axis = fig.layout[f"xaxis{len(fig.layout.annotations) or 3}"]
    assert axis.dtick == 2 and axis.tickmode == "linear"  # 20 epochs: 0, 2, 4, ...


def test_log_ticks_are_few_full_numbers():
    narrow = log_ticks(1.8e-3, 2.7e-3)["ticktext"]
    assert narrow == ["0.0015", "0.002", "0.003"]  # no bare "2" without its decade
    assert log_ticks(2.5e-4, 8e-3)["ticktext"] == ["2e-4", "5e-4", "0.001", "0.002", "0.005", "0.01"]
    assert len(log_ticks(1e-6, 100)["tickvals"]) <= 6


def test_sensitivity_axes_are_named_in_the_subplot_titles(sweep):  # noqa: F811
    fig = sensitivity_figure(sweep)
    assert all(a.text.endswith("lr (x), wd (y)") for a in fig.layout.annotations)
    axes = [fig.layout[k] for k in fig.layout if k.startswith(("xaxis", "yaxis"))]
    assert all(a.title.text is None for a in axes)  # nothing to run into the row below
    assert all(a.tickvals and len(a.tickvals) <= 6 for a in axes)
    rows = 2
    assert (fig.layout.height - 150) / rows >= 300  # panels of about 300 px, not 200


def test_titles_wrap_to_their_panel():
    assert wrap_title("ViT_P-fmnist_tiny grad rollout", 150) == "ViT_P-fmnist_tiny<br>grad rollout"
    assert wrap_title("image", 100) == "image"
    maps = {f"ViT_{s}-fmnist_tiny {m}": torch.rand(3, 8, 8) for s in "PC" for m in ("rollout", "grad rollout")}
    fig = attribution_figure(torch.rand(3, 1, 8, 8), maps, max_images=3, signed=False)
    titles = [a.text for a in fig.layout.annotations]
    assert len(titles) == 5  # column titles over the first row only
    assert all(max(len(line) for line in t.split("<br>")) <= 940 / 5 / (0.6 * 14) for t in titles)


def test_tile_and_similarity_figures_are_strict_json():
    tiles = tiles_figure(np.random.default_rng(0).normal(size=(10, 1, 4, 4)))
    similarity = position_similarity_figure(np.random.default_rng(0).uniform(-1, 1, size=(3, 3, 3, 3)))
    for fig in (tiles, similarity):
        json.dumps(fig.to_plotly_json(), allow_nan=False, default=lambda o: o.tolist())
        assert None in fig.data[0].z[-1] or any(None in row for row in fig.data[0].z)  # gaps between tiles
    assert 28 * 3 + 80 <= tiles.layout.height <= 64 * 3 + 80  # rows of 28-64 px tiles


@pytest.mark.parametrize("n", [1, 48])
def test_tile_grids_are_not_tiny(n):
    fig = tiles_figure(np.random.default_rng(0).normal(size=(n, 3, 3, 3)))
    rows = -(-n // (int(np.ceil(np.sqrt(n)))))
    assert fig.layout.height >= 28 * rows + 80

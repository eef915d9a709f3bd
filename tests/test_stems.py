"""Users' own stems: the registry, the import-path form, the stem contract, and a stem from a test
module trained by a real local sweep whose jobs import it from the launch's code snapshot, then
read by the probes and the report (with a CNN baseline in the same sweep)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from analysis import rundir
from analysis.config import RunConfig
from analysis.errors import ConfigError
from analysis.models import STEMS, CCTStem, ConvStem, PatchifyStem, complexity, create_model, register_stem, stem_names
from analysis.models.registry import lookup_stem, portable_stem, stem_layer
from analysis.sweeps import Spec, Sweep
from tests import user_stems

PATH = "tests.user_stems:two_conv"


def test_registry_keeps_the_suite_stems_and_adds_users():
    assert STEMS == ("patchify", "conv", "patchify_bn", "conv_ln", "cct")
    assert stem_names()[:5] == list(STEMS) and {"two_conv", "pooled_two_conv"} <= set(stem_names())
    by_name, by_path = create_model("vit_c_fmnist_tiny", stem="two_conv"), create_model("vit_c_fmnist_tiny", stem=PATH)
    for model in (by_name, by_path):
        assert isinstance(model.patch_embed, user_stems.TwoConvStem) and model.cls_token is not None
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert by_path.stem_name == PATH
    pooled = create_model("vit_c_fmnist_tiny", stem="tests.user_stems:pooled_two_conv")
    assert pooled.cls_token is None and pooled.seq_pool is not None  # the registered seq_pool travels with the path
    with pytest.raises(ConfigError, match="one of the suite's stems"):
        register_stem("conv")(user_stems.two_conv)


BUILTIN = {
    "patchify": (PatchifyStem, {}),
    "conv": (ConvStem, {}),
    "patchify_bn": (PatchifyStem, {"bn": True}),
    "conv_ln": (ConvStem, {"norm": "ln"}),
    "cct": (CCTStem, {}),
}


@pytest.mark.parametrize("name", STEMS)
def test_every_suite_stem_round_trips_through_the_registry(name):
    assert set(BUILTIN) == set(STEMS)
    cls, defaults = BUILTIN[name]
    entry = lookup_stem(name)
    assert entry.build is cls and entry.defaults == defaults and entry.builtin
    assert entry.seq_pool == (name == "cct")
    portable_stem(name)  # a suite stem is registered in every process that imports analysis
    args = dict(img_size=32, patch_size=4, in_chans=3, embed_dim=64)
    layout = dict(channels=[48, 96], strides=[2, 2])
    via_registry = stem_layer(entry, **layout)(**args)
    assert type(via_registry) is cls and via_registry.kind == name
    assert entry.stride(4, layout["strides"]) == via_registry.stride == 4
    # the class built directly with the registered arguments: the same modules, the same weights
    torch.manual_seed(0)
    direct = cls(**args, **({} if cls is PatchifyStem else layout), **defaults)
    direct.init_weights()
    torch.manual_seed(0)
    again = stem_layer(entry, **layout)(**args)
    again.init_weights()
    assert str(direct) == str(again)
    for (k, a), (k2, b) in zip(direct.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    # and the model of that stem is the one the registry names, by name and by import path
    model = create_model("vit_c_cifar_tiny", stem=name)
    by_path = create_model("vit_c_cifar_tiny", stem=f"analysis.models.stems:{cls.__name__}")
    assert type(model.stem) is type(by_path.stem) is cls
    assert model.stem.kind == name and (by_path.stem.kind == name) == (not defaults)


def test_a_users_class_registered_under_two_names_with_bound_arguments():
    register_stem("two_conv_narrow", width=8)(user_stems.TwoConvStem)
    register_stem("two_conv_wide", width=32)(user_stems.TwoConvStem)
    narrow = create_model("vit_c_fmnist_tiny", stem="two_conv_narrow")
    wide = create_model("vit_c_fmnist_tiny", stem="two_conv_wide")
    assert narrow.stem.first_conv.out_channels == 8 and wide.stem.first_conv.out_channels == 32
    with pytest.raises(ConfigError, match="one of the suite's stems"):
        register_stem("conv_ln", norm="bn")(ConvStem)


def test_complexity_counts_a_users_stem():
    ours = create_model("vit_c_fmnist_tiny", stem="two_conv")
    patchify = create_model("vit_c_fmnist_tiny", stem="patchify")
    # 1 -> 16 channels, 3x3 at 14x14; 16 -> 64, 3x3 at 7x7; one flop per output element of each bias (pycls)
    stem_flops = 14 * 14 * 16 * 9 + 14 * 14 * 16 + 7 * 7 * 64 * 16 * 9 + 7 * 7 * 64
    assert complexity(ours.patch_embed, 28, 1)["flops"] == stem_flops
    body = complexity(patchify, 28, 1)["flops"] - complexity(patchify.patch_embed, 28, 1)["flops"]
    assert complexity(ours, 28, 1)["flops"] == body + stem_flops


@pytest.mark.parametrize(
    "stem, words",
    [
        ("nope", "unknown stem 'nope'; allowed: patchify, conv"),
        ("no_such_package.stems:x", "no module named 'no_such_package'"),
        ("tests.user_stems:missing", "module tests.user_stems has no 'missing'"),
        ("tests.user_stems:NOT_CALLABLE", "is a int, not a function or class"),
        ("tests/user_stems.py:two_conv", "must look like mypackage.stems:my_stem"),
        ("tests.user_stems:no_grid", "lacks grid_size, num_patches, kind"),
        ("tests.user_stems:stride_eight", "has stride 8, the preset's patch_size is 4"),
    ],
)
def test_bad_stems_are_one_line(stem, words):
    with pytest.raises(ConfigError) as err:
        create_model("vit_c_fmnist_tiny", stem=stem)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_configs_and_specs_check_stems_before_anything_runs():
    assert RunConfig().replace({"model.stem": PATH}).model.stem == PATH  # the form is enough for a config
    with pytest.raises(ConfigError, match="unknown stem 'nope'"):
        RunConfig().replace({"model.stem": "nope"})
    base = {"train": {"epochs": 1}}
    assert Spec.from_dict({"base": base, "grid": {"stem": ["conv", PATH]}}).runs()
    with pytest.raises(ConfigError, match="no module named 'no_such_package'"):
        Spec.from_dict({"base": base, "grid": {"stem": ["no_such_package.stems:x"]}})
    with pytest.raises(ConfigError, match="registered in this process only.*tests.user_stems:two_conv"):
        Spec.from_dict({"base": base, "grid": {"stem": ["two_conv"]}})


SPEC = {
    "name": "own_stem",
    "base": {
        "data": {"train_per_class": 20, "test_per_class": 10},
        "train": {"epochs": 1, "batch_size": 50, "precision": "fp32", "progress": "lines", "threads": 1},
        "optim": {"ref_batch": 50, "lr": 1e-3},
    },
    "grid": {
        "model": [
            {"model.preset": "vit_c_fmnist_tiny", "model.stem": PATH},
            {"model.preset": "vit_p_fmnist_tiny"},
            {"model.preset": "resnet_fmnist", "optim.name": "sgd", "optim.lr": 0.1},
        ]
    },
    "launch": {"cluster": "local", "parallel": 1, "timeout_min": 20},
}


@pytest.fixture(scope="module")
def own_stem_sweep(tmp_path_factory):
    """The sweep, launched from a folder where the repository's `tests` package cannot be imported:
    its jobs find the stem only in the launch's code snapshot."""
    return launch_elsewhere(SPEC, tmp_path_factory)


def launch_elsewhere(spec: dict, tmp_path_factory) -> Sweep:
    """Launch and wait from an empty folder, without PYTHONPATH: jobs see no copy of `tests` but the snapshot's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("elsewhere"))
        mp.delenv("PYTHONPATH", raising=False)
        sweep = Sweep.from_dict(spec, root=tmp_path_factory.mktemp("sweeps"))
        sweep.launch(wait=True, timeout=900)
    return sweep


@pytest.mark.slow
def test_a_users_stem_trains_in_a_local_sweep_from_the_code_snapshot(own_stem_sweep):
    sweep = own_stem_sweep
    frame = sweep.collect()
    assert list(frame["status"]) == ["completed"] * 3, frame[["run", "status", "reason"]]
    snapshot = sweep.dir / sweep.launches[0]["code"]
    assert (snapshot / "analysis" / "__init__.py").is_file() and (snapshot / "tests" / "user_stems.py").is_file()
    assert not (snapshot / "tests" / "__pycache__").exists()
    ours = frame[frame["stem"] == PATH].iloc[0]
    model = create_model("vit_c_fmnist_tiny", stem=PATH)
    assert ours["flops"] == complexity(model, 28, 1)["flops"]  # counted by the engine with the user's stem


@pytest.mark.slow
@pytest.mark.slurm
def test_a_users_stem_trains_on_slurm_from_the_code_snapshot(slurm_cluster, tmp_path_factory):
    spec = {
        **SPEC,
        "name": "own_stem_slurm",
        "grid": {"model": SPEC["grid"]["model"][:1]},
        "launch": {"cluster": "slurm", "partition": slurm_cluster.partition, "cpus_per_task": 1, "timeout_min": 10},
    }
    sweep = launch_elsewhere(spec, tmp_path_factory)
    assert sweep.launches[0]["cluster"] == "slurm"
    assert list(sweep.collect()["status"]) == ["completed"]


@pytest.mark.slow
def test_probes_read_the_runs_of_the_sweep(own_stem_sweep, tmp_path):
    from analysis.probes import (
        as_model,
        attention_distance,
        block_features,
        cka_between,
        first_layer_filters,
        linear_probes,
        residual_strength,
        rollout_maps,
        stem_gradcam,
    )
    from analysis.runs import load_config, sample_images

    runs = {
        row["cfg.model.preset"] + ("_own" if row["stem"] == PATH else ""): row["run_dir"]
        for _, row in own_stem_sweep.collect().iterrows()
    }
    vit_dir, resnet_run = runs["vit_c_fmnist_tiny_own"], runs["resnet_fmnist"]
    vit_run = as_model(vit_dir, trust_code=True)  # the run names a stem import path: imported when trusted
    x, y, _ = sample_images(load_config(vit_dir), n=40, one_per_class=False)
    cka = cka_between(vit_run, resnet_run, [(x[:20], y[:20]), (x[20:], y[20:])])
    assert list(cka.index) == ["stem", "block0", "block1", "block2", "block3"]
    assert list(cka.columns) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert np.isfinite(cka.to_numpy()).all() and (cka.to_numpy() <= 1 + 1e-9).all()
    # the user's stem under every probe
    assert attention_distance(vit_run, [x]).shape == (4 * 2, 3)
    assert rollout_maps(vit_run, x[:2]).shape == (2, 28, 28)
    assert first_layer_filters(vit_run).shape == (16, 1, 3, 3)
    assert stem_gradcam(vit_run, x[:2]).shape == (2, 28, 28)
    assert len(residual_strength(vit_run, [x])) == 4 * 2 * 2
    tx, ty, _ = sample_images(load_config(vit_dir), n=30, one_per_class=False, train=True)
    assert set(linear_probes(vit_run, [(tx, ty)], [(x, y)])["pool"]) == {"class_token", "patch_mean"}
    # a run folder, its checkpoint file and the preset name with that checkpoint: the same features
    ckpt = Path(vit_dir) / rundir.CHECKPOINT
    want = block_features(vit_run, x[:4])
    for source in (as_model(ckpt, trust_code=True), as_model("vit_c_fmnist_tiny", checkpoint_path=ckpt, stem=PATH)):
        got = block_features(source, x[:4])
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


@pytest.mark.slow
def test_report_compares_the_vits_with_the_cnn_baseline(own_stem_sweep, tmp_path):
    from analysis.report import write_report

    page = write_report(own_stem_sweep.dir, tmp_path / "report.html", trust_code=True).read_text()
    assert "against the CNN baseline" in page and "resnet_fmnist" in page

"""Trained runs come back from their run directories alone."""

import pytest
import torch

from analysis import rundir
from analysis.errors import ConfigError
from analysis.runs import load_config, load_model, sample_images
from analysis.engine.evaluate import evaluate
from analysis.engine.train import train
from tests.test_train import tiny_cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "vit_c"
    train(tiny_cfg(**{"train.epochs": 1}), out)
    return out


def test_loaded_model_reproduces_the_recorded_error(run):
    cfg = load_config(run)
    model = load_model(run)
    from analysis.engine.data import build_data

    data = build_data(cfg, torch.device("cpu"), model.img_size)
    err = evaluate(model, data.test_batches(), torch.device("cpu"))["top1_err"]
    assert err == pytest.approx(rundir.read_result(run)["top1_err"], abs=1e-6)


def test_initial_weights_differ_and_explicit_attention_matches(run):
    x, y, raw = sample_images(load_config(run), n=10)
    assert y.tolist() == list(range(10)) and raw.dtype == torch.uint8
    trained, initial = load_model(run), load_model(run, initial=True)
    assert not torch.equal(trained.patch_embed.first_conv.weight, initial.patch_embed.first_conv.weight)
    explicit = load_model(run, fused_attn=False)
    torch.testing.assert_close(explicit(x), trained(x), rtol=1e-4, atol=1e-5)


def test_bad_run_dirs_are_one_line(run, tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        load_model(tmp_path)
    with pytest.raises(ConfigError, match="without EMA"):
        load_model(run, ema=True)


def test_ensure_trained_progress_bars_and_reuse(tmp_path, capsys):
    from analysis.runs import ensure_trained

    overrides = {
        "data.train_per_class": 20,
        "data.test_per_class": 10,
        "train.batch_size": 50,
        "train.epochs": 1,
        "train.precision": "fp32",
        "train.progress": "none",
    }
    runs = ensure_trained(("vit_p_fmnist_tiny",), root=tmp_path, overrides=overrides, progress=True)
    out, err = capsys.readouterr()
    assert "epoch 1/1 loss" in out and "runs" in err  # engine lines on stdout, the runs bar on stderr
    assert load_config(runs["vit_p_fmnist_tiny"]).train.progress == "bar"
    again = ensure_trained(("vit_p_fmnist_tiny",), root=tmp_path, overrides=overrides)  # progress is display only
    assert again == runs and rundir.is_complete(runs["vit_p_fmnist_tiny"])
    with pytest.raises(ConfigError, match="another config"):
        ensure_trained(("vit_p_fmnist_tiny",), root=tmp_path, overrides={**overrides, "train.epochs": 2})

"""The training engine on real Fashion-MNIST: run directory, resume, divergence, bad input."""

import json
import subprocess
import sys

import pytest
import torch

from analysis import config, rundir
from analysis.errors import ConfigError
from analysis.engine.train import Stopped, Trainer, train


def tiny_cfg(**overrides) -> config.RunConfig:
    base = {
        "model.preset": "vit_c_fmnist_tiny",
        "data.train_per_class": 40,
        "data.test_per_class": 20,
        "train.batch_size": 50,
        "train.epochs": 2,
        "train.precision": "fp32",
        "train.progress": "none",
        "train.checkpoint_minutes": 0,
        "optim.ref_batch": 50,
        "optim.lr": 1e-3,
    }
    base.update(overrides)
    return config.RunConfig().replace(base)


def test_run_directory_contract(tmp_path):
    cfg = tiny_cfg(**{"train.ema_decay": 0.9})
    result = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert result["status"] == "completed"
    assert config.load(run / "config.yaml") == cfg
    rows = rundir.read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    keys = {
        "epoch",
        "step",
        "train_loss",
        "test_top1_err",
        "test_top5_err",
        "ema_top1_err",
        "ema_top5_err",
        "lr",
        "seconds",
        "images_per_s",
        "elapsed",
    }
    assert keys <= set(rows[0])
    assert rows[-1]["step"] == 2 * (400 // 50)
    assert 0 <= rows[-1]["test_top1_err"] <= 100 and rows[-1]["ema_top1_err"] is not None
    saved = json.loads((run / "result.json").read_text())
    assert saved["top1_err"] == rows[-1]["test_top1_err"] and saved["params"] > 0 and saved["flops"] > 0
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and "model" in ckpt and "optimizer" in ckpt
    # A finished run is not trained again.
    assert train(cfg, run) == saved


@pytest.mark.parametrize("stop_at", [8, 11])  # an epoch boundary, and mid-epoch
def test_resume_matches_uninterrupted(tmp_path, stop_at):
    cfg = tiny_cfg(**{"data.augment": "crop_flip", "train.epochs": 3})
    full = train(cfg, tmp_path / "full")
    with pytest.raises(Stopped):
        Trainer(cfg, tmp_path / "cut", stop_at_step=stop_at).run()
    assert not (tmp_path / "cut" / "result.json").exists()
    resumed = train(cfg, tmp_path / "cut")
    a, b = rundir.read_metrics(tmp_path / "full"), rundir.read_metrics(tmp_path / "cut")
    assert [r["epoch"] for r in b] == [1, 2, 3]
    timing = {"seconds", "images_per_s", "elapsed"}
    for ra, rb in zip(a, b):  # every field of every row (the lr of a row resumed at its epoch's end too)
        assert set(ra) == set(rb)
        for k in set(ra) - timing:
            assert rb[k] == (ra[k] if ra[k] is None else pytest.approx(ra[k], rel=1e-5)), k
        assert rb["test_top1_err"] == ra["test_top1_err"]
    assert resumed["top1_err"] == full["top1_err"]


def test_eval_every_tests_each_period_and_the_last_epoch(tmp_path):
    """train.eval_every: 2 over 3 epochs writes rows at epochs 2 and 3 whose test errors equal those of
    testing every epoch (a test pass changes nothing in training) and whose train loss averages the
    period's epochs; a run stopped inside a period resumes to the same rows."""
    every = tiny_cfg(**{"data.augment": "crop_flip", "train.epochs": 3})
    period = tiny_cfg(**{"data.augment": "crop_flip", "train.epochs": 3, "train.eval_every": 2})
    train(every, tmp_path / "every")
    result = train(period, tmp_path / "period")
    a, b = rundir.read_metrics(tmp_path / "every"), rundir.read_metrics(tmp_path / "period")
    assert [r["epoch"] for r in b] == [2, 3] and [r["step"] for r in b] == [16, 24]
    assert [r["test_top1_err"] for r in b] == [a[1]["test_top1_err"], a[2]["test_top1_err"]]
    assert b[0]["train_loss"] == pytest.approx((a[0]["train_loss"] + a[1]["train_loss"]) / 2, rel=1e-5)
    assert result["top1_err"] == a[2]["test_top1_err"]
    with pytest.raises(Stopped):
        Trainer(period, tmp_path / "cut", stop_at_step=12).run()  # inside epoch 2, after an untested epoch 1
    assert rundir.read_metrics(tmp_path / "cut") == []
    train(period, tmp_path / "cut")
    c = rundir.read_metrics(tmp_path / "cut")
    assert [(r["epoch"], r["test_top1_err"]) for r in c] == [(r["epoch"], r["test_top1_err"]) for r in b]
    assert c[0]["train_loss"] == pytest.approx(b[0]["train_loss"], rel=1e-5)
    with pytest.raises(ConfigError, match="train.eval_every must be > 0"):
        tiny_cfg(**{"train.eval_every": 0})


def test_divergence_is_recorded_not_raised(tmp_path):
    cfg = tiny_cfg(**{"optim.name": "sgd", "optim.lr": 1e6, "optim.warmup_epochs": 0})
    result = train(cfg, tmp_path / "run")
    assert result["status"] == "diverged"
    assert result["top1_err"] == 100.0
    assert result["epoch"] == 1 and result["step"] >= 0
    assert "non-finite loss" in result["reason"]
    assert rundir.read_result(tmp_path / "run")["status"] == "diverged"


def test_weight_decay_skips_norms_biases_and_embeddings():
    from analysis.engine.model import build_model
    from analysis.engine.optim import make_optimizer

    cfg = tiny_cfg()
    model = build_model(cfg)
    opt = make_optimizer(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            n = names[id(p)]
            if p.ndim <= 1 or n in ("pos_embed", "cls_token"):
                assert g["weight_decay"] == 0, n
            else:
                assert g["weight_decay"] == cfg.optim.weight_decay, n


def test_config_yaml_round_trip(tmp_path):
    cfg = tiny_cfg(**{"optim.clip_grad": 1.0, "train.ema_decay": 0.99})
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert config.load(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optim.nme": "sgd"}, "unknown key in section 'optim' 'nme'; allowed: name, lr"),
        ({"optim.name": "lamb"}, "unknown optim.name 'lamb'; allowed: adamw, sgd"),
        ({"train.epochs": 0}, "train.epochs must be > 0"),
        ({"train.epochs": "many"}, "train.epochs must be int"),
        ({"data.name": "mnist"}, "allowed: fashion_mnist, cifar10, cifar100, imagefolder"),
        ({"bogus.key": 1}, "unknown config key 'bogus.key'"),
    ],
)
def test_bad_config_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        config.RunConfig().replace(overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_data_names_path(tmp_path):
    cfg = tiny_cfg(**{"data.root": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError) as e:
        train(cfg, tmp_path / "run")
    assert str(tmp_path / "nowhere") in str(e.value) and "dataset-fashion-mnist" in str(e.value)
    assert not (tmp_path / "run").exists()  # caught before the run folder is made


def test_cli_train_and_bad_input(tmp_path):
    out = tmp_path / "cli"
    args = [
        sys.executable,
        "-m",
        "analysis",
        "train",
        "--preset",
        "vit_p_fmnist_tiny",
        "--out",
        str(out),
        "train.epochs=1",
        "data.train_per_class=20",
        "data.test_per_class=10",
        "train.batch_size=50",
        "train.precision=fp32",
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout and rundir.read_result(out)["status"] == "completed"
    bad = subprocess.run(args[:5] + ["vit_q", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "vit_q" in bad.stderr and "vit_c_fmnist" in bad.stderr


def image_folder(root, readable=()):
    """A tiny ImageFolder tree: two classes of four 32 px images in train/ and val/; in a split not in
    `readable` every image is a text file named .png."""
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                path = root / split / c / f"{i}.png"
                if split in readable:
                    Image.new("RGB", (32, 32), (60 * i, 100, 200 if c == "a" else 0)).save(path)
                else:
                    path.write_text("not an image")
    return root


IMAGEFOLDER = ["model.preset=vit_c_cifar_tiny", "data.name=imagefolder", "train.batch_size=4", "train.epochs=1"]


def test_unreadable_images_fail_the_run_with_one_line(tmp_path):
    """An ImageFolder of files named .png that are not images: the run ends "failed" with a one-line
    reason in result.json, and the command line says so in one line (no loader traceback)."""
    root, out = image_folder(tmp_path / "data"), tmp_path / "run"
    args = [sys.executable, "-m", "analysis", "train", "--out", str(out), f"data.root={root}", "data.workers=2"]
    done = subprocess.run(args + IMAGEFOLDER, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [done.stderr.splitlines()[-1]]
    assert f"cannot read the images in {root / 'train'}" in errors[0]
    result = rundir.read_result(out)
    assert result["status"] == "failed" and result["reason"].startswith("UnreadableImages: cannot read the images")
    assert "\n" not in result["reason"]


def test_unreadable_test_images_fail_the_run_at_its_test(tmp_path):
    root = image_folder(tmp_path / "data", readable=("train",))
    overrides = dict(o.split("=") for o in IMAGEFOLDER)
    cfg = tiny_cfg(**{**overrides, "data.root": str(root), "data.workers": 0})
    with pytest.raises(ConfigError, match=f"cannot read the images in {root / 'val'}"):
        train(cfg, tmp_path / "run")
    assert rundir.read_result(tmp_path / "run")["reason"].startswith("UnreadableImages: cannot read the images")
    assert "start vit_c_cifar_tiny" in (tmp_path / "run" / "log.txt").read_text()  # it trained, then tested


def test_other_config_in_same_dir_is_refused(tmp_path):
    train(tiny_cfg(**{"train.epochs": 1}), tmp_path / "run")
    with pytest.raises(ConfigError, match="another config"):
        train(tiny_cfg(**{"train.epochs": 1, "optim.lr": 2e-3}), tmp_path / "run")


def test_tensorboard_event_files_mirror_the_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tiny_cfg(**{"train.tensorboard": True}), run)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = rundir.read_metrics(run)
    scalars = events.Scalars("test_top1_err")
    assert [(s.step, s.value) for s in scalars] == [(r["step"], pytest.approx(r["test_top1_err"])) for r in rows]
    assert {"train_loss", "lr", "images_per_s"} <= set(events.Tags()["scalars"])
    train(tiny_cfg(**{"train.epochs": 1}), tmp_path / "plain")
    assert not (tmp_path / "plain" / "tensorboard").exists()  # off by default


def test_mixup_loss_is_timms_soft_target_cross_entropy():
    """The engine's loss on mixup's soft targets is timm's SoftTargetCrossEntropy, which equals the
    mean over the batch of -sum(y * log_softmax(out)) (the formula the engine wrote by hand before)."""
    import torch.nn.functional as F
    from timm.data import Mixup

    from analysis.engine.member import _SOFT_TARGET_CE

    torch.manual_seed(0)
    out = torch.randn(8, 10)
    x, y = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)(
        torch.randn(8, 1, 28, 28), torch.arange(8)
    )
    assert y.shape == (8, 10)
    by_hand = torch.sum(-y * F.log_softmax(out, dim=-1), dim=-1).mean()
    assert torch.equal(_SOFT_TARGET_CE(out, y), by_hand)

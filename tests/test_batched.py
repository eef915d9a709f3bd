"""The stacked back-end: K runs trained at once equal the same K runs trained alone (per-step losses
to ~1e-7 relative, identical test errors), lr/wd act per run, runs may differ in optimizer, a
diverging run leaves the others, incompatible configs are refused in one line, and a stopped group
resumes to the uninterrupted result."""

import pytest
import torch

from analysis import config, rundir
from analysis.errors import ConfigError
from analysis.engine.model import build_model
from analysis.engine.train import Stopped, Trainer, train, train_group
from tests.test_train import tiny_cfg

# Why not bit-identical: in fp32 the stacked forward batches each matmul and conv over the K runs
# (a batched gemm, a grouped conv, the bias added apart from the product), which rounds differently
# from one run's kernels, and its attention takes the explicit softmax path where a solo run uses
# scaled_dot_product_attention. Measured: per-step losses differ by ~1e-7 relative over the first
# 16 steps; like any float difference in training it can grow with the step count and lr (at lr 3e-3
# on a 3-epoch schedule the second epoch's mean loss differed by 1.1e-4), while test errors stayed
# identical. The tests below use runs short enough to stay within LOSS_REL at every step.
LOSS_REL = 1e-5

VARIANTS = [
    {"optim.lr": 1e-3, "optim.weight_decay": 0.05, "train.seed": 0},
    {"optim.lr": 3e-3, "optim.weight_decay": 0.3, "train.seed": 1},
    {"optim.lr": 5e-4, "optim.weight_decay": 0.0, "train.seed": 2},
]
TIMING = {"seconds", "images_per_s", "elapsed"}


def assert_same_runs(solo_dirs, group_dirs, loss_rel=LOSS_REL):
    """Every metrics row equal: losses to loss_rel, test errors exactly, lr and steps exactly."""
    for a, b in zip(solo_dirs, group_dirs):
        ra, rb = rundir.read_metrics(a), rundir.read_metrics(b)
        assert [r["epoch"] for r in rb] == [r["epoch"] for r in ra] and ra
        for x, y in zip(ra, rb):
            assert y["train_loss"] == pytest.approx(x["train_loss"], rel=loss_rel)
            assert (y["test_top1_err"], y["test_top5_err"], y["ema_top1_err"]) == (
                x["test_top1_err"],
                x["test_top5_err"],
                x["ema_top1_err"],
            )
            assert (y["step"], y["lr"]) == (x["step"], pytest.approx(x["lr"], rel=1e-12))


def solo_and_group(tmp_path, cfgs):
    solo = [tmp_path / f"solo{i}" for i in range(len(cfgs))]
    group = [tmp_path / f"group{i}" for i in range(len(cfgs))]
    solo_results = [train(c, d) for c, d in zip(cfgs, solo)]
    return solo, group, solo_results, train_group(cfgs, group)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # AdamW, conv stem with BatchNorm (per-run statistics)
        pytest.param(
            {
                "model.preset": "vit_p_fmnist_tiny",
                "optim.name": "sgd",
                "optim.lr": 0.1,
                "optim.nesterov": True,
                "optim.clip_grad": 1.0,
                "train.ema_decay": 0.9,
                "train.label_smoothing": 0.1,
            },
            marks=pytest.mark.slow,
        ),
    ],
)
def test_group_matches_solo_runs(tmp_path, overrides):
    cfgs = [tiny_cfg(**{**overrides, **v}) for v in VARIANTS]
    solo, group, solo_results, results = solo_and_group(tmp_path, cfgs)
    assert [r["status"] for r in results] == ["completed"] * 3
    assert_same_runs(solo, group)
    for a, b in zip(solo_results, results):
        assert (b["top1_err"], b["params"], b["flops"]) == (a["top1_err"], a["params"], a["flops"])
    losses = [rundir.read_metrics(d)[-1]["train_loss"] for d in group]
    assert len({round(x, 4) for x in losses}) == 3  # per-run lr/wd really act
    for c, d in zip(cfgs, group):  # each folder is an ordinary run folder
        assert config.load(d / "config.yaml") == c
        ckpt = torch.load(d / "checkpoint.pt", weights_only=True)
        build_model(c).load_state_dict(ckpt["model"])
        solo_ckpt = torch.load(solo[group.index(d)] / "checkpoint.pt", weights_only=True)
        assert set(ckpt) == set(solo_ckpt) and set(ckpt["optimizer"]["state"]) == set(solo_ckpt["optimizer"]["state"])


def test_every_step_matches_and_optimizers_mix(tmp_path):
    """One step per epoch (a 50-image set, batch 50), so each metrics row is one step's loss; AdamW
    and SGD runs share the stack, each with its own torch optimizer."""
    base = {"data.train_per_class": 5, "train.epochs": 12, "optim.warmup_epochs": 2}
    cfgs = [
        tiny_cfg(**base, **VARIANTS[0]),
        tiny_cfg(**base, **{"optim.name": "sgd", "optim.lr": 0.05, "optim.nesterov": True, "train.seed": 3}),
        tiny_cfg(
            **base,
            **{
                "optim.name": "sgd",
                "optim.lr": 0.02,
                "optim.clip_grad": 0.5,
                "train.ema_decay": 0.8,
                "train.label_smoothing": 0.1,
                "train.seed": 4,
            },
        ),
    ]
    solo, group, _, results = solo_and_group(tmp_path, cfgs)
    assert [r["status"] for r in results] == ["completed"] * 3
    assert_same_runs(solo, group)


def test_weight_decay_alone_changes_a_run(tmp_path):
    cfgs = [tiny_cfg(**{"optim.weight_decay": wd, "train.epochs": 1}) for wd in (0.0, 10.0)]
    train_group(cfgs, [tmp_path / "a", tmp_path / "b"])
    wa = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    # Decay shrinks decayed matrices, and leaves undecayed tensors (norms, biases, pos-embed) close.
    assert wb["blocks.0.mlp.fc1.weight"].norm() < 0.99 * wa["blocks.0.mlp.fc1.weight"].norm()
    assert torch.allclose(wa["pos_embed"], wb["pos_embed"], atol=0.05)


def test_one_diverging_run_does_not_stop_the_others(tmp_path):
    cfgs = [tiny_cfg(**{"optim.name": "sgd", "optim.lr": lr, "optim.warmup_epochs": 0}) for lr in (0.05, 1e6, 0.1)]
    results = train_group(cfgs, [tmp_path / f"r{i}" for i in range(3)])
    assert [r["status"] for r in results] == ["completed", "diverged", "completed"]
    assert results[1]["top1_err"] == 100.0 and "non-finite loss" in results[1]["reason"]
    assert rundir.read_result(tmp_path / "r1")["status"] == "diverged"
    solo = train(cfgs[2], tmp_path / "solo2")  # the survivors are unaffected by the dropped run
    assert (
        rundir.read_metrics(tmp_path / "r2")[-1]["test_top1_err"]
        == rundir.read_metrics(tmp_path / "solo2")[-1]["test_top1_err"]
        and solo["status"] == "completed"
    )


@pytest.mark.parametrize(
    "key, value",
    [
        ("train.epochs", 3),
        ("model.preset", "vit_p_fmnist_tiny"),
        ("train.batch_size", 40),
        ("data.train_per_class", 30),
    ],
)
def test_incompatible_configs_one_line_error(tmp_path, key, value):
    cfgs = [tiny_cfg(), tiny_cfg(**{key: value})]
    with pytest.raises(ConfigError) as e:
        train_group(cfgs, [tmp_path / "a", tmp_path / "b"])
    assert key in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "a").exists()


def test_loader_data_path_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="in-memory"):
        train_group([tiny_cfg(**{"data.augment": "autoaugment"})] * 2, [tmp_path / "a", tmp_path / "b"])


@pytest.mark.slow
def test_resume_after_stop_and_from_solo_checkpoints(tmp_path):
    cfgs = [tiny_cfg(**{**v, "train.epochs": 3}) for v in VARIANTS[:2]]
    full = [tmp_path / "full0", tmp_path / "full1"]
    train_group(cfgs, full)
    # A group stopped mid-epoch resumes to the same runs as the uninterrupted group (same maths).
    cut = [tmp_path / "cut0", tmp_path / "cut1"]
    with pytest.raises(Stopped):
        train_group(cfgs, cut, stop_at_step=11)
    assert not (cut[0] / "result.json").exists()
    train_group(cfgs, cut)
    assert_same_runs(full, cut, loss_rel=1e-6)
    # Runs started alone and stopped at different points (one at an epoch's end) go on through
    # train_group, each from its own point, and end as if never stopped.
    mixed = [tmp_path / "one0", tmp_path / "one1"]
    for c, d, at in zip(cfgs, mixed, (8, 13)):
        with pytest.raises(Stopped):
            Trainer(c, d, stop_at_step=at).run()
    results = train_group(cfgs, mixed)
    assert [r["status"] for r in results] == ["completed"] * 2
    solo = [tmp_path / "solo0", tmp_path / "solo1"]
    for c, d in zip(cfgs, solo):
        train(c, d)
    assert_same_runs(solo, mixed, loss_rel=1e-6)

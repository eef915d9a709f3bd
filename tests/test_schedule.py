"""The lr schedule against the paper's code (pycls): linear warmup, then half-period cosine."""

import math

import pytest
import torch

from analysis import rundir
from analysis.engine.schedule import Schedule
from analysis.engine.train import train
from tests.test_train import tiny_cfg


def reference_lr(step: int, base: float, warmup: int, total: int) -> float:
    """The engine's schedule written out: base * 0.5 * (1 + cos(pi * t / T)), times (t + 1) / W while t < W."""
    cosine = 0.5 * (1.0 + math.cos(math.pi * step / total))
    ramp = (step + 1) / warmup if step < warmup else 1.0
    return base * cosine * ramp


def pycls_lr(epoch: float, base: float, warmup_epochs: float, max_epoch: int, warmup_factor: float) -> float:
    """pycls's get_epoch_lr with OPTIM.LR_POLICY "cos" and MIN_LR 0 (pycls/core/optimizer.py)."""
    lr = 0.5 * (1.0 + math.cos(math.pi * epoch / max_epoch)) * base
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        lr *= warmup_factor * (1.0 - alpha) + alpha
    return lr


def test_schedule_of_a_run_config():
    cfg = tiny_cfg(**{"optim.lr": 2e-3, "optim.ref_batch": 100, "optim.warmup_epochs": 1.5, "train.epochs": 3})
    s = Schedule.for_run(cfg, 8)
    assert s.base_lr == 2e-3 * 50 / 100 == cfg.effective_lr()
    assert (s.warmup, s.steps_per_epoch, s.total) == (12, 8, 24)
    assert s.position == (0, 0, 0) and not s.finished


@pytest.mark.parametrize("warmup", [0, 1, 10])
def test_lr_equals_the_reference_formula(warmup):
    s = Schedule(base_lr=0.3, warmup=warmup, steps_per_epoch=20, epochs=5)
    total = 100
    first, end_of_warmup, last = 0, max(warmup - 1, 0), total - 1
    for step in (first, end_of_warmup, warmup, 37, 50, last):
        assert s.lr(step) == pytest.approx(reference_lr(step, 0.3, warmup, total), rel=1e-15, abs=0), step
    assert s.lr(0) == 0.3 * (1 / warmup if warmup else 1.0)  # the first step: 1 / W of the peak
    if warmup:
        assert s.lr(warmup - 1) == pytest.approx(0.3 * 0.5 * (1 + math.cos(math.pi * (warmup - 1) / total)))
    assert s.lr(last) == pytest.approx(0.3 * 0.5 * (1 - math.cos(math.pi / total)))  # one step short of 0
    assert s.lr(total) == 0.0 == s.lr(total + 5)  # the cosine ends at 0 and stays there
    lrs = [s.lr(t) for t in range(total)]
    assert max(lrs) == lrs[max(warmup - 1, 0)]
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))


def test_lr_matches_pycls_at_fractional_epochs():
    """Stepped per iteration, the engine's lr at step t is pycls's lr at epoch t / steps_per_epoch: equal
    from the first step (pycls's WARMUP_FACTOR = 1 / warmup steps) and from the end of warmup on; inside
    the warmup the engine's ramp (t + 1) / W is above pycls's by t / W^2 < 1 / W of the base lr."""
    spe, epochs, warmup_epochs, base = 10, 6, 1.5, 0.8
    s = Schedule(base_lr=base, warmup=15, steps_per_epoch=spe, epochs=epochs)
    ours = [s.lr(t) for t in range(s.total)]
    theirs = [pycls_lr(t / spe, base, warmup_epochs, epochs, 1 / s.warmup) for t in range(s.total)]
    assert ours[0] == pytest.approx(theirs[0], rel=1e-12)
    assert ours[s.warmup :] == pytest.approx(theirs[s.warmup :], rel=1e-12)
    for t in range(s.warmup):
        cosine = 0.5 * (1 + math.cos(math.pi * t / s.total)) * base
        assert ours[t] - theirs[t] == pytest.approx(cosine * t / s.warmup**2, rel=1e-9, abs=1e-15)


def test_position_and_its_checkpoint_state():
    s = Schedule(base_lr=1.0, warmup=2, steps_per_epoch=3, epochs=2)
    for _ in range(3):
        s.advance()
    assert s.position == (0, 3, 3) and s.last_lr == s.lr(2)
    s.next_epoch()
    s.advance()
    assert s.state() == {"epoch": 1, "batch": 1, "step": 4} and not s.finished
    again = Schedule(base_lr=1.0, warmup=2, steps_per_epoch=3, epochs=2)
    again.load(s.state())
    assert again == s
    s.next_epoch()
    assert s.finished
    with pytest.raises(KeyError):
        again.load({"epoch": 1})


def test_training_follows_the_schedule(tmp_path):
    """The lr of each metrics row (the epoch's last step) and the optimizer's lr in the final checkpoint
    are the reference formula's, warmup included (1.5 epochs of 8 steps)."""
    cfg = tiny_cfg(**{"optim.warmup_epochs": 1.5, "optim.lr": 2e-3, "train.epochs": 3})
    train(cfg, tmp_path / "run")
    rows = rundir.read_metrics(tmp_path / "run")
    base, total = cfg.effective_lr(), 24
    assert [r["lr"] for r in rows] == [pytest.approx(reference_lr(r["step"] - 1, base, 12, total)) for r in rows]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (3, 0, 24)
    last = reference_lr(23, base, 12, total)
    assert all(g["lr"] == pytest.approx(last, rel=1e-12) for g in ckpt["optimizer"]["param_groups"])

"""DDP in the engine: two gloo processes on the CPU train the same run as one process would."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from analysis import rundir
from analysis.engine.train import train
from tests.test_train import tiny_cfg


def _worker(rank: int, world: int, init: str, cfg, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        train(cfg, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    # Patchify stem: no BatchNorm, so splitting each batch over two ranks is the same maths.
    cfg = tiny_cfg(**{"model.preset": "vit_p_fmnist_tiny", "train.epochs": 2})
    single = train(cfg, tmp_path / "single")
    mp.spawn(_worker, args=(2, f"file://{tmp_path}/rendezvous", cfg, str(tmp_path / "ddp")), nprocs=2)
    ddp = rundir.read_result(tmp_path / "ddp")
    assert ddp["status"] == "completed" and ddp["processes"] == 2
    a, b = rundir.read_metrics(tmp_path / "single"), rundir.read_metrics(tmp_path / "ddp")
    assert len(b) == 2
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-3)
        assert abs(rb["test_top1_err"] - ra["test_top1_err"]) <= 1.0
    assert abs(ddp["top1_err"] - single["top1_err"]) <= 1.0


def _locked_worker(rank: int, world: int, init: str, cfg, out: str, report: str) -> None:
    from analysis.rundir import RunLocked

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        train(cfg, out)
        outcome = "trained"
    except RunLocked as e:
        outcome = f"locked: {e}"
    finally:
        dist.destroy_process_group()
    with open(f"{report}.{rank}", "w") as f:
        f.write(outcome)


@pytest.mark.slow
def test_every_rank_learns_that_the_folder_is_locked(tmp_path):
    """Only rank 0 takes the lock; every rank must raise RunLocked together (no rank left waiting
    in a barrier, no rank training on)."""
    import subprocess
    import sys

    cfg = tiny_cfg(**{"model.preset": "vit_p_fmnist_tiny", "train.epochs": 1})
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nfrom analysis import rundir\n"
            f"rundir.RunLock({str(out)!r}).acquire()\nprint('locked', flush=True)\n"
            "time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        mp.spawn(
            _locked_worker,
            args=(2, f"file://{tmp_path}/rendezvous", cfg, str(out), str(tmp_path / "outcome")),
            nprocs=2,
        )
    finally:
        holder.kill()
        holder.wait()
    outcomes = [(tmp_path / f"outcome.{r}").read_text() for r in (0, 1)]
    assert all(o.startswith("locked: ") and f"pid {holder.pid}" in o for o in outcomes), outcomes

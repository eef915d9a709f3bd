"""One run inside the training loop: its config, run folder, model, optimizer, EMA and records.

A Member owns what is one run's alone: its run directory (locked while it trains), its model,
its torch optimizer (timm's factory, as every run), its lr schedule and its position in it, its timm
EMA, its mixup, its data order, its checkpoints, metrics rows and result. The loop
(analysis/engine/train.py) drives one or K of them.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

from analysis.engine import data as D
from analysis import rundir
from analysis.errors import ConfigError
from analysis.config import RunConfig, load
from analysis.engine.evaluate import evaluate
from analysis.engine.model import build_model
from analysis.engine.optim import make_optimizer
from analysis.engine.schedule import Schedule
from analysis.engine.seed import seed_everything


_SOFT_TARGET_CE = SoftTargetCrossEntropy()  # timm's: mean over the batch of -sum(y * log_softmax(out))


def prepare_folder(run_dir: str | Path, cfg, create: bool = True):
    """Create the run directory (unless create=False), or check that the config it already holds
    matches `cfg` (all but analysis.config.RUNTIME_KEYS, e.g. the resolved train.precision); return
    the config to resume with (the stored one, else `cfg`)."""
    run_dir = Path(run_dir)
    rundir.check_out(run_dir)
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / rundir.CONFIG
    if not path.is_file():
        return cfg
    old = load(path)
    diff = sorted(old.differences(cfg))
    if diff:
        raise ConfigError(
            f"{run_dir} holds a run with another config (differs in {', '.join(diff)}); "
            "use another run directory or delete that one"
        )
    return old


class Member:
    """One run of the loop (rank 0 alone writes its folder under torch.distributed)."""

    def __init__(self, cfg: RunConfig, out: str | Path, dist):
        self.cfg = copy.deepcopy(cfg)
        self.out = Path(out)
        self.dist = dist
        self.result: dict | None = None
        self.progress = "none"
        self.prefix = ""  # the run's name on printed lines when several runs train together
        self.lock: rundir.RunLock | None = None
        self.writer = None  # TensorBoard, when train.tensorboard
        self.acc = {"loss": 0.0, "n": 0, "seconds": 0.0}
        self.run_start = time.time()

    # -- the run folder -------------------------------------------------------------------------
    def finished(self) -> bool:
        """True (with self.result set) when the folder holds this config's final result."""
        rundir.check_out(self.out)
        if not rundir.is_complete(self.out):
            return False
        prepare_folder(self.out, self.cfg, create=False)  # another config there: one line
        self.result = rundir.read_result(self.out)
        return True

    def build(self, device: torch.device) -> None:
        """The run's freshly initialised model (seeded as every run is); checks the model config."""
        seed_everything(self.cfg.train.seed)
        self.model = build_model(self.cfg).to(device)
        if self.cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def open(self, restart: bool = False, job: dict | None = None) -> str | None:
        """Create or check the folder, take its lock (rank 0; every rank learns the outcome), tidy it
        and mark it with `job` (job.json); return the precision to resume with: the saved, resolved
        one when the run resumes from a checkpoint, else None (resolve it afresh)."""
        saved = prepare_folder(self.out, self.cfg)
        refused = None
        if self.dist.main:
            try:
                self.lock = rundir.RunLock(self.out).acquire()
            except rundir.RunLocked as e:
                refused = str(e)
        refused = self.dist.broadcast(refused)
        if refused:
            raise rundir.RunLocked(refused)
        try:
            if self.dist.main:
                self._tidy(restart, job)
            self.dist.barrier()
        except BaseException:
            self.close()
            raise
        resuming = (self.out / rundir.CHECKPOINT).is_file() and saved.train.precision != "auto"
        return saved.train.precision if resuming else None

    def _tidy(self, restart: bool, job: dict | None) -> None:
        """Under the lock: remove temp files of interrupted writes, a failed attempt's result (or, on
        restart, the run's records), and mark the job that trains the folder."""
        removed = rundir.remove_temp_files(self.out)
        unshared = rundir.unshare(self.out)  # before the first log line: appends stay in this folder
        if removed:
            self.log(f"removed {removed} temporary file(s) of an interrupted write")
        if unshared:
            self.log(f"gave {unshared} hard-linked file(s) a private copy (this folder's writes stay in it)")
        if restart:
            rundir.clear_run(self.out)
            self.log("restarted: checkpoint, metrics and result removed")
        elif (rundir.read_result(self.out) or {}).get("status") == "failed":
            (self.out / rundir.RESULT).unlink()  # this attempt writes its own outcome
        if job is not None:
            rundir.write_json(self.out / rundir.JOB, {**job, "started": time.time()})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def log(self, text: str) -> None:
        if not self.dist.main:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        rundir.log_line(self.out, line)
        if self.progress == "bar":  # above the step bar; stdout, so notebooks do not show it as an error
            from tqdm.auto import tqdm

            tqdm.write(self.prefix + line, file=sys.stdout)
        elif self.progress == "lines":
            print(self.prefix + line, flush=True)

    # -- training state -------------------------------------------------------------------------
    def setup(self, precision: str, data) -> None:
        """Resolve precision into the saved config; build the optimizer, schedule, EMA and mixup."""
        cfg = self.cfg
        cfg.train.precision = precision
        if self.dist.main:
            rundir.write_atomic(self.out / rundir.CONFIG, cfg.to_yaml().encode())
        self.data = data
        self.opt = make_optimizer(self.model, cfg)
        self.schedule = Schedule.for_run(cfg, data.steps_per_epoch)
        self.ema = None
        if cfg.train.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.train.ema_decay)
        self.mixup = None
        if cfg.train.mixup or cfg.train.cutmix:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=cfg.train.mixup,
                cutmix_alpha=cfg.train.cutmix,
                label_smoothing=cfg.train.label_smoothing,
                num_classes=self.model.num_classes,
            )
        if cfg.train.tensorboard and self.dist.main:
            self.writer = tensorboard_writer(self.out)

    def restore(self, device: torch.device) -> None:
        """Load the run's checkpoint, if it has one, into model, optimizer, EMA and schedule (its
        position). The checkpoint itself is not kept.
        A checkpoint that cannot be read, or does not fit this run, raises rundir.CheckpointError
        naming the file and --restart."""
        ckpt = rundir.load_checkpoint(self.out, map_location=device, model=self.model)
        if ckpt is None:
            return
        try:
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            if self.ema is not None and "ema" in ckpt:
                self.ema.module.load_state_dict(ckpt["ema"])
            acc = ckpt["epoch_acc"]
            self.acc = json.loads(acc) if isinstance(acc, str) else dict(acc)
            self.run_start = time.time() - float(ckpt["elapsed"])
            self.schedule.load(ckpt)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            what = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise rundir.CheckpointError(
                f"checkpoint {self.out / rundir.CHECKPOINT} does not fit this run ({type(e).__name__}: {what}); "
                f"start the run over with `python -m analysis train --restart --out {self.out} ...` "
                "(train(cfg, out, restart=True)) or delete that file"
            ) from None

    def save(self) -> None:
        """Checkpoint the run where its schedule stands."""
        if self.dist.main:
            rundir.save_checkpoint(
                self.out,
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.opt.state_dict(),
                    **({"ema": self.ema.module.state_dict()} if self.ema is not None else {}),
                    **self.schedule.state(),
                    "epoch_acc": dict(self.acc),
                    "elapsed": time.time() - self.run_start,
                },
            )

    # -- one step -------------------------------------------------------------------------------
    def batch(self, x: torch.Tensor, y: torch.Tensor, epoch: int, index: int, device: torch.device):
        """This process's share of a global batch, on the device, mixed when mixup is on."""
        r, w = self.dist.rank, self.dist.world
        if w > 1:
            x, y = x[r::w], y[r::w]
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.mixup is not None:
            seed_everything(D.batch_seed(self.cfg.train.seed, epoch, index) + r)  # mixup's numpy draws
            x, y = self.mixup(x, y)
        return x, y

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.ndim == 2:  # mixup's soft targets (label smoothing included)
            return _SOFT_TARGET_CE(out, y)
        return F.cross_entropy(out, y, label_smoothing=self.cfg.train.label_smoothing)

    def set_lr(self) -> None:
        """The lr of the schedule's next step onto the optimizer."""
        lr = self.schedule.lr(self.schedule.step)
        for g in self.opt.param_groups:
            g["lr"] = lr

    def step(self, step: int) -> None:
        """Clip, step the optimizer, update the EMA at `step` (the schedule's next step; gradients are
        already on the parameters); the schedule then stands after it."""
        if self.cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=step)
        self.schedule.advance()

    # -- records --------------------------------------------------------------------------------
    def end_epoch(self, device, dtype) -> dict | None:
        """Move the schedule to the next epoch and checkpoint; on every train.eval_every-th epoch and
        the last, first evaluate and append a metrics row for the epochs since the previous row (None
        on the others)."""
        self.schedule.next_epoch()
        epoch, step, lr = self.schedule.epoch, self.schedule.step, self.schedule.last_lr
        every, epochs = self.cfg.train.eval_every, self.cfg.train.epochs
        if epoch % every and epoch != epochs:
            self.save()  # the period's running sums travel in the checkpoint
            self.log(
                f"epoch {epoch}/{epochs} loss {self.acc['loss'] / max(self.acc['n'], 1):.4f} (since the last "
                f"test) lr {lr:.3g}; next test at epoch {min(epoch + every - epoch % every, epochs)}"
            )
            return None
        test = evaluate(self.model, self.data.test_batches(), device, dtype, self.dist)
        ema = evaluate(self.ema.module, self.data.test_batches(), device, dtype, self.dist) if self.ema else None
        acc = self.acc
        row = {
            "epoch": epoch,
            "step": step,
            "train_loss": acc["loss"] / max(acc["n"], 1),
            "test_top1_err": test["top1_err"],
            "test_top5_err": test["top5_err"],
            "ema_top1_err": ema["top1_err"] if ema else None,
            "ema_top5_err": ema["top5_err"] if ema else None,
            "lr": lr,
            "seconds": acc["seconds"],
            "images_per_s": acc["n"] * self.cfg.train.batch_size / max(acc["seconds"], 1e-9),
            "elapsed": max(0.0, time.time() - self.run_start),  # a wall clock set back is not negative time
        }
        self.acc = {"loss": 0.0, "n": 0, "seconds": 0.0}
        if self.dist.main:
            rundir.append_metrics(self.out, row)
            if self.writer is not None:
                write_scalars(self.writer, row)
        self.save()
        self.log(
            f"epoch {epoch}/{self.cfg.train.epochs} loss {row['train_loss']:.4f} "
            f"test err {test['top1_err']:.2f}% "
            + (f"ema err {ema['top1_err']:.2f}% " if ema else "")
            + f"lr {lr:.3g} {row['images_per_s']:.0f} img/s"
        )
        return row

    def finish(self, cx: dict) -> dict:
        rows = self.dist.broadcast(rundir.read_metrics(self.out) if self.dist.main else [])
        result = {**rundir.completed_result(rows, cx, time.time() - self.run_start), "processes": self.dist.world}
        self._write(result)
        self.log(
            f"done: test err {result['top1_err']:.2f}% (best {result['best_top1_err']:.2f}%) "
            f"in {result['seconds']:.0f}s"
        )
        return result

    def diverged(self, epoch: int, bad_step: int, cx: dict) -> dict:
        result = rundir.diverged_result(epoch, bad_step, cx, time.time() - self.run_start)
        self.log(f"diverged: {result['reason']}")
        self._write(result)
        return result

    def failed(self, error: BaseException) -> dict:
        self.result = rundir.failed_result(rundir.failure_reason(error))
        if self.dist.main:
            rundir.record_failure(self.out, error)
            if self.progress != "none":
                print(f"{self.prefix}failed: {self.result['reason']}", flush=True)
        return self.result

    def _write(self, result: dict) -> None:
        self.result = result
        if self.dist.main:
            rundir.write_json(self.out / rundir.RESULT, result)


def tensorboard_writer(run_dir: Path):
    """A TensorBoard SummaryWriter on run_dir/tensorboard (the optional `tensorboard` package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from analysis.errors import ConfigError

        raise ConfigError(
            "train.tensorboard needs the tensorboard package (pip install tensorboard); "
            "allowed without it: train.tensorboard=false"
        ) from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def write_scalars(writer, row: dict) -> None:
    """One epoch's metrics row as TensorBoard scalars at the row's step."""
    for key in ("train_loss", "test_top1_err", "test_top5_err", "ema_top1_err", "lr", "images_per_s"):
        if row.get(key) is not None:
            writer.add_scalar(key, row[key], global_step=row["step"])
    writer.flush()

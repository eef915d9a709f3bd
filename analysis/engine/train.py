"""The training engine: one loop, written once, over one run or K compatible runs.

    result = train(cfg, "runs/vit_c")               # one run; resumes from its checkpoint if present
    results = train_group(cfgs, outs)               # K runs at once, each into its own run directory

A run is a `Member` (analysis/engine/member.py: its folder, model, torch optimizer, timm EMA, data
order, records). The loop asks a back-end (analysis/engine/backends.py) for the step's losses and
gradients: the single-model one for one run (any data source; DDP under torch.distributed), the
stacked one for K runs (vmap over the runs' stacked weights). Schedule, optimizer steps, EMA,
evaluation, checkpoints, stop requests, divergence, metrics and results are the loop's alone.

The recipe is the paper's (analysis/engine/recipe.py). A non-finite loss ends that run as "diverged"
(error 100%) and the others go on; a stop request (preemption) checkpoints every run at the next
step and raises Stopped; a resumed run ends with the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from analysis import rundir
from analysis.engine.backends import Dist, SingleBackend, StackedBackend, check_compatible
from analysis.config import RunConfig
from analysis.errors import ConfigError
from analysis.engine.member import Member
from analysis.engine.recipe import build_data, choose_precision, resolve_device

CHECK_EVERY = 25  # steps between host checks for a non-finite loss (each one is a device sync)


class Stopped(Exception):
    """Raised by the loop after a requested stop has been checkpointed (preemption)."""


def train(cfg: RunConfig, out: str | Path, restart: bool = False) -> dict:
    """Train one run into `out` (resuming if it holds a checkpoint); return its result record.
    restart=True starts the run over: its checkpoint, metrics and result are removed first."""
    return Trainer(cfg, out, restart=restart).run()[0]


def train_group(cfgs: list[RunConfig], outs: list[str | Path], stop_at_step: int | None = None) -> list[dict]:
    """Train compatible runs (see analysis.engine.backends.SHARED) at once, each into its own run directory;
    return their result records in order. Finished runs are not trained again."""
    return Trainer(cfgs, outs, stop_at_step=stop_at_step).run()


class Trainer:
    """The loop over one or more runs. `run()` trains them (resuming each from its checkpoint) and
    returns their result records; `request_stop()` (e.g. from a preemption signal) makes it
    checkpoint every run at the next step and raise Stopped. `stop_at_step` does the same once that
    many steps are done (under DDP a stop is acted on at the next check, every CHECK_EVERY steps).
    Under torch.distributed one run trains with DDP and rank 0 writes its folder. A run folder another
    live trainer holds is skipped in a group (its result is None) and refused for one run."""

    def __init__(self, cfgs, outs, stop_at_step: int | None = None, restart: bool = False, job: dict | None = None):
        single = isinstance(cfgs, RunConfig)
        self.cfgs = [cfgs] if single else list(cfgs)
        self.outs = [Path(outs)] if single else [Path(o) for o in outs]
        if len(self.cfgs) != len(self.outs):
            raise ConfigError(f"got {len(self.cfgs)} configs but {len(self.outs)} output folders")
        if len({o.resolve() for o in self.outs}) != len(self.outs):
            raise ConfigError("each run needs its own output folder")
        check_compatible(self.cfgs)
        self.stop_at_step = stop_at_step
        self.restart = restart
        self.job = job  # written to each run folder as job.json once its lock is taken (sweep jobs)
        self._measured: str | None = None
        self.dist = Dist.current()
        if self.dist.world > 1 and len(self.cfgs) > 1:
            raise ConfigError("under torch.distributed the engine trains one run at a time")
        self._stop = False

    def request_stop(self) -> None:
        self._stop = True

    def run(self) -> list[dict]:
        members = [Member(c, o, self.dist) for c, o in zip(self.cfgs, self.outs)]
        todo = [m for m in members if self.restart or not m.finished()]
        if todo:
            opened = []
            try:
                self._train(todo, opened)
            finally:
                for m in opened:
                    m.close()
        return [m.result for m in members]

    # -- set-up ---------------------------------------------------------------------------------
    def _device(self, cfg: RunConfig) -> torch.device:
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        device = resolve_device(cfg.train.device)
        if device.type == "cuda" and self.dist.world > 1:
            index = int(os.environ.get("LOCAL_RANK", self.dist.rank % torch.cuda.device_count()))
            device = torch.device("cuda", index)
            torch.cuda.set_device(device)
        return device

    def _train(self, todo: list[Member], opened: list[Member]) -> None:
        """Build (checking model and data before any folder is made), open, restore, then train each
        group of runs that stand at the same point."""
        cfg = todo[0].cfg
        device = self._device(cfg)
        for m in todo:
            m.build(device)
        data = build_data(cfg, device, todo[0].model.img_size)
        steps = data.steps_per_epoch
        if steps < 1:
            raise ConfigError(f"train.batch_size {cfg.train.batch_size} exceeds the {data.num_train} training images")
        if cfg.train.batch_size % self.dist.world:
            raise ConfigError(f"train.batch_size {cfg.train.batch_size} must divide among {self.dist.world} processes")
        groups = defaultdict(list)
        for m, precision in self._open(todo, opened).items():
            if precision is None:
                precision = self._precision(m, data, device)
            m.setup(precision, data.reseeded(m.cfg.train.seed) if data.loader is not None else data, steps)
            m.progress = self._progress_mode(m.cfg)
            m.prefix = f"{m.out.name}: " if len(todo) > 1 else ""
            try:
                position = m.restore(device)
            except rundir.CheckpointError as e:
                m.failed(e)
                if len(todo) == 1:
                    raise
                continue
            groups[position or (0, 0, 0), precision].append(m)
        from analysis.models import complexity

        cx = complexity(todo[0].model, todo[0].model.img_size, todo[0].model.in_chans)
        for (position, precision), members in sorted(groups.items()):
            try:
                self._loop(members, position, device, torch.bfloat16 if precision == "bf16" else None, cx)
            except (Stopped, KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:
                for m in members:
                    if m.result is None:
                        m.failed(e)
                raise

    def _open(self, todo: list[Member], opened: list[Member]) -> dict:
        """{member: saved precision or None} for every folder this process could lock; a folder another
        live trainer holds is left alone (its result stays None; one run alone raises RunLocked)."""
        out = {}
        for m in todo:
            try:
                out[m] = m.open(self.restart, self.job)
            except rundir.RunLocked as e:
                if len(todo) == 1:
                    raise
                if self.dist.main:
                    print(f"skipped: {e}", flush=True)
                continue
            opened.append(m)
        return out

    def _precision(self, m: Member, data, device: torch.device) -> str:
        """The run's train.precision, "auto" resolved by a short measurement (once per Trainer)."""
        if m.cfg.train.precision != "auto":
            return m.cfg.train.precision
        if self._measured is None:
            x, y = next(iter(data.train_batches(0, 0)))
            self._measured = self.dist.broadcast(choose_precision(m.cfg, m.model, device, (x.to(device), y.to(device))))
        return self._measured

    def _progress_mode(self, cfg: RunConfig) -> str:
        if not self.dist.main:
            return "none"
        mode = cfg.train.progress
        return ("bar" if sys.stderr.isatty() else "lines") if mode == "auto" else mode

    def _announce(self, members: list[Member], position: tuple, cx: dict) -> None:
        epoch, start, step = position
        stacked = f" (stacked, {len(members)} runs)" if len(members) > 1 else ""
        for m in members:
            c = m.cfg
            if self.dist.main:
                rundir.truncate_metrics(m.out, epoch)
            if step:
                m.log(f"resumed at epoch {epoch + 1}, batch {start}, step {step}{stacked}")
                continue
            device = next(m.model.parameters()).device
            m.log(
                f"start {c.model.preset} stem={getattr(m.model, 'stem_name', '-')} {c.optim.name} "
                f"lr={m.base_lr:.3g} wd={c.optim.weight_decay:.3g} epochs={c.train.epochs} "
                f"batch={c.train.batch_size} precision={c.train.precision} device={device} "
                f"processes={self.dist.world} params={cx['params'] / 1e6:.2f}M flops={cx['flops'] / 1e6:.1f}M" + stacked
            )

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self, members: list[Member], position: tuple, device: torch.device, dtype, cx: dict) -> None:
        """Train runs that stand at the same (epoch, batch, step) to the end of their schedule."""
        cfg, dist = members[0].cfg, self.dist
        steps = members[0].data.steps_per_epoch
        total = steps * cfg.train.epochs
        epoch, start, step = position
        self._announce(members, position, cx)
        backend = SingleBackend(members[0], dist) if len(members) == 1 else StackedBackend(members)
        active, last_save = list(members), time.monotonic()
        while epoch < cfg.train.epochs and active:
            backend.train()
            loss_sum = torch.zeros(len(active), device=device, dtype=torch.float64)
            bad = torch.full((len(active),), -1, device=device, dtype=torch.long)
            iters = [m.data.train_batches(epoch, start) for m in active]
            seen, t0, bar = 0, time.perf_counter(), self._bar(active, epoch, start, steps)
            for i in range(start, steps):
                batches = [m.batch(*next(it), epoch, i, device) for m, it in zip(active, iters)]
                for m in active:
                    m.set_lr(step, total)
                losses = backend.losses(active, batches, dtype)
                for m in active:
                    m.step(step)
                loss_sum += losses
                bad = torch.where((bad < 0) & ~torch.isfinite(losses), step, bad)
                step, seen = step + 1, seen + 1
                if bar is not None:
                    bar.update(1)
                if self.stop_at_step is not None and step >= self.stop_at_step:
                    self._stop = True
                # Host checks: non-finite losses every CHECK_EVERY steps and at the epoch's end; a stop
                # or a timed checkpoint at once, but under DDP only at those steps so that ranks agree.
                check = step % CHECK_EVERY == 0 or i == steps - 1
                due = (
                    bool(cfg.train.checkpoint_minutes)
                    and time.monotonic() - last_save > 60 * cfg.train.checkpoint_minutes
                )
                if not (check or (dist.world == 1 and (self._stop or due))):
                    continue
                first_bad, stop, due = self._agree(bad, due)
                if any(b >= 0 for b in first_bad):
                    keep = [k for k, b in enumerate(first_bad) if b < 0]
                    for k in (k for k, b in enumerate(first_bad) if b >= 0):
                        active[k].diverged(epoch, first_bad[k], cx)
                    active, iters = [active[k] for k in keep], [iters[k] for k in keep]
                    index = torch.tensor(keep, device=device, dtype=torch.long)
                    loss_sum, bad = loss_sum.index_select(0, index), bad.index_select(0, index)
                    if not active:
                        break
                if stop or due:
                    self._fold(active, loss_sum, seen, t0)
                    seen, start, t0 = 0, i + 1, time.perf_counter()
                    for m in active:
                        m.save(epoch, start, step)
                    dist.barrier()
                    last_save = time.monotonic()
                    if stop:
                        for m in active:
                            m.log(f"stopped and checkpointed at epoch {epoch + 1}, batch {start}, step {step}")
                        raise Stopped()
            if bar is not None:
                bar.close()
            if not active:
                break
            self._fold(active, loss_sum, seen, t0)
            epoch, start = epoch + 1, 0
            for m in active:  # (a non-finite loss was caught at the epoch's last step)
                m.end_epoch(epoch, step, m.lr(step - 1, total), device, dtype)
            dist.barrier()
            last_save = time.monotonic()
        for m in active:
            m.finish(cx)
        dist.barrier()

    def _fold(self, active: list[Member], loss_sum: torch.Tensor, seen: int, t0: float) -> None:
        """Add the steps since t0 to each run's epoch accumulators (loss averaged over ranks)."""
        sums = self.dist.reduce(loss_sum.clone()).tolist()
        elapsed = time.perf_counter() - t0
        for m, s in zip(active, sums):
            m.acc["loss"] += s / self.dist.world
            m.acc["n"] += seen
            m.acc["seconds"] += elapsed
        loss_sum.zero_()

    def _agree(self, bad: torch.Tensor, due: bool) -> tuple[list[int], bool, bool]:
        """(first non-finite step per run, -1 for none; stop?; checkpoint due?), equal on every rank."""
        if self.dist.world == 1:  # a stop or timed checkpoint reads them too: no NaN run is checkpointed
            return bad.tolist(), self._stop, due
        big = torch.iinfo(torch.long).max
        flags = torch.cat(
            [
                torch.where(bad >= 0, -bad, torch.full_like(bad, -big)),
                torch.tensor([int(self._stop), int(due)], device=bad.device),
            ]
        )
        values = self.dist.reduce(flags, "max").tolist()
        return [-v if v > -big else -1 for v in values[:-2]], bool(values[-2]), bool(values[-1])

    def _bar(self, active: list[Member], epoch: int, start: int, steps: int):
        if active[0].progress != "bar":
            return None
        from tqdm.auto import tqdm

        runs = f" ({len(active)} runs)" if len(active) > 1 else ""
        return tqdm(
            total=steps, initial=start, desc=f"epoch {epoch + 1}/{active[0].cfg.train.epochs}{runs}", leave=False
        )

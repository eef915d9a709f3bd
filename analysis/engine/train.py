"""The training engine: one loop, written once, over one run or K compatible runs.

    result = train(cfg, "runs/vit_c")               # one run; resumes from its checkpoint if present
    results = train_group(cfgs, outs)               # K runs at once, each into its own run directory

A run is a `Member` (analysis/engine/member.py: its folder, model, torch optimizer, lr schedule,
timm EMA, data order, records). The loop asks a back-end (analysis/engine/backends.py) for the step's losses and
gradients: the single-model one for one run (any data source; DDP under torch.distributed), the
stacked one for K runs (vmap over the runs' stacked weights). Schedule, optimizer steps, EMA,
evaluation, checkpoints, stop requests, divergence, metrics and results are the loop's alone.

The recipe is the paper's: optimizers in analysis/engine/optim.py, the lr schedule in
analysis/engine/schedule.py (each run's Schedule also says where the run stands). A non-finite loss
ends that run as "diverged" (error 100%) and the others go on; a stop request (preemption)
checkpoints every run at the next step and raises Stopped; a resumed run ends with the same metrics
as an uninterrupted one. An error after a run's folder is opened (unreadable images, a bug) is
recorded there as a "failed" result and raised.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from analysis import rundir
from analysis.engine.backends import Dist, SingleBackend, StackedBackend, check_compatible
from analysis.config import RunConfig
from analysis.errors import ConfigError
from analysis.engine.data import build_data
from analysis.engine.member import Member
from analysis.engine.precision import choose_precision, run_device
from analysis.engine.schedule import Schedule

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
        self._save_minutes = 0.0  # the group's train.checkpoint_minutes (0: no timed checkpoints)
        self._last_save = 0.0  # time.monotonic() of the group's last checkpoint

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
    def _train(self, todo: list[Member], opened: list[Member]) -> None:
        """Build (checking model and data before any folder is made), open, restore, then train each
        group of runs that stand at the same point."""
        cfg = todo[0].cfg
        device = run_device(cfg, self.dist)
        for m in todo:
            m.build(device)
        data = build_data(cfg, device, todo[0].model.img_size)
        if data.steps_per_epoch < 1:
            raise ConfigError(f"train.batch_size {cfg.train.batch_size} exceeds the {data.num_train} training images")
        if cfg.train.batch_size % self.dist.world:
            raise ConfigError(f"train.batch_size {cfg.train.batch_size} must divide among {self.dist.world} processes")
        groups = self._groups(todo, opened, data, device)
        from analysis.models import complexity

        cx = complexity(todo[0].model, todo[0].model.img_size, todo[0].model.in_chans)
        for (_, precision), members in sorted(groups.items()):
            with failures_recorded(members):
                self._loop(members, device, torch.bfloat16 if precision == "bf16" else None, cx)

    def _groups(self, todo: list[Member], opened: list[Member], data, device: torch.device) -> dict:
        """{(position, precision): runs} of the runs this process could open, each set up and restored
        from its checkpoint. A run whose set-up fails is recorded as failed and the error raised; one
        whose checkpoint does not fit is recorded as failed and left out (raised for one run alone)."""
        groups = defaultdict(list)
        for m, precision in self._open(todo, opened).items():
            m.progress = self._progress_mode(m.cfg)
            m.prefix = f"{m.out.name}: " if len(todo) > 1 else ""
            with failures_recorded([m]):
                if precision is None:
                    precision = self._precision(m, data, device)
                m.setup(precision, data.reseeded(m.cfg.train.seed) if data.loader is not None else data)
            try:
                m.restore(device)
            except rundir.CheckpointError as e:
                m.failed(e)
                if len(todo) == 1:
                    raise
                continue
            groups[m.schedule.position, precision].append(m)
        return groups

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

    def _announce(self, members: list[Member], cx: dict) -> None:
        epoch, start, step = members[0].schedule.position
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
                f"lr={m.schedule.base_lr:.3g} wd={c.optim.weight_decay:.3g} epochs={c.train.epochs} "
                f"batch={c.train.batch_size} precision={c.train.precision} device={device} "
                f"processes={self.dist.world} params={cx['params'] / 1e6:.2f}M flops={cx['flops'] / 1e6:.1f}M" + stacked
            )

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self, members: list[Member], device: torch.device, dtype, cx: dict) -> None:
        """Train runs that stand at the same (epoch, batch, step) to the end of their schedule."""
        self._announce(members, cx)
        backend = SingleBackend(members[0], self.dist) if len(members) == 1 else StackedBackend(members)
        self._save_minutes = members[0].cfg.train.checkpoint_minutes
        active, self._last_save = list(members), time.monotonic()
        while active and not active[0].schedule.finished:
            active = self._epoch(active, backend, device, dtype, cx)
        for m in active:
            m.finish(cx)
        self.dist.barrier()

    def _epoch(self, active: list[Member], backend, device: torch.device, dtype, cx: dict) -> list[Member]:
        """Train the runs to the end of the epoch they stand in; return those that did not diverge."""
        backend.train()
        tally = Tally(active, device)
        clock = tally.clock
        epoch, steps, bar = clock.epoch, clock.steps_per_epoch, self._bar(active, clock)
        for i in range(clock.batch, steps):
            step = tally.clock.step
            batches = [m.batch(*next(it), epoch, i, device) for m, it in zip(tally.active, tally.iters)]
            for m in tally.active:
                m.set_lr()
            losses = backend.losses(tally.active, batches, dtype)
            for m in tally.active:
                m.step(step)
            tally.add(losses, step)
            if bar is not None:
                bar.update(1)
            if self.stop_at_step is not None and step + 1 >= self.stop_at_step:
                self._stop = True
            self._check(tally, i == steps - 1, cx)
            if not tally.active:
                break
        if bar is not None:
            bar.close()
        if not tally.active:
            return []
        tally.fold(self.dist)
        for m in tally.active:  # (a non-finite loss was caught at the epoch's last step)
            m.end_epoch(device, dtype)
        self.dist.barrier()
        self._last_save = time.monotonic()
        return tally.active

    def _check(self, tally: "Tally", last: bool, cx: dict) -> None:
        """Host checks after a step: non-finite losses every CHECK_EVERY steps and at the epoch's end
        (`last`); a stop or a timed checkpoint at once, but under DDP only at those steps so that ranks
        agree. Diverged runs leave the tally; a stop or a due checkpoint saves every run left."""
        epoch, step = tally.clock.epoch, tally.clock.step
        minutes = self._save_minutes
        due = bool(minutes) and time.monotonic() - self._last_save > 60 * minutes
        if not (step % CHECK_EVERY == 0 or last or (self.dist.world == 1 and (self._stop or due))):
            return
        first_bad, stop, due = self._agree(tally.bad, due)
        if any(b >= 0 for b in first_bad):
            for k in (k for k, b in enumerate(first_bad) if b >= 0):
                tally.active[k].diverged(epoch, first_bad[k], cx)
            tally.keep([k for k, b in enumerate(first_bad) if b < 0])
            if not tally.active:
                return
        if stop or due:
            self._checkpoint(tally, stop)

    def _checkpoint(self, tally: "Tally", stop: bool) -> None:
        """Checkpoint every active run inside its epoch; on a stop request then raise Stopped."""
        tally.fold(self.dist)
        for m in tally.active:
            m.save()
        self.dist.barrier()
        self._last_save = time.monotonic()
        if stop:
            for m in tally.active:
                epoch, batch, step = m.schedule.position
                m.log(f"stopped and checkpointed at epoch {epoch + 1}, batch {batch}, step {step}")
            raise Stopped()

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

    def _bar(self, active: list[Member], clock: Schedule):
        if active[0].progress != "bar":
            return None
        from tqdm.auto import tqdm

        runs = f" ({len(active)} runs)" if len(active) > 1 else ""
        return tqdm(
            total=clock.steps_per_epoch,
            initial=clock.batch,
            desc=f"epoch {clock.epoch + 1}/{clock.epochs}{runs}",
            leave=False,
        )


class Tally:
    """One epoch's running state of the runs still training: their batch iterators, summed losses and
    first non-finite steps, and the steps and seconds since the last fold into their accumulators."""

    def __init__(self, active: list[Member], device: torch.device):
        self.active = list(active)
        clock = self.clock
        self.iters = [m.data.train_batches(clock.epoch, clock.batch) for m in active]
        self.loss_sum = torch.zeros(len(active), device=device, dtype=torch.float64)
        self.bad = torch.full((len(active),), -1, device=device, dtype=torch.long)
        self.seen, self.t0 = 0, time.perf_counter()

    @property
    def clock(self) -> Schedule:
        """Where the runs stand (every run still training stands at the same point)."""
        return self.active[0].schedule

    def add(self, losses: torch.Tensor, step: int) -> None:
        self.loss_sum += losses
        self.bad = torch.where((self.bad < 0) & ~torch.isfinite(losses), step, self.bad)
        self.seen += 1

    def keep(self, keep: list[int]) -> None:
        """Keep only the runs at these indices."""
        self.active, self.iters = [self.active[k] for k in keep], [self.iters[k] for k in keep]
        index = torch.tensor(keep, device=self.bad.device, dtype=torch.long)
        self.loss_sum, self.bad = self.loss_sum.index_select(0, index), self.bad.index_select(0, index)

    def fold(self, dist) -> None:
        """Add the steps since the last fold to each run's epoch accumulators (loss averaged over ranks)."""
        sums = dist.reduce(self.loss_sum.clone()).tolist()
        elapsed = time.perf_counter() - self.t0
        for m, s in zip(self.active, sums):
            m.acc["loss"] += s / dist.world
            m.acc["n"] += self.seen
            m.acc["seconds"] += elapsed
        self.loss_sum.zero_()
        self.seen, self.t0 = 0, time.perf_counter()


@contextlib.contextmanager
def failures_recorded(members: list[Member]):
    """Record an error (not a stop) as the failure of each of these runs without a result, and re-raise it."""
    try:
        yield
    except (Stopped, KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        for m in members:
            if m.result is None:
                m.failed(e)
        raise

"""A run's lr schedule and where the run stands in it.

The paper's schedule (its code, pycls): a half-period cosine over the whole run times a linear
warmup ramp, stepped per iteration; the peak lr is the config's lr scaled linearly with batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from analysis.config import RunConfig


@dataclass
class Schedule:
    """Warmup then cosine over `epochs` epochs of `steps_per_epoch` steps, and the run's position in
    it: `epoch` (epochs done), `batch` (batches of the current epoch done) and `step` (steps done)."""

    base_lr: float
    warmup: int  # steps
    steps_per_epoch: int
    epochs: int
    epoch: int = 0
    batch: int = 0
    step: int = 0

    @classmethod
    def for_run(cls, cfg: RunConfig, steps_per_epoch: int) -> "Schedule":
        """The schedule of a run config whose data gives `steps_per_epoch` steps per epoch."""
        warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
        return cls(cfg.effective_lr(), warmup, steps_per_epoch, cfg.train.epochs)

    @property
    def total(self) -> int:
        """Steps in the whole run."""
        return self.steps_per_epoch * self.epochs

    def factor(self, step: int) -> float:
        """The lr at `step` as a share of base_lr: cosine from 1 to 0 over the run, times the warmup
        ramp (step + 1) / warmup over the first `warmup` steps."""
        factor = 0.5 * (1.0 + math.cos(math.pi * min(step, self.total) / max(self.total, 1)))
        if step < self.warmup:
            factor *= (step + 1) / self.warmup
        return factor

    def lr(self, step: int) -> float:
        return self.base_lr * self.factor(step)

    @property
    def last_lr(self) -> float:
        """The lr of the last step taken."""
        return self.lr(self.step - 1)

    @property
    def finished(self) -> bool:
        return self.epoch >= self.epochs

    @property
    def position(self) -> tuple[int, int, int]:
        return self.epoch, self.batch, self.step

    def advance(self) -> None:
        """One step taken."""
        self.batch += 1
        self.step += 1

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0

    def state(self) -> dict:
        """The position, as a checkpoint holds it."""
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step}

    def load(self, state: dict) -> None:
        """Take the position a checkpoint holds (KeyError, ValueError or TypeError when it has none)."""
        self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])

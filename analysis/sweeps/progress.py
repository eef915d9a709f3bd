"""Progress of a sweep being waited for: a line whenever the run counts change and a bar of
finished runs (tqdm: a terminal bar, or a widget in a notebook)."""

from __future__ import annotations

import sys
import time

import pandas as pd

from analysis.rundir.reader import FINAL


def _progress(status: pd.DataFrame) -> str:
    counts = status["state"].value_counts().to_dict()
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


class Progress:
    """Status-frame callback for Sweep.wait: echoes a line whenever the run counts change and keeps
    a tqdm bar of completed runs (shown on a terminal only)."""

    def __init__(self, total: int, echo=print, t0: float | None = None, bar: bool | None = None, file=None):
        from tqdm.auto import tqdm

        self.echo, self.t0, self.last_line, self.last = echo, t0 or time.time(), "", None
        self.bar = tqdm(
            total=total,
            desc="completed runs",
            unit="run",
            file=file or sys.stderr,
            disable=None if bar is None else not bar,
        )  # None: on a terminal only

    def __call__(self, status: pd.DataFrame) -> None:
        self.last = status
        line = _progress(status)
        if line != self.last_line:
            self.last_line = line
            with self.bar.external_write_mode():
                self.echo(f"[{time.time() - self.t0:5.0f}s] {line}")
        done = int(status["state"].isin(FINAL).sum())
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(
            ", ".join(
                f"{v} {k}" for k, v in status["state"].value_counts().items() if k not in (*FINAL, "pending", "running")
            )
        )

    def close(self) -> None:
        self.bar.close()

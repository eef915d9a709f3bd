"""A run folder as a whole: checked before training, its config matched on resume, its log, tidied."""

from __future__ import annotations

import os
from pathlib import Path


from analysis.errors import ConfigError
from analysis.rundir.layout import CHECKPOINT, METRICS, RESULT


def check_out(run_dir: str | Path) -> None:
    """Raise a one-line ConfigError unless run_dir is (or can become) a writable folder."""
    run_dir = Path(run_dir)
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == run_dir else f"is under {parent}, which is a file"
                raise ConfigError(f"run folder {run_dir} {where}; give a folder path")
            if not os.access(parent, os.W_OK | os.X_OK):
                what = "is not writable" if parent == run_dir else f"cannot be created: {parent} is not writable"
                raise ConfigError(f"run folder {run_dir} {what}; choose a folder you can write")
            return


def remove_temp_files(run_dir: str | Path) -> int:
    """Delete temp files left by interrupted atomic writes (call only while holding the run's lock);
    return how many were removed."""
    count = 0
    for tmp in Path(run_dir).glob(".*.tmp"):
        try:
            tmp.unlink()
            count += 1
        except OSError:
            pass
    return count


def clear_run(run_dir: str | Path) -> None:
    """Remove a run's checkpoint, metrics and result so that it starts over (config and log stay)."""
    for name in (CHECKPOINT, METRICS, RESULT):
        (Path(run_dir) / name).unlink(missing_ok=True)

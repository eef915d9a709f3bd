"""metrics.jsonl: one fsynced JSON row per tested epoch, read back in bounded memory."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path


from analysis.rundir.io import NotRegularFile, _clean, loads_finite, open_regular, write_atomic
from analysis.rundir.layout import METRIC_KEYS, METRICS
from analysis.rundir.schema import number_in


def append_metrics(run_dir: str | Path, row: dict) -> None:
    """Append one epoch's metrics as a JSON line and fsync it."""
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(_clean(row)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def metric_rows(lines) -> dict[int, dict]:
    """{epoch: row} from metrics.jsonl lines (str or bytes): the last row per epoch kept; torn,
    malformed and invalid rows (metric_row_ok) skipped."""
    rows = {}
    for line in lines:
        try:
            row = loads_finite(line)
        except ValueError:
            continue
        if metric_row_ok(row):
            rows[row["epoch"]] = row
    return rows


def metric_row_ok(row) -> bool:
    """Whether a metrics.jsonl row is valid: an object with an int epoch >= 0, its error rates (*_err) in
    [0, 100] or null, and every other number the suite writes (METRIC_KEYS) finite or null, those that
    count up (step, seconds, elapsed, lr, images_per_s) not negative. NaN/Infinity are not JSON numbers."""
    if not isinstance(row, dict) or not number_in(row.get("epoch"), 0, math.inf) or not isinstance(row["epoch"], int):
        return False
    for key in {*METRIC_KEYS, *(k for k in row if isinstance(k, str) and k.endswith("_err"))}:
        value = row.get(key)
        low, high = (
            (0, 100) if key.endswith("_err") else (-math.inf, math.inf) if key == "train_loss" else (0, math.inf)
        )
        if value is not None and not number_in(value, low, high):
            return False
    return True


MAX_METRICS_BYTES = 8 << 20  # read at most the last 8 MiB of a metrics.jsonl (some 25,000 epochs)
MAX_LINE_BYTES = 64 << 10  # a longer line is not a metrics row


def _lines(f, limit: int):
    """The whole lines of a binary file from its position on, each read with a bounded buffer;
    overlong lines skipped."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) > limit:
            while line and not line.endswith(b"\n"):
                line = f.readline(limit + 1)
            continue
        yield line


class _Bounded:
    """A binary file read through readline() for at most `left` more bytes (a file that grows while it
    is read, or lies about its size, is never read past the limit)."""

    def __init__(self, f, left: int):
        self.f, self.left = f, left

    def readline(self, limit: int) -> bytes:
        if self.left <= 0:
            return b""
        line = self.f.readline(min(limit, self.left))
        self.left -= len(line)
        return line


def read_metrics(run_dir: str | Path, max_bytes: int = MAX_METRICS_BYTES) -> list[dict]:
    """Return the per-epoch rows, last row per epoch kept, a torn last line ignored. Streamed in
    bounded memory: a file over max_bytes is read from its last max_bytes on (a warning says so)."""
    path = Path(run_dir) / METRICS
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                warnings.warn(f"{path}: over {max_bytes} bytes; read from its last {max_bytes} bytes", stacklevel=2)
                f.seek(size - max_bytes)
                f.readline(MAX_LINE_BYTES)  # the rest of a cut line
            rows = metric_rows(_lines(_Bounded(f, max_bytes), MAX_LINE_BYTES))
    except OSError:
        return []
    except NotRegularFile as e:
        warnings.warn(str(e), stacklevel=2)
        return []
    return [rows[e] for e in sorted(rows)]


def truncate_metrics(run_dir: str | Path, last_epoch: int) -> None:
    """Drop metrics rows after `last_epoch` (used when resuming from an older checkpoint)."""
    rows = [r for r in read_metrics(run_dir) if r["epoch"] <= last_epoch]
    write_atomic(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())

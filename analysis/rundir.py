"""The run directory: the only contract between training jobs and analyses (see README).

Writes are crash-safe: JSON and checkpoints go to a temp file, are fsynced and renamed over the
target; the metrics log is append-only with one fsynced line per epoch.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
LOG = "log.txt"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write bytes to path through a temp file, fsync and rename (never a torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _clean(value: Any) -> Any:
    """Make floats JSON-safe (NaN/inf become None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: str | Path, obj: dict) -> None:
    write_atomic(path, (json.dumps(_clean(obj), indent=1) + "\n").encode())


def read_json(path: str | Path) -> dict | None:
    """Return the parsed JSON object, or None if missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def append_metrics(run_dir: str | Path, row: dict) -> None:
    """Append one epoch's metrics as a JSON line and fsync it."""
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(_clean(row)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Return the per-epoch rows, last row per epoch kept, a torn last line ignored."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "epoch" in row:
            rows[row["epoch"]] = row
    return [rows[e] for e in sorted(rows)]


def truncate_metrics(run_dir: str | Path, last_epoch: int) -> None:
    """Drop metrics rows after `last_epoch` (used when resuming from an older checkpoint)."""
    rows = [r for r in read_metrics(run_dir) if r["epoch"] <= last_epoch]
    write_atomic(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())


def save_checkpoint(run_dir: str | Path, state: dict) -> None:
    """Write the checkpoint atomically (only the last one is kept)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(Path(run_dir) / CHECKPOINT, buf.getvalue())


def load_checkpoint(run_dir: str | Path, map_location="cpu") -> dict | None:
    """Return the last checkpoint (weights_only loading), or None if there is none."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location=map_location, weights_only=True)


def read_result(run_dir: str | Path) -> dict | None:
    return read_json(Path(run_dir) / RESULT)


def is_complete(run_dir: str | Path) -> bool:
    """True when the run ended with a result (completed or diverged): it need not run again."""
    result = read_result(run_dir)
    return bool(result) and result.get("status") in ("completed", "diverged")


def log_line(run_dir: str | Path, text: str) -> None:
    with open(Path(run_dir) / LOG, "a") as f:
        f.write(text.rstrip("\n") + "\n")

"""checkpoint.pt: written atomically, loaded weights only, memory-mapped and bounded by the model's size."""

from __future__ import annotations

from pathlib import Path

import torch

from analysis.errors import CheckpointError
from analysis.rundir.io import write_atomic
from analysis.rundir.layout import CHECKPOINT


def save_checkpoint(run_dir: str | Path, state: dict) -> None:
    """Write the checkpoint atomically (only the last one is kept)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(Path(run_dir) / CHECKPOINT, buf.getvalue())


CHECKPOINT_FACTOR = 6  # a checkpoint holds model, EMA and two optimizer moments: ~4x the parameters


def checkpoint_limit(model: torch.nn.Module | None) -> int | None:
    """The most bytes a run checkpoint of `model` may take: CHECKPOINT_FACTOR times its parameter and
    buffer bytes, plus 1 MiB of records (None without a model: no limit)."""
    if model is None:
        return None
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return CHECKPOINT_FACTOR * size + (1 << 20)


def load_checkpoint(run_dir: str | Path, map_location="cpu", model: torch.nn.Module | None = None) -> dict | None:
    """Return the last checkpoint (weights_only loading, memory-mapped), or None if there is none. An
    empty, truncated, corrupt or unsafe file, or one larger than a checkpoint of `model` can be
    (checkpoint_limit), raises CheckpointError with one line."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    limit = checkpoint_limit(model)
    size = path.stat().st_size
    if limit is not None and size > limit:
        raise CheckpointError(
            f"checkpoint {path} is {size} bytes, over the {limit} a checkpoint of this run's model can take "
            f"({CHECKPOINT_FACTOR}x its parameters); not read. Start the run over with "
            f"`stemlab train --restart --out {run_dir} ...` or delete that file"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        if path.stat().st_size == 0:
            what = "is empty"
        elif "weights_only" in str(e) or "Unsupported global" in str(e):
            what = "holds objects other than tensors and plain data (refused: checkpoints load weights only)"
        else:
            what = f"is truncated or corrupt ({type(e).__name__})"
        raise CheckpointError(
            f"checkpoint {path} {what}; start the run over with "
            f"`python -m analysis train --restart --out {run_dir} ...` "
            "(train(cfg, out, restart=True)) or delete that file"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(
            f"checkpoint {path} is not a run checkpoint (no model state); start the run over "
            f"with `python -m analysis train --restart --out {run_dir} ...` or delete that file"
        )
    return ckpt

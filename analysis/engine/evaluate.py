"""Test error of a model over a run's test batches (top-1, top-5, mean loss), under DDP too."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from analysis.engine.precision import autocast


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, batches, device: torch.device, dtype: torch.dtype | None = None, dist=None
) -> dict:
    """Top-1/top-5 error (%) and mean loss over all batches; under DDP each rank takes a slice of
    every batch and the counts are summed across ranks."""
    r, w = (dist.rank, dist.world) if dist is not None else (0, 1)
    counts = torch.zeros(4, device=device, dtype=torch.float64)  # top1 hits, top5 hits, loss, n
    model.eval()
    for x, y in batches:
        x, y = x[r::w].to(device, non_blocking=True), y[r::w].to(device, non_blocking=True)
        with autocast(device, dtype):
            out = model(x)
        out = out.float()
        hits = out.topk(min(5, out.shape[1]), dim=1).indices == y[:, None]
        counts[:3] += torch.stack(
            [hits[:, 0].sum(), hits.any(dim=1).sum(), F.cross_entropy(out, y, reduction="sum")]
        ).double()
        counts[3] += len(y)
    if dist is not None:
        dist.reduce(counts)
    top1, top5, loss, n = counts.tolist()
    return {"top1_err": 100.0 * (1 - top1 / n), "top5_err": 100.0 * (1 - top5 / n), "loss": loss / n}

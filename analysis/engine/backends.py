"""How the training loop gets losses and gradients for its runs: two back-ends, one interface.

    losses = backend.losses(members, batches, dtype)   # (K,) detached; gradients on each run's parameters

- SingleBackend: one run's model as it is (fused attention as configured), wrapped in
  DistributedDataParallel under torch.distributed; any data source.
- StackedBackend: K runs of one architecture at once. Each step stacks the runs' own parameters
  and buffers into (K, ...) tensors and calls `torch.func.vmap` over `functional_call` of one
  module, so gradients land on each run's parameters (its torch optimizer steps them) and
  BatchNorm keeps per-run statistics. Runs may differ in anything that does not change the
  computation's shapes: the optimizer and its settings, seed, label smoothing, mixup, EMA
  (`SHARED` lists what must be equal).

Everything else (schedule, optimizer steps, EMA, evaluation, checkpoints, stop requests,
divergence, metrics, results) is the loop's, in analysis/engine/train.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.func import functional_call, vmap

from analysis.config import RunConfig
from analysis.errors import ConfigError
from analysis.engine.precision import autocast

# Config keys (or key prefixes) the runs of one stacked group must share; all others may differ.
SHARED = (
    "model.",
    "data.",
    "train.epochs",
    "train.batch_size",
    "train.eval_batch_size",
    "train.channels_last",
    "train.device",
)


def shared_key(cfg: RunConfig) -> tuple:
    """What must be equal for runs to train as one stacked group (an explicit precision included)."""
    flat = cfg.flat()
    key = [(k, repr(v)) for k, v in flat.items() if k.startswith(SHARED)]
    if flat["train.precision"] != "auto":
        key.append(("train.precision", flat["train.precision"]))
    return tuple(sorted(key))


def check_compatible(cfgs: list[RunConfig]) -> None:
    """Raise a one-line ConfigError unless the configs can train as one stacked group."""
    if not cfgs:
        raise ConfigError("a group needs at least one run config")
    first = dict(shared_key(cfgs[0]))
    for i, cfg in enumerate(cfgs[1:], 1):
        other = dict(shared_key(cfg))
        for key in sorted(set(first) | set(other)):
            if first.get(key) != other.get(key):
                raise ConfigError(
                    f"runs 0 and {i} cannot train as one group: {key} differs "
                    f"({first.get(key, 'auto')} vs {other.get(key, 'auto')}); a group shares "
                    f"model.*, data.*, {', '.join(k for k in SHARED if k.startswith('train.'))}"
                )
    d = cfgs[0].data
    if len(cfgs) > 1 and (d.name == "imagefolder" or not d.in_memory or d.augment not in ("none", "crop_flip")):
        raise ConfigError(
            "a group of runs needs the in-memory data path: data.name fashion_mnist/cifar10/"
            f"cifar100, data.in_memory true, data.augment none or crop_flip (got {d.name}, "
            f"in_memory={d.in_memory}, augment={d.augment})"
        )


@dataclass
class Dist:
    """This process's place in a torch.distributed group (rank 0 of 1 when there is none)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> "Dist":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """All-reduce a tensor in place (sum or max); a no-op without a group."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t

    def broadcast(self, obj):
        """Rank 0's value of obj on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


class SingleBackend:
    """One run: its model (under DDP when torch.distributed is initialised)."""

    def __init__(self, member, dist: Dist):
        self.net = member.model
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            device = next(member.model.parameters()).device
            self.net = DistributedDataParallel(
                member.model, device_ids=[device.index] if device.type == "cuda" else None
            )

    def train(self) -> None:
        self.net.train()

    def losses(self, members: list, batches: list, dtype) -> torch.Tensor:
        (member,), ((x, y),) = members, batches
        with autocast(x.device, dtype):
            out = self.net(x)
        loss = member.loss(out.float(), y)
        loss.backward()
        return loss.detach()[None]


class StackedBackend:
    """K runs of one architecture through one vmapped forward and backward pass.

    The module called is a copy of the first run's model with explicit attention on every device:
    scaled_dot_product_attention has no vmap batching rule on the CPU (it falls back to a loop over
    the runs). Per-step losses equal each run's solo losses to ~1e-7 relative in fp32 (batched
    matmuls round differently; tests/test_batched.py measures it)."""

    def __init__(self, members: list):
        from analysis.models import set_fused_attn

        self.base = copy.deepcopy(members[0].model)  # functional_call leaves plain tensors on aliases
        set_fused_attn(self.base, False)
        self.names = [n for n, _ in self.base.named_parameters()]
        self.buffer_names = [n for n, _ in self.base.named_buffers()]
        self.tensors = {}
        for m in members:
            params, buffers = dict(m.model.named_parameters()), dict(m.model.named_buffers())
            self.tensors[id(m)] = ([params[n] for n in self.names], [buffers[n] for n in self.buffer_names])

    def train(self) -> None:
        self.base.train()

    def _forward(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def losses(self, members: list, batches: list, dtype) -> torch.Tensor:
        own = [self.tensors[id(m)] for m in members]
        params = {n: torch.stack([p[i] for p, _ in own]) for i, n in enumerate(self.names)}
        buffers = {n: torch.stack([b[i] for _, b in own]) for i, n in enumerate(self.buffer_names)}
        x = torch.stack([b[0] for b in batches])
        with autocast(x.device, dtype):
            out = vmap(self._forward, randomness="different")(params, buffers, x)
        if self.buffer_names:  # BatchNorm statistics updated in the stack go back to each run
            with torch.no_grad():
                torch._foreach_copy_(
                    [b for _, bufs in own for b in bufs],
                    [buffers[n][k] for k in range(len(own)) for n in self.buffer_names],
                )
        losses = torch.stack([m.loss(out[k].float(), batches[k][1]) for k, m in enumerate(members)])
        losses.sum().backward()
        return losses.detach()

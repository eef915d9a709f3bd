"""Where and in which precision a run computes: its device, and train.precision "auto" resolved.

"auto" takes bf16 on CUDA, and on a CPU with native bf16 matmuls when a short measurement of training
steps shows it faster (the verdict is cached per CPU and model); autocast applies the choice.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from analysis import rundir
from analysis.config import RunConfig
from analysis.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is visible; allowed here: auto, cpu")
    return torch.device(name)


def run_device(cfg: RunConfig, dist) -> torch.device:
    """The device this process trains on (under DDP on CUDA: its local GPU), with train.threads set."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and dist.world > 1:
        index = int(os.environ.get("LOCAL_RANK", dist.rank % torch.cuda.device_count()))
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return device


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matmuls (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("amx_bf16", "avx512_bf16"))


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    return Path(base) / "stemlab" / "precision.json"


def choose_precision(cfg: RunConfig, model: torch.nn.Module, device: torch.device, sample) -> str:
    """Resolve train.precision: "auto" takes bf16 on CUDA, and on a bf16-capable CPU when a short
    measurement of training steps shows it faster (the verdict is cached per CPU and model)."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if not cpu_has_bf16():
        return "fp32"
    key = (
        f"{cfg.model.preset}|{cfg.model.stem}|{cfg.model.local_mlp}|{cfg.train.batch_size}|"
        f"{tuple(sample[0].shape[1:])}|{torch.get_num_threads()}|{torch.__version__}"
    )
    path = _cache_path()
    cache = rundir.read_json(path) or {}
    if key not in cache:
        cache[key] = _measure_precision(model, sample, device)
        try:
            rundir.write_json(path, cache)
        except OSError:
            pass
    return cache[key]


def _measure_precision(model: torch.nn.Module, sample, device: torch.device) -> str:
    probe = copy.deepcopy(model).train()
    opt = torch.optim.SGD(probe.parameters(), lr=0.0)
    x, y = sample

    def steps(dtype, n=3) -> float:
        for i in range(n + 1):
            if i == 1:
                start = time.perf_counter()
            with autocast(device, dtype):
                loss = F.cross_entropy(probe(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - start

    # Alternate the two and keep each one's best time, so a busy machine skews neither.
    fp32 = bf16 = math.inf
    for _ in range(3):
        fp32, bf16 = min(fp32, steps(None)), min(bf16, steps(torch.bfloat16))
    return "bf16" if bf16 < 0.9 * fp32 else "fp32"

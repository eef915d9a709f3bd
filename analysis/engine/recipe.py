"""What a run config means: its device, model, data, optimizer, schedule, precision and evaluation.

The paper's recipe (sections 5-6): AdamW or SGD, no weight decay on norms, biases, position
embedding and class token (timm's optimizer factory); linear warmup then half-period cosine,
stepped per iteration; lr stated for a reference batch and scaled linearly. The loop that uses
these lives in analysis/engine/train.py.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from analysis.engine import data as D
from analysis import rundir
from analysis.config import RunConfig
from analysis.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is visible; allowed here: auto, cpu")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matmuls (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("amx_bf16", "avx512_bf16"))


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Half-period cosine over the run times a linear warmup ramp (pycls schedule)."""
    factor = 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    if step < warmup:
        factor *= (step + 1) / warmup
    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """timm's optimizer factory, which leaves norms, biases and model.no_weight_decay() undecayed.
    Uses torch's fused kernels (measured ~5x faster per step than foreach on the tiny CPU presets)."""
    from timm.optim import create_optimizer_v2

    o = cfg.optim
    if o.name == "adamw":
        name, kwargs = "adamw", {"betas": (o.beta1, o.beta2)}
    else:
        name = "sgd" if o.nesterov else "momentum"  # timm: "sgd" is Nesterov, "momentum" is plain
        kwargs = {"momentum": o.momentum}
    kwargs.update(lr=cfg.effective_lr(), weight_decay=o.weight_decay)
    try:
        return create_optimizer_v2(model, name, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # a device or dtype without fused kernels
        return create_optimizer_v2(model, name, foreach=True, **kwargs)


def data_shape(cfg: RunConfig) -> dict:
    """in_chans and num_classes implied by the dataset, and img_size when data.img_size sets it
    (otherwise the model keeps its preset's input size and the images are resized to it)."""
    name = cfg.data.name
    shape = {}
    if name == "fashion_mnist":
        shape = {"in_chans": 1, "num_classes": 10}
    elif name in ("cifar10", "cifar100"):
        shape = {"in_chans": 3, "num_classes": 10 if name == "cifar10" else 100}
    if cfg.data.img_size:
        shape["img_size"] = cfg.data.img_size
    return shape


def input_size(cfg: RunConfig) -> int:
    """The side in pixels the run's images are fed at: data.img_size, else the preset's img_size."""
    from analysis.models.presets import get_preset

    return cfg.data.img_size or get_preset(cfg.model.preset)["img_size"]


def build_model(cfg: RunConfig) -> torch.nn.Module:
    """The model for a run config, shaped for its dataset."""
    from analysis.models import create_model

    m = cfg.model
    return create_model(m.preset, stem=m.stem, local_mlp=m.local_mlp, fused_attn=m.fused_attn, **data_shape(cfg))


@dataclass
class Data:
    """Train/test batch sources for a run."""

    train_batches: callable  # (epoch, start) -> iterator of (x, y)
    steps_per_epoch: int
    test_batches: callable  # () -> iterator of (x, y)
    num_train: int
    num_test: int
    loader: "D.DeviceLoader | None" = None  # the in-memory training loader, when there is one

    def reseeded(self, seed: int) -> "Data":
        """The same in-memory data (tensors shared, not copied) with another seed's order and augmentation."""
        if self.loader is None:
            raise ConfigError("only the in-memory data path can be shared between runs")
        loader = copy.copy(self.loader)
        loader.seed = seed
        return replace(self, train_batches=loader.batches, loader=loader)


def build_data(cfg: RunConfig, device: torch.device, img_size: int) -> Data:
    """In-memory device batches for small datasets, DataLoaders otherwise."""
    d, t = cfg.data, cfg.train
    if d.name == "imagefolder":
        root = d.root or D.default_root("imagefolder")
        train_ds = D.imagefolder(root, True, img_size, d.augment)
        test_ds = D.imagefolder(root, False, img_size, "none")
        return _loader_data(train_ds, test_ds, cfg)
    train = D.load_arrays(d.name, d.root, True, d.train_per_class, img_size)
    test = D.load_arrays(d.name, d.root, False, d.test_per_class, img_size)
    pad = D.scaled_padding(d.crop_padding, D.NATIVE_SIZE[d.name], img_size)
    if d.in_memory and d.augment in ("none", "crop_flip"):
        aug = d.augment == "crop_flip"
        tr = D.DeviceLoader(train, t.batch_size, device, True, t.seed, pad if aug else 0, d.hflip and aug)
        te = D.DeviceLoader(test, t.eval_batch_size, device, False)
        return Data(tr.batches, len(tr), te.__iter__, len(train), len(test), loader=tr)
    train_ds = D.ArrayImageDataset(train, D.small_image_transform(True, train, d.augment, pad, d.hflip))
    test_ds = D.ArrayImageDataset(test, D.small_image_transform(False, test, "none", 0, False))
    return _loader_data(train_ds, test_ds, cfg)


def _loader_data(train_ds, test_ds, cfg: RunConfig) -> Data:
    t, w = cfg.train, cfg.data.workers

    def train_batches(epoch: int, start: int):
        it = iter(D.loader(train_ds, t.batch_size, True, w, t.seed, epoch))
        for i, batch in enumerate(it):
            if i >= start:
                yield batch

    def test_batches():
        return iter(D.loader(test_ds, t.eval_batch_size, False, w, t.seed))

    return Data(train_batches, len(train_ds) // t.batch_size, test_batches, len(train_ds), len(test_ds))


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

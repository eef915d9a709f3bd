"""The training engine: one run from one RunConfig into one run directory.

    result = train(cfg, "runs/vit_c")   # resumes from runs/vit_c/checkpoint.pt if present

Recipe (the paper's, sections 5-6): AdamW or SGD, no weight decay on norms, biases, position
embedding and class token; linear warmup then half-period cosine, stepped per iteration; lr stated
for a reference batch and scaled linearly; label smoothing, mixup/CutMix (timm); EMA (timm).
A non-finite loss ends the run as "diverged" (error 100%) instead of crashing.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from analysis import data as D
from analysis import rundir
from analysis.config import RunConfig
from analysis.errors import ConfigError

CHECK_EVERY = 25  # steps between host checks for a non-finite loss


class Stopped(Exception):
    """Raised inside the loop after a requested stop has been checkpointed (preemption)."""


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
    """in_chans, num_classes and img_size implied by the dataset (imagefolder: the model's)."""
    name = cfg.data.name
    if name == "fashion_mnist":
        return {"in_chans": 1, "num_classes": 10, "img_size": 28}
    if name in ("cifar10", "cifar100"):
        return {"in_chans": 3, "num_classes": 10 if name == "cifar10" else 100, "img_size": 32}
    return {}


def build_model(cfg: RunConfig) -> torch.nn.Module:
    """The model for a run config, shaped for its dataset."""
    from analysis.models import create_model

    m = cfg.model
    kwargs = data_shape(cfg)
    if cfg.data.name == "imagefolder" and cfg.data.img_size:
        kwargs["img_size"] = cfg.data.img_size
    return create_model(m.preset, stem=m.stem, local_mlp=m.local_mlp, fused_attn=m.fused_attn, **kwargs)


@dataclass
class Data:
    """Train/test batch sources for a run."""

    train_batches: callable  # (epoch, start) -> iterator of (x, y)
    steps_per_epoch: int
    test_batches: callable  # () -> iterator of (x, y)
    num_train: int
    num_test: int
    extra: dict = field(default_factory=dict)


def build_data(cfg: RunConfig, device: torch.device, img_size: int) -> Data:
    """In-memory device batches for small datasets, DataLoaders otherwise."""
    d, t = cfg.data, cfg.train
    if d.name == "imagefolder":
        root = d.root or D.default_root("imagefolder")
        train_ds = D.imagefolder(root, True, img_size, d.augment)
        test_ds = D.imagefolder(root, False, img_size, "none")
        return _loader_data(train_ds, test_ds, cfg)
    train = D.load_arrays(d.name, d.root, True, d.train_per_class)
    test = D.load_arrays(d.name, d.root, False, d.test_per_class)
    if d.in_memory and d.augment in ("none", "crop_flip"):
        aug = d.augment == "crop_flip"
        tr = D.DeviceLoader(train, t.batch_size, device, True, t.seed, d.crop_padding if aug else 0, d.hflip and aug)
        te = D.DeviceLoader(test, t.eval_batch_size, device, False)
        return Data(tr.batches, len(tr), te.__iter__, len(train), len(test))
    train_ds = D.ArrayImageDataset(train, D.small_image_transform(True, train, d.augment, d.crop_padding, d.hflip))
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
def evaluate(model: torch.nn.Module, batches, device: torch.device, dtype: torch.dtype | None = None,
             dist: "Dist | None" = None) -> dict:
    """Top-1/top-5 error (%) and mean loss over all batches; under DDP each rank takes a slice of
    every batch and the counts are summed across ranks."""
    dist = dist or Dist()
    r, w = dist.rank, dist.world
    counts = torch.zeros(4, device=device, dtype=torch.float64)  # top1 hits, top5 hits, loss, n
    model.eval()
    for x, y in batches:
        x, y = x[r::w].to(device, non_blocking=True), y[r::w].to(device, non_blocking=True)
        with autocast(device, dtype):
            out = model(x)
        out = out.float()
        hits = out.topk(min(5, out.shape[1]), dim=1).indices == y[:, None]
        counts += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), F.cross_entropy(out, y, reduction="sum"),
                               torch.tensor(len(y), device=device)]).double()
    top1, top5, loss, n = dist.reduce(counts).tolist()
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
    key = f"{cfg.model.preset}|{cfg.model.stem}|{cfg.model.local_mlp}|{cfg.train.batch_size}|" \
          f"{tuple(sample[0].shape[1:])}|{torch.get_num_threads()}|{torch.__version__}"
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


class Trainer:
    """One run. `run()` trains (resuming when the run directory has a checkpoint) and returns the
    result record; `request_stop()` (e.g. from a preemption signal) makes the loop checkpoint at the
    next step boundary and raise Stopped. Under torch.distributed it trains with DDP: each rank takes
    its slice of every global batch, and rank 0 alone writes the run directory."""

    def __init__(self, cfg: RunConfig, out: str | Path, stop_at_step: int | None = None):
        self.cfg = copy.deepcopy(cfg)
        self.out = Path(out)
        self.stop_at_step = stop_at_step  # checkpoint and stop once this many steps are done
        self._stop = False
        self.dist = Dist.current()
        self.progress = "none"

    def request_stop(self) -> None:
        self._stop = True

    def log(self, text: str) -> None:
        if not self.dist.main:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        rundir.log_line(self.out, line)
        if self.progress != "none":
            print(line, file=sys.stderr if self.progress == "bar" else sys.stdout, flush=True)

    def _progress_mode(self) -> str:
        mode = self.cfg.train.progress
        if mode == "auto":
            return "bar" if sys.stderr.isatty() else "lines"
        return mode if self.dist.main else "none"

    def run(self) -> dict:
        saved_cfg = rundir.prepare(self.out, self.cfg)
        existing = rundir.read_result(self.out)
        if existing and existing.get("status") in ("completed", "diverged"):
            return existing
        self.progress = self._progress_mode()
        try:
            return self._run(saved_cfg)
        except (Stopped, KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
            if self.dist.main:
                rundir.log_line(self.out, f"failed: {reason}")
                rundir.write_json(self.out / rundir.RESULT, {"status": "failed", "reason": reason})
            raise

    # -- set-up --------------------------------------------------------------------------------
    def _setup(self, saved_cfg: RunConfig) -> None:
        cfg, dist = self.cfg, self.dist
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        device = resolve_device(cfg.train.device)
        if device.type == "cuda" and dist.world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.rank % torch.cuda.device_count())))
            torch.cuda.set_device(device)
        seed_everything(cfg.train.seed)
        model = build_model(cfg).to(device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.device, self.model = device, model
        self.data = build_data(cfg, device, model.img_size)
        if self.data.steps_per_epoch < 1:
            raise ConfigError(f"train.batch_size {cfg.train.batch_size} exceeds the "
                              f"{self.data.num_train} training images")
        if cfg.train.batch_size % dist.world:
            raise ConfigError(f"train.batch_size {cfg.train.batch_size} must divide among {dist.world} processes")

        # Precision: a resumed run keeps the one it started with; ranks follow rank 0.
        precision = saved_cfg.train.precision
        if precision == "auto":
            x, y = next(iter(self.data.train_batches(0, 0)))
            precision = choose_precision(cfg, model, device, (x.to(device), y.to(device)))
        cfg.train.precision = dist.broadcast(precision)
        self.dtype = torch.bfloat16 if cfg.train.precision == "bf16" else None
        if dist.main:
            rundir.write_atomic(self.out / rundir.CONFIG, cfg.to_yaml().encode())

        from analysis.models import complexity

        self.cx = complexity(model, model.img_size, model.in_chans)
        self.net = model
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.opt = make_optimizer(model, cfg)
        self.ema = None
        if cfg.train.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=cfg.train.ema_decay)
        self.mixup = None
        if cfg.train.mixup or cfg.train.cutmix:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=cfg.train.mixup, cutmix_alpha=cfg.train.cutmix,
                               label_smoothing=cfg.train.label_smoothing, num_classes=model.num_classes)

    def _state(self, epoch: int, batch: int, step: int, best: float, acc: dict, elapsed: float) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                **({"ema": self.ema.module.state_dict()} if self.ema is not None else {}),
                "epoch": epoch, "batch": batch, "step": step, "best": best,
                "epoch_acc": json.dumps(acc), "elapsed": elapsed}

    def _save(self, state: dict) -> None:
        if self.dist.main:
            rundir.save_checkpoint(self.out, state)
        self.dist.barrier()

    def _evaluate(self, model: torch.nn.Module) -> dict:
        return evaluate(model, self.data.test_batches(), self.device, self.dtype, self.dist)

    def _agree(self, bad_step: torch.Tensor, check: bool, due: bool) -> tuple[int | None, bool, bool]:
        """(first non-finite step or None, stop?, checkpoint due?), the same on every rank."""
        if self.dist.world == 1:
            bad = int(bad_step.item()) if check else -1
            return (bad if bad >= 0 else None), self._stop, due
        total = torch.iinfo(torch.long).max
        flags = torch.stack([torch.where(bad_step >= 0, -bad_step, -total),
                             torch.tensor(int(self._stop), device=self.device),
                             torch.tensor(int(due), device=self.device)])
        neg_first, stop, due = self.dist.reduce(flags, "max").tolist()
        return (-neg_first if neg_first > -total else None), bool(stop), bool(due)

    # -- the loop ------------------------------------------------------------------------------
    def _run(self, saved_cfg: RunConfig) -> dict:
        self._setup(saved_cfg)
        cfg, dist, device = self.cfg, self.dist, self.device
        steps = self.data.steps_per_epoch
        total = steps * cfg.train.epochs
        warmup = int(round(cfg.optim.warmup_epochs * steps))
        base_lr = cfg.effective_lr()
        epoch, start, step, best = 0, 0, 0, math.inf
        acc = {"loss": 0.0, "n": 0, "seconds": 0.0}
        ckpt = rundir.load_checkpoint(self.out, map_location=device)
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            if self.ema is not None and "ema" in ckpt:
                self.ema.module.load_state_dict(ckpt["ema"])
            epoch, start, step, best = ckpt["epoch"], ckpt["batch"], ckpt["step"], ckpt["best"]
            acc = json.loads(ckpt["epoch_acc"])
            if dist.main:
                rundir.truncate_metrics(self.out, epoch)
            self.log(f"resumed at epoch {epoch + 1}, batch {start}, step {step}")
        else:
            if dist.main:
                rundir.truncate_metrics(self.out, 0)
            self.log(f"start {cfg.model.preset} stem={getattr(self.model, 'stem_name', '-')} {cfg.optim.name} "
                     f"lr={base_lr:.3g} wd={cfg.optim.weight_decay:.3g} epochs={cfg.train.epochs} "
                     f"batch={cfg.train.batch_size} precision={cfg.train.precision} device={device} "
                     f"processes={dist.world} params={self.cx['params'] / 1e6:.2f}M "
                     f"flops={self.cx['flops'] / 1e6:.1f}M")
        run_start = time.time() - (ckpt["elapsed"] if ckpt else 0.0)
        last_save = time.monotonic()
        r, w = dist.rank, dist.world

        while epoch < cfg.train.epochs:
            self.net.train()
            loss_sum = torch.zeros((), device=device)
            bad_step = torch.full((), -1, device=device, dtype=torch.long)
            seen, t0 = 0, time.perf_counter()
            lr = base_lr * lr_factor(step, total, warmup)
            bar = None
            if self.progress == "bar":
                from tqdm.auto import tqdm

                bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False)
            for i, (x, y) in enumerate(self.data.train_batches(epoch, start), start):
                if w > 1:
                    x, y = x[r::w], y[r::w]
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if cfg.train.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                if self.mixup is not None:
                    seed_everything(D.batch_seed(cfg.train.seed, epoch, i) + r)  # mixup's numpy draws
                    x, y = self.mixup(x, y)
                lr = base_lr * lr_factor(step, total, warmup)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                with autocast(device, self.dtype):
                    out = self.net(x)
                out = out.float()
                if self.mixup is not None:
                    loss = torch.sum(-y * F.log_softmax(out, dim=-1), dim=-1).mean()
                else:
                    loss = F.cross_entropy(out, y, label_smoothing=cfg.train.label_smoothing)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.clip_grad:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad)
                self.opt.step()
                if self.ema is not None:
                    self.ema.update(self.model, step=step)
                loss = loss.detach()
                loss_sum += loss
                bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), step, bad_step)
                step, seen = step + 1, seen + 1
                if bar is not None:
                    bar.update(1)
                if self.stop_at_step is not None and step >= self.stop_at_step:
                    self._stop = True
                # Host checks: non-finite loss every CHECK_EVERY steps (a device sync); a stop or a
                # timed checkpoint at once, but under DDP only at those steps so that ranks agree.
                check = step % CHECK_EVERY == 0 or i == steps - 1
                due = bool(cfg.train.checkpoint_minutes) and \
                    time.monotonic() - last_save > 60 * cfg.train.checkpoint_minutes
                if check or (w == 1 and (self._stop or due)):
                    first_bad, stop, due = self._agree(bad_step, check, due)
                    if first_bad is not None:
                        return self._diverged(epoch, first_bad, run_start)
                    if stop or due:
                        acc["loss"] += dist.reduce(loss_sum.clone()).item() / w
                        acc["n"] += seen
                        acc["seconds"] += time.perf_counter() - t0
                        loss_sum.zero_()
                        seen, start, t0 = 0, i + 1, time.perf_counter()
                        self._save(self._state(epoch, start, step, best, acc, time.time() - run_start))
                        last_save = time.monotonic()
                        if stop:
                            self.log(f"stopped and checkpointed at epoch {epoch + 1}, batch {start}, step {step}")
                            raise Stopped()
            if bar is not None:
                bar.close()
            acc["loss"] += dist.reduce(loss_sum.clone()).item() / w
            acc["n"] += seen
            acc["seconds"] += time.perf_counter() - t0
            test = self._evaluate(self.model)
            ema_test = self._evaluate(self.ema.module) if self.ema is not None else None
            best = min(best, test["top1_err"])
            epoch, start = epoch + 1, 0
            row = {"epoch": epoch, "step": step, "train_loss": acc["loss"] / max(acc["n"], 1),
                   "test_top1_err": test["top1_err"], "test_top5_err": test["top5_err"],
                   "ema_top1_err": ema_test["top1_err"] if ema_test else None,
                   "ema_top5_err": ema_test["top5_err"] if ema_test else None,
                   "lr": lr, "seconds": acc["seconds"],
                   "images_per_s": acc["n"] * cfg.train.batch_size / max(acc["seconds"], 1e-9),
                   "elapsed": time.time() - run_start}
            if dist.main:
                rundir.append_metrics(self.out, row)
            acc = {"loss": 0.0, "n": 0, "seconds": 0.0}
            self._save(self._state(epoch, 0, step, best, acc, time.time() - run_start))
            last_save = time.monotonic()
            self.log(f"epoch {epoch}/{cfg.train.epochs} loss {row['train_loss']:.4f} "
                     f"test err {test['top1_err']:.2f}% "
                     + (f"ema err {ema_test['top1_err']:.2f}% " if ema_test else "")
                     + f"lr {lr:.3g} {row['images_per_s']:.0f} img/s")
            if not math.isfinite(row["train_loss"]):
                return self._diverged(epoch - 1, step, run_start)
        return self._finish(run_start)

    def _diverged(self, epoch: int, bad_step: int, run_start: float) -> dict:
        result = rundir.diverged_result(epoch, bad_step, self.cx, time.time() - run_start)
        self.log(f"diverged: {result['reason']}")
        if self.dist.main:
            rundir.write_json(self.out / rundir.RESULT, result)
        self.dist.barrier()
        return result

    def _finish(self, run_start: float) -> dict:
        rows = self.dist.broadcast(rundir.read_metrics(self.out) if self.dist.main else [])
        result = {**rundir.completed_result(rows, self.cx, time.time() - run_start), "processes": self.dist.world}
        if self.dist.main:
            rundir.write_json(self.out / rundir.RESULT, result)
        self.log(f"done: test err {result['top1_err']:.2f}% (best {result['best_top1_err']:.2f}%) "
                 f"in {result['seconds']:.0f}s")
        self.dist.barrier()
        return result


def train(cfg: RunConfig, out: str | Path) -> dict:
    """Train one run into `out` (resuming if it holds a checkpoint); return the result record."""
    return Trainer(cfg, out).run()

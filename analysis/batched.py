"""Batched sweeps: K runs of one architecture trained at once in one process.

    results = train_group([cfg_a, cfg_b, cfg_c], ["runs/a", "runs/b", "runs/c"])

The runs share the model, data, schedule, epochs and batch size; they may differ in lr, weight
decay, seed, momentum and AdamW betas (`VARYING`). The K weight sets live in one (K, P) tensor;
the forward pass is `torch.func.vmap` over `functional_call` of one module (so BatchNorm keeps
per-run statistics: the buffers are stacked too; attention takes the explicit softmax path), and the optimizer step (AdamW or SGD with
momentum, decoupled/L2 decay only where the engine decays) is a few whole-tensor ops with per-run
lr and decay as (K, 1) tensors. Each run draws its batches from `analysis.data.DeviceLoader` with
its own seed, so it sees exactly the batches its solo run (`analysis.train.train`) would.

Every run writes its own run directory in the engine's format (config.yaml, metrics.jsonl,
checkpoint.pt with a torch optimizer state dict, result.json, log.txt), so a group can resume
from engine checkpoints and the engine (and the analyses) can load a group's. In metrics rows,
`seconds` is the group's epoch wall time and `images_per_s` this run's images over that time
(the group's throughput is the sum over its runs). A run whose loss turns non-finite is marked
diverged and dropped from the group; the others continue.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from analysis import data as D
from analysis import rundir
from analysis.config import RunConfig
from analysis.errors import ConfigError
from analysis.models import set_fused_attn
from analysis.train import (CHECK_EVERY, Stopped, autocast, build_model, choose_precision, lr_factor,
                            make_optimizer, resolve_device, seed_everything)

# Keys that may differ between the runs of a group; every other key must be equal.
VARYING = ("optim.lr", "optim.weight_decay", "optim.momentum", "optim.beta1", "optim.beta2", "train.seed")
# Keys that do not change what a run computes (taken from the first run).
IGNORED = ("train.progress", "train.checkpoint_minutes", "train.threads", "train.precision")
ADAM_EPS = 1e-8  # torch.optim.AdamW's default, as the engine's optimizer uses


def check_compatible(cfgs: list[RunConfig]) -> None:
    """Raise ConfigError (one line, naming the key) unless the configs can train as one group."""
    if not cfgs:
        raise ConfigError("train_group needs at least one run config")
    first = cfgs[0].flat()
    for i, cfg in enumerate(cfgs[1:], 1):
        other = cfg.flat()
        for key in first:
            if key in VARYING or key in IGNORED:
                continue
            if other[key] != first[key]:
                raise ConfigError(f"runs 0 and {i} cannot train as one group: {key} differs "
                                  f"({first[key]!r} vs {other[key]!r}); a group may differ only in "
                                  f"{', '.join(VARYING)}")
    precisions = {c.train.precision for c in cfgs} - {"auto"}
    if len(precisions) > 1:
        raise ConfigError(f"runs cannot train as one group: train.precision differs ({sorted(precisions)})")
    d = cfgs[0].data
    if d.name == "imagefolder" or not d.in_memory or d.augment not in ("none", "crop_flip"):
        raise ConfigError("batched training needs the in-memory data path: data.name fashion_mnist/cifar10/"
                          f"cifar100, data.in_memory true, data.augment none or crop_flip (got {d.name}, "
                          f"in_memory={d.in_memory}, augment={d.augment})")


class Member:
    """One run of a group: its config, directory, log and per-run bookkeeping."""

    def __init__(self, index: int, cfg: RunConfig, out: str | Path):
        self.index = index
        self.cfg = cfg
        self.out = Path(out)
        self.progress = "none"
        self.result: dict | None = None
        self.acc = {"loss": 0.0, "n": 0, "seconds": 0.0}
        self.best = math.inf
        self.run_start = time.time()
        self.ckpt: dict | None = None

    def log(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        rundir.log_line(self.out, line)
        if self.progress != "none":
            print(f"{self.out.name}: {line}", file=sys.stderr if self.progress == "bar" else sys.stdout,
                  flush=True)

    def prepare(self) -> RunConfig:
        """Create the run dir, or check that an existing one holds the same config; return the saved config."""
        return rundir.prepare(self.out, self.cfg)

    def finish(self, cx: dict) -> dict:
        """Write and return the completed result (the engine's record)."""
        self.result = rundir.completed_result(rundir.read_metrics(self.out), cx, time.time() - self.run_start)
        rundir.write_json(self.out / rundir.RESULT, self.result)
        self.log(f"done: test err {self.result['top1_err']:.2f}% (best {self.result['best_top1_err']:.2f}%) "
                 f"in {self.result['seconds']:.0f}s")
        return self.result

    def diverged(self, epoch: int, bad_step: int, cx: dict) -> dict:
        """Write and return the diverged result (the engine's record)."""
        self.result = rundir.diverged_result(epoch, bad_step, cx, time.time() - self.run_start)
        self.log(f"diverged: {self.result['reason']}")
        rundir.write_json(self.out / rundir.RESULT, self.result)
        return self.result


class Stack:
    """K runs' state as whole tensors: weights (K, P), optimizer moments, buffers, EMA."""

    def __init__(self, template: torch.nn.Module, cfgs: list[RunConfig], models: list[torch.nn.Module],
                 device: torch.device):
        self.template = template  # owns the real parameters: optimizer state dicts refer to it
        # functional_call runs on a copy: restoring aliased parameters (stem.first_conv) after a
        # call leaves plain tensors in the module it ran on
        self.base = copy.deepcopy(template)
        # explicit attention: scaled_dot_product_attention has no vmap batching rule on the CPU
        # (it falls back to a loop over runs); the explicit path batches (measured in benchmarks/)
        set_fused_attn(self.base, False)
        self.names = [n for n, _ in template.named_parameters()]
        self.shapes = [p.shape for _, p in template.named_parameters()]
        self.sizes = [p.numel() for _, p in template.named_parameters()]
        self.buffer_names = [n for n, _ in template.named_buffers()]
        # state-dict key -> parameter/buffer name (a module may hold aliases, e.g. stem.first_conv)
        by_id = {id(t): n for n, t in [*template.named_parameters(), *template.named_buffers()]}
        self.state_keys = {k: by_id[id(t)] for k, t in template.state_dict(keep_vars=True).items()}
        # the engine's decay rule, read back per parameter (with wd 0 timm makes a single group)
        opt = make_optimizer(template, cfgs[0].replace({"optim.weight_decay": 1.0}))
        decayed = {id(p) for g in opt.param_groups if g["weight_decay"] for p in g["params"]}
        params = dict(template.named_parameters())
        self.mask = torch.cat([torch.full((n,), float(id(params[name]) in decayed), device=device)
                               for name, n in zip(self.names, self.sizes)])
        o = cfgs[0].optim
        self.kind, self.nesterov = o.name, o.nesterov
        self.device = device
        with torch.no_grad():
            self.flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()])
                                     for m in models]).to(device)
            self.buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models]).to(device)
                            for n in self.buffer_names}
        self.flat.requires_grad_(True)
        self.m = torch.zeros_like(self.flat, requires_grad=False)
        self.v = torch.zeros_like(self.m) if self.kind == "adamw" else None
        self.t = 0  # AdamW step count (all runs step together)
        self.set_hyper(cfgs)
        self.ema: tuple[torch.Tensor, dict] | None = None
        if cfgs[0].train.ema_decay:
            self.ema = (self.flat.detach().clone(), {n: b.clone() for n, b in self.buffers.items()})

    def set_hyper(self, cfgs: list[RunConfig]) -> None:
        """Per-run peak lr, weight decay, momentum and betas as (K, 1) tensors."""
        def col(values):
            return torch.tensor(values, dtype=torch.float32, device=self.device)[:, None]

        self.base_lr = col([c.effective_lr() for c in cfgs])
        self.decay = col([c.optim.weight_decay for c in cfgs]) * self.mask[None, :]
        self.momentum = col([c.optim.momentum for c in cfgs])
        self.beta1 = col([c.optim.beta1 for c in cfgs])
        self.beta2 = col([c.optim.beta2 for c in cfgs])

    def keep(self, rows: list[int], cfgs: list[RunConfig]) -> None:
        """Drop every run but `rows` (indices into the current stack)."""
        idx = torch.tensor(rows, device=self.device)
        with torch.no_grad():
            self.flat = self.flat.detach().index_select(0, idx).requires_grad_(True)
            self.m = self.m.index_select(0, idx)
            self.v = self.v.index_select(0, idx) if self.v is not None else None
            self.buffers = {n: b.index_select(0, idx) for n, b in self.buffers.items()}
            if self.ema is not None:
                self.ema = (self.ema[0].index_select(0, idx), {n: b.index_select(0, idx) for n, b in self.ema[1].items()})
        self.set_hyper(cfgs)

    def tensors(self, flat: torch.Tensor, buffers: dict) -> dict:
        """Name -> stacked (K, *shape) tensor for functional_call (views of `flat`)."""
        k = flat.shape[0]
        views = {n: t.view(k, *s) for n, t, s in zip(self.names, flat.split(self.sizes, dim=1), self.shapes)}
        return {**views, **buffers}

    def forward(self, x: torch.Tensor, shared_input: bool = False, ema: bool = False) -> torch.Tensor:
        """Logits (K, B, classes) of every run; x is (K, B, ...) or, with shared_input, (B, ...)."""
        flat, buffers = self.ema if ema else (self.flat, self.buffers)
        state = self.tensors(flat, buffers)

        def one(s, xi):
            return functional_call(self.base, s, (xi,))

        return vmap(one, in_dims=(0, None if shared_input else 0), randomness="different")(state, x)

    @torch.no_grad()
    def step(self, lr_scale: float, clip: float | None) -> None:
        """One optimizer step of every run (lr = base lr x lr_scale), the engine's formulas."""
        p, g = self.flat, self.flat.grad
        if clip:
            norms = g.norm(dim=1, keepdim=True)
            g.mul_((clip / (norms + 1e-6)).clamp(max=1.0))
        lr = self.base_lr * lr_scale
        if self.kind == "adamw":
            self.t += 1
            p.mul_(1 - lr * self.decay)
            self.m.lerp_(g, 1 - self.beta1)
            self.v.mul_(self.beta2).addcmul_(g, g * (1 - self.beta2))
            step_size = lr / (1 - self.beta1 ** self.t)
            denom = (self.v.sqrt() / (1 - self.beta2 ** self.t).sqrt()).add_(ADAM_EPS)
            p.sub_(step_size * self.m / denom)
        else:
            d = g.add(p * self.decay)
            self.m.mul_(self.momentum).add_(d)  # zero-initialised buffer == torch's first-step copy
            p.sub_(lr * (d + self.momentum * self.m if self.nesterov else self.m))

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """timm ModelEmaV3's update: lerp float weights and buffers, copy integer buffers."""
        flat, buffers = self.ema
        flat.lerp_(self.flat.detach(), 1.0 - decay)
        for n, b in buffers.items():
            if b.is_floating_point():
                b.lerp_(self.buffers[n], 1.0 - decay)
            else:
                b.copy_(self.buffers[n])

    # -- engine-format state per run ------------------------------------------------------------
    def _state_dict(self, row: int, flat: torch.Tensor, buffers: dict) -> dict:
        views = self.tensors(flat[row:row + 1].detach(), {n: b[row:row + 1] for n, b in buffers.items()})
        return {k: views[n][0].clone() for k, n in self.state_keys.items()}

    def model_state(self, row: int) -> dict:
        return self._state_dict(row, self.flat, self.buffers)

    def ema_state(self, row: int) -> dict:
        return self._state_dict(row, *self.ema)

    def optimizer_state(self, row: int, opt: torch.optim.Optimizer, lr: float) -> dict:
        """The torch optimizer state dict the engine would have saved for this run."""
        params = dict(self.template.named_parameters())
        m = dict(zip(self.names, self.m[row].split(self.sizes)))
        v = dict(zip(self.names, self.v[row].split(self.sizes))) if self.v is not None else {}
        opt.state.clear()
        for name, shape in zip(self.names, self.shapes):
            if self.kind == "adamw":
                opt.state[params[name]] = {"step": torch.tensor(float(self.t)),
                                           "exp_avg": m[name].view(shape).clone(),
                                           "exp_avg_sq": v[name].view(shape).clone()}
            else:
                opt.state[params[name]] = {"momentum_buffer": m[name].view(shape).clone()}
        for group in opt.param_groups:
            group["lr"] = lr
        state = opt.state_dict()
        opt.state.clear()
        return state

    @torch.no_grad()
    def load_run(self, row: int, ckpt: dict, opt: torch.optim.Optimizer) -> None:
        """Fill run `row` from an engine checkpoint (model, optimizer, EMA)."""
        model = ckpt["model"]
        self.flat[row] = torch.cat([model[n].reshape(-1).to(self.flat) for n in self.names])
        for n in self.buffer_names:
            self.buffers[n][row] = model[n]
        if self.ema is not None and "ema" in ckpt:
            self.ema[0][row] = torch.cat([ckpt["ema"][n].reshape(-1).to(self.flat) for n in self.names])
            for n in self.buffer_names:
                self.ema[1][n][row] = ckpt["ema"][n]
        opt.load_state_dict(ckpt["optimizer"])
        params = dict(self.template.named_parameters())
        moments, second = [], []
        for name in self.names:
            st = opt.state.get(params[name], {})
            first = st.get("exp_avg" if self.kind == "adamw" else "momentum_buffer")
            moments.append((first if first is not None else torch.zeros(params[name].shape)).reshape(-1))
            if self.kind == "adamw":
                second.append(st.get("exp_avg_sq", torch.zeros(params[name].shape)).reshape(-1))
                if "step" in st:
                    self.t = int(float(st["step"]))
        self.m[row] = torch.cat(moments).to(self.m)
        if self.v is not None:
            self.v[row] = torch.cat(second).to(self.v)
        opt.state.clear()


def _loss(out: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Per-run mean loss (K,) of logits (K, B, C) against labels (K, B) or soft targets (K, B, C)."""
    k, b, c = out.shape
    if y.ndim == 3:
        return torch.sum(-y * F.log_softmax(out, dim=-1), dim=-1).mean(dim=1)
    return F.cross_entropy(out.reshape(k * b, c), y.reshape(-1), label_smoothing=smoothing,
                           reduction="none").view(k, b).mean(dim=1)


@torch.no_grad()
def _evaluate(stack: Stack, loader: D.DeviceLoader, dtype, ema: bool = False) -> list[dict]:
    """Per-run top-1/top-5 error (%) and mean loss on the shared test batches."""
    stack.base.eval()
    k = stack.flat.shape[0]
    top1 = torch.zeros(k, device=stack.device)
    top5 = torch.zeros(k, device=stack.device)
    loss = torch.zeros(k, device=stack.device)
    n = 0
    for x, y in loader:
        with autocast(stack.device, dtype):
            out = stack.forward(x, shared_input=True, ema=ema)
        out = out.float()
        loss += F.cross_entropy(out.reshape(-1, out.shape[-1]), y.repeat(k), reduction="none").view(k, -1).sum(1)
        hits = out.topk(min(5, out.shape[-1]), dim=-1).indices == y[None, :, None]
        top1 += hits[..., 0].sum(1)
        top5 += hits.any(dim=-1).sum(1)
        n += len(y)
    return [{"top1_err": 100.0 * (1 - a / n), "top5_err": 100.0 * (1 - b / n), "loss": c / n}
            for a, b, c in zip(top1.tolist(), top5.tolist(), loss.tolist())]


def train_group(cfgs: list[RunConfig], outs: list[str | Path], stop_at_step: int | None = None) -> list[dict]:
    """Train compatible runs at once, each into its own run directory; return their result records
    in order. Finished runs are not trained again; the others resume from their checkpoints (runs
    whose checkpoints sit at different points train as separate groups). `stop_at_step`: checkpoint
    every run and raise analysis.train.Stopped once that many steps are done (as the engine's)."""
    if len(cfgs) != len(outs):
        raise ConfigError(f"train_group got {len(cfgs)} configs but {len(outs)} output folders")
    if len({str(Path(o).resolve()) for o in outs}) != len(outs):
        raise ConfigError("train_group needs a distinct output folder per run")
    check_compatible(cfgs)
    members = [Member(i, cfg, out) for i, (cfg, out) in enumerate(zip(cfgs, outs))]
    saved = [m.prepare() for m in members]
    todo = []
    for m, s in zip(members, saved):
        existing = rundir.read_result(m.out)
        if existing and existing.get("status") in ("completed", "diverged"):
            m.result = existing
        else:
            m.saved_precision = s.train.precision
            todo.append(m)
    cfg0 = cfgs[0]
    device = resolve_device(cfg0.train.device)
    for m in todo:
        m.ckpt = rundir.load_checkpoint(m.out, map_location=device)
    groups = defaultdict(list)
    for m in todo:
        groups[(m.ckpt["epoch"], m.ckpt["batch"]) if m.ckpt else (0, 0)].append(m)
    for _, group in sorted(groups.items()):
        try:
            _train(group, device, stop_at_step)
        except (Stopped, KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
            for m in group:
                if m.result is None:
                    rundir.log_line(m.out, f"failed: {reason}")
                    rundir.write_json(m.out / rundir.RESULT, {"status": "failed", "reason": reason})
            raise
    return [m.result for m in members]


def _progress(cfg: RunConfig) -> str:
    mode = cfg.train.progress
    return ("bar" if sys.stderr.isatty() else "lines") if mode == "auto" else mode


def _train(members: list[Member], device: torch.device, stop_at_step: int | None) -> None:
    """Train one group whose runs all start at the same (epoch, batch); sets each member's result."""
    cfg = members[0].cfg
    t, d = cfg.train, cfg.data
    if t.threads:
        torch.set_num_threads(t.threads)
    models = []
    for i, m in enumerate(members):
        m.index_in_group = i  # row in `loaders` and `opts`
        seed_everything(m.cfg.train.seed)
        models.append(build_model(m.cfg).to(device))
        m.progress = _progress(m.cfg)
    template = models[0]
    img_size, in_chans = template.img_size, template.in_chans

    train_arrays = D.load_arrays(d.name, d.root, True, d.train_per_class)
    test_arrays = D.load_arrays(d.name, d.root, False, d.test_per_class)
    aug = d.augment == "crop_flip"
    first = D.DeviceLoader(train_arrays, t.batch_size, device, True, members[0].cfg.train.seed,
                           d.crop_padding if aug else 0, d.hflip and aug)
    loaders = []
    for m in members:  # share the uint8 tensors; only the seed differs
        loader = copy.copy(first)
        loader.seed = m.cfg.train.seed
        loaders.append(loader)
    test_loader = D.DeviceLoader(test_arrays, t.eval_batch_size, device, False)

    precision = members[0].saved_precision
    if precision == "auto":
        sample = next(first.batches(0, 0))
        precision = choose_precision(cfg, template, device, sample)
    for m in members:
        m.cfg.train.precision = precision
        rundir.write_atomic(m.out / rundir.CONFIG, m.cfg.to_yaml().encode())
    dtype = torch.bfloat16 if precision == "bf16" else None

    from analysis.models import complexity

    cx = complexity(template, img_size, in_chans)
    stack = Stack(template, [m.cfg for m in members], models, device)
    del models[1:]
    opts = [make_optimizer(template, m.cfg) for m in members]
    mixup = None
    if t.mixup or t.cutmix:
        from timm.data import Mixup

        mixup = Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, label_smoothing=t.label_smoothing,
                      num_classes=template.num_classes)

    steps = len(first)
    if steps < 1:
        raise ConfigError(f"train.batch_size {t.batch_size} exceeds the {len(train_arrays)} training images")
    total = steps * t.epochs
    warmup = int(round(cfg.optim.warmup_epochs * steps))
    epoch, start, step = 0, 0, 0
    ckpt = members[0].ckpt
    if ckpt is not None:
        epoch, start, step = ckpt["epoch"], ckpt["batch"], ckpt["step"]
        for row, (m, opt) in enumerate(zip(members, opts)):
            stack.load_run(row, m.ckpt, opt)
            m.acc, m.best = json.loads(m.ckpt["epoch_acc"]), m.ckpt["best"]
            m.run_start = time.time() - m.ckpt["elapsed"]
            rundir.truncate_metrics(m.out, epoch)
            m.log(f"resumed at epoch {epoch + 1}, batch {start}, step {step} (batched, {len(members)} runs)")
            m.ckpt = None
    else:
        for m in members:
            rundir.truncate_metrics(m.out, 0)
            m.log(f"start {cfg.model.preset} stem={getattr(template, 'stem_name', '-')} {cfg.optim.name} "
                  f"lr={m.cfg.effective_lr():.3g} wd={m.cfg.optim.weight_decay:.3g} epochs={t.epochs} "
                  f"batch={t.batch_size} precision={precision} device={device} "
                  f"params={cx['params'] / 1e6:.2f}M flops={cx['flops'] / 1e6:.1f}M (batched, {len(members)} runs)")

    active = list(members)
    last_save = time.monotonic()

    def save(batch_in_epoch: int, lr_scale: float) -> None:
        for row, m in enumerate(active):
            state = {"model": stack.model_state(row),
                     "optimizer": stack.optimizer_state(row, opts[m.index_in_group], m.cfg.effective_lr() * lr_scale),
                     **({"ema": stack.ema_state(row)} if stack.ema is not None else {}),
                     "epoch": epoch, "batch": batch_in_epoch, "step": step, "best": m.best,
                     "epoch_acc": json.dumps(m.acc), "elapsed": time.time() - m.run_start}
            rundir.save_checkpoint(m.out, state)

    def drop(bad: list[int], at_epoch: int, bad_steps: list[int]) -> None:
        """Mark runs diverged and remove them from the stack."""
        nonlocal active, loss_sum, bad_step
        for row, s in zip(bad, bad_steps):
            active[row].diverged(at_epoch, s, cx)
        rows = [r for r in range(len(active)) if r not in bad]
        active = [active[r] for r in rows]
        if active:
            stack.keep(rows, [m.cfg for m in active])
            idx = torch.tensor(rows, device=device)
            loss_sum, bad_step = loss_sum.index_select(0, idx), bad_step.index_select(0, idx)

    stop = False
    while epoch < t.epochs and active:
        stack.base.train()
        loss_sum = torch.zeros(len(active), device=device)
        bad_step = torch.full((len(active),), -1, device=device, dtype=torch.long)
        t0 = time.perf_counter()
        iters = [loaders[m.index_in_group].batches(epoch, start) for m in active]
        seen = 0
        lr_scale = lr_factor(step, total, warmup)
        for i in range(start, steps):
            pairs = [next(it) for it in iters]
            if mixup is not None:
                mixed = []
                for m, (x, y) in zip(active, pairs):
                    seed_everything(D.batch_seed(m.cfg.train.seed, epoch, i))  # mixup's numpy draws
                    mixed.append(mixup(x, y))
                pairs = mixed
            x = torch.stack([p[0] for p in pairs])
            y = torch.stack([p[1] for p in pairs])
            lr_scale = lr_factor(step, total, warmup)
            with autocast(device, dtype):
                out = stack.forward(x)
            loss = _loss(out.float(), y, t.label_smoothing)
            stack.flat.grad = None
            loss.sum().backward()
            stack.step(lr_scale, cfg.optim.clip_grad)
            if stack.ema is not None:
                stack.update_ema(0.0 if step - 1 <= 0 else t.ema_decay)  # ModelEmaV3.get_decay(step)
            loss = loss.detach()
            loss_sum += loss
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), step, bad_step)
            step += 1
            seen += 1
            if stop_at_step is not None and step >= stop_at_step:
                stop = True
            if step % CHECK_EVERY == 0 or i == steps - 1 or stop:
                bad = [r for r, s in enumerate(bad_step.tolist()) if s >= 0]
                if bad:
                    drop(bad, epoch, [int(bad_step[r]) for r in bad])
                    if not active:
                        break
                    iters = [it for r, it in enumerate(iters) if r not in bad]
            if stop or (t.checkpoint_minutes and time.monotonic() - last_save > 60 * t.checkpoint_minutes):
                elapsed = time.perf_counter() - t0
                for m, s in zip(active, loss_sum.tolist()):
                    m.acc["loss"] += s
                    m.acc["n"] += seen
                    m.acc["seconds"] += elapsed
                loss_sum.zero_()
                seen, start, t0 = 0, i + 1, time.perf_counter()
                save(start, lr_scale)
                last_save = time.monotonic()
                if stop:
                    for m in active:
                        m.log(f"stopped and checkpointed at epoch {epoch + 1}, batch {start}, step {step}")
                    raise Stopped()
        if not active:
            break
        elapsed = time.perf_counter() - t0
        for m, s in zip(active, loss_sum.tolist()):
            m.acc["loss"] += s
            m.acc["n"] += seen
            m.acc["seconds"] += elapsed
        tests = _evaluate(stack, test_loader, dtype)
        emas = _evaluate(stack, test_loader, dtype, ema=True) if stack.ema is not None else [None] * len(active)
        epoch += 1
        start = 0
        lr_now = lr_scale
        diverged_now = []
        for row, (m, test, ema_test) in enumerate(zip(active, tests, emas)):
            train_loss = m.acc["loss"] / max(m.acc["n"], 1)
            m.best = min(m.best, test["top1_err"])
            seconds = m.acc["seconds"]
            row_ = {"epoch": epoch, "step": step, "train_loss": train_loss,
                    "test_top1_err": test["top1_err"], "test_top5_err": test["top5_err"],
                    "ema_top1_err": ema_test["top1_err"] if ema_test else None,
                    "ema_top5_err": ema_test["top5_err"] if ema_test else None,
                    "lr": m.cfg.effective_lr() * lr_now, "seconds": seconds,
                    "images_per_s": m.acc["n"] * t.batch_size / max(seconds, 1e-9),
                    "elapsed": time.time() - m.run_start}
            rundir.append_metrics(m.out, row_)
            m.acc = {"loss": 0.0, "n": 0, "seconds": 0.0}
            m.log(f"epoch {epoch}/{t.epochs} loss {train_loss:.4f} test err {test['top1_err']:.2f}% "
                  + (f"ema err {ema_test['top1_err']:.2f}% " if ema_test else "")
                  + f"lr {row_['lr']:.3g} {row_['images_per_s']:.0f} img/s (batched, {len(active)} runs)")
            if not math.isfinite(train_loss):
                diverged_now.append(row)
        save(0, lr_now)
        last_save = time.monotonic()
        if diverged_now:
            loss_sum = torch.zeros(len(active), device=device)
            bad_step = torch.zeros(len(active), device=device, dtype=torch.long)
            drop(diverged_now, epoch - 1, [step] * len(diverged_now))
    for m in active:
        m.finish(cx)

"""Fast paths, one switch at a time against the engine's default step, measured side by side.

Default step: fp32, fused attention, timm/torch AdamW with foreach, no host sync in the loop.
Switches: bf16 autocast; explicit attention; channels_last input and stem; AdamW fused / single
tensor; a host sync (loss.item()) every step; torch.compile (full mode: compile time and the
steps it takes to pay back). Data: in-memory batched augmentation (DeviceLoader) against a
per-sample DataLoader. Batched runs: K separate models against one vmap stack (explicit and
fused attention).
"""

from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F

from analysis.engine import data as D
from analysis.config import RunConfig
from analysis.models import create_model, set_fused_attn
from benchmarks.common import interleaved, ratios

INNER = 3  # training steps per timed call


def make_step(
    preset: str,
    batch: int,
    dtype=None,
    fused_attn=True,
    channels_last=False,
    optim="foreach",
    host_sync=False,
    compiled=False,
):
    """A callable running INNER training steps of a fresh model on a fixed random batch."""
    torch.manual_seed(0)
    model = create_model(preset, fused_attn=fused_attn)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    kw = {"foreach": optim == "foreach", "fused": optim == "fused"}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, **kw)
    x = torch.randn(batch, model.in_chans, model.img_size, model.img_size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, model.num_classes, (batch,))
    fwd = torch.compile(model) if compiled else model

    def step():
        for _ in range(INNER):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                out = fwd(x)
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if host_sync:
                loss.item()

    return step


def step_switches(preset: str, batch: int, repeats: int) -> dict:
    fns = {
        "default": make_step(preset, batch),
        "bf16_autocast": make_step(preset, batch, dtype=torch.bfloat16),
        "explicit_attention": make_step(preset, batch, fused_attn=False),
        "adamw_fused": make_step(preset, batch, optim="fused"),
        "adamw_single_tensor": make_step(preset, batch, optim="single"),
        "host_sync_every_step": make_step(preset, batch, host_sync=True),
    }
    if "_c_" in preset:
        fns["channels_last"] = make_step(preset, batch, channels_last=True)
    timed = interleaved(fns, repeats)
    return {
        "median_s_per_step": {k: v["median_s"] / INNER for k, v in timed.items()},
        "speedup_vs_default": ratios(timed, "default"),
    }


def compile_case(preset: str, batch: int, repeats: int) -> dict:
    """torch.compile: first-call (compile) time, steady step time, and the pay-back step count."""
    plain = make_step(preset, batch)
    comp = make_step(preset, batch, compiled=True)
    t0 = time.perf_counter()
    comp()
    first = time.perf_counter() - t0
    timed = interleaved({"default": plain, "compiled": comp}, repeats)
    gain = (timed["default"]["median_s"] - timed["compiled"]["median_s"]) / INNER
    return {
        "compile_first_call_s": first,
        "speedup_vs_default": ratios(timed, "default")["compiled"],
        "payback_steps": (first / gain) if gain > 0 else None,
    }


def data_paths(batch: int, per_class: int, repeats: int) -> dict:
    """One epoch of augmented batches: in-memory DeviceLoader against a per-sample DataLoader."""
    arrays = D.load_arrays("fashion_mnist", None, True, per_class)
    dev = D.DeviceLoader(arrays, batch, torch.device("cpu"), True, 0, 2, True)
    ds = D.ArrayImageDataset(arrays, D.small_image_transform(True, arrays, "crop_flip", 2, True))

    def device_epoch():
        for _ in dev.batches(0, 0):
            pass

    def loader_epoch():
        for _ in torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True):
            pass

    timed = interleaved({"dataloader_per_sample": loader_epoch, "device_batched": device_epoch}, repeats)
    n = len(dev) * batch
    return {
        "images_per_s": {k: n / v["median_s"] for k, v in timed.items()},
        "speedup": ratios(timed, "dataloader_per_sample")["device_batched"],
    }


def batched_runs(preset: str, batch: int, k: int, repeats: int) -> dict:
    """K training steps of K separate models against one step of the K runs through the stacked
    back-end (each run keeps its own AdamW), with explicit and with fused attention inside vmap."""
    from analysis.engine.backends import Dist, StackedBackend
    from analysis.engine.member import Member

    cfgs = [RunConfig().replace({"model.preset": preset, "train.seed": i}) for i in range(k)]
    models = [create_model(preset) for _ in range(k)]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-4, foreach=True) for m in models]
    x = torch.randn(k, batch, models[0].in_chans, models[0].img_size, models[0].img_size)
    y = torch.randint(0, 10, (k, batch))

    def separate():
        for m, o, xi, yi in zip(models, opts, x, y):
            loss = F.cross_entropy(m(xi), yi)
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

    def stacked(fused: bool):
        members = []
        for c, m, o in zip(cfgs, models, opts):
            member = Member(c, "unused", Dist())
            member.model, member.opt = m, o
            members.append(member)
        backend = StackedBackend(members)
        set_fused_attn(backend.base, fused)
        batches = list(zip(x, y))

        def step():
            backend.losses(members, batches, None)
            for o in opts:
                o.step()
                o.zero_grad(set_to_none=True)

        return step

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timed = interleaved(
            {"separate": separate, "vmap_explicit_attention": stacked(False), "vmap_fused_attention": stacked(True)},
            repeats,
        )
    return {
        "runs": k,
        "median_s": {n: v["median_s"] for n, v in timed.items()},
        "speedup_vs_separate": ratios(timed, "separate"),
    }


def run(quick: bool = False) -> dict:
    repeats = 3 if quick else 5
    presets = ["vit_c_fmnist_tiny"] if quick else ["vit_p_fmnist_tiny", "vit_c_fmnist_tiny", "vit_c_fmnist"]
    batch = 128
    out = {
        "batch_size": batch,
        "steps": {p: step_switches(p, batch, repeats) for p in presets},
        "data": data_paths(batch, 100 if quick else 300, repeats),
        "batched": {p: batched_runs(p, batch, 4, repeats) for p in presets[:2]},
    }
    if not quick:
        out["compile"] = {p: compile_case(p, batch, repeats) for p in presets[:2]}
    return out

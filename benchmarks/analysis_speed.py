"""Analysis speed and memory: attention extraction, rollout and minibatch CKA over N images and all
layers of a ViT (time, and peak resident memory over the value before the call)."""

from __future__ import annotations

import time

import torch

from analysis.models import create_model
from analysis.probes import class_token_attention, cka_matrix, rollout_maps
from benchmarks.common import PeakRSS


def timed_call(fn, device="cpu") -> dict:
    with PeakRSS(device) as mem:
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mem_delta_mb": mem.peak_delta / 2**20}


def run(quick: bool = False) -> dict:
    presets = ["vit_c_fmnist"] if quick else ["vit_c_fmnist", "vit_p_cifar", "vit_c_1gf"]
    n, batch = (128, 64) if quick else (512, 64)
    rows = []
    for preset in presets:
        torch.manual_seed(0)
        model = create_model(preset).eval()
        images = torch.randn(n if model.img_size < 64 else n // 8, model.in_chans, model.img_size, model.img_size)
        chunks = list(images.split(batch))
        layers = len(model.blocks)
        row = {"preset": preset, "images": len(images), "layers": layers, "batch": batch}
        row["attention"] = timed_call(lambda: [class_token_attention(model, c) for c in chunks])
        row["rollout"] = timed_call(lambda: [rollout_maps(model, c) for c in chunks])
        row["cka_all_layers"] = timed_call(lambda: cka_matrix(model, chunks))
        for k in ("attention", "rollout", "cka_all_layers"):
            row[k]["images_per_s"] = len(images) / row[k]["seconds"]
        rows.append(row)
    return {"rows": rows, "notes": "CPU: peak RSS sampled every 2 ms; CUDA: torch peak allocated"}

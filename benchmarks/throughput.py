"""Training throughput: the suite's engine against the plain reference loop, same model and batch.

Engine: `analysis.engine.train.train` on a data subset for two epochs; its own metrics give the second
epoch's training images/s (evaluation excluded). Reference: `benchmarks.reference.run` for two
epochs, the second timed the same way. Engine and reference alternate, repeated; medians and the
median of the per-pair ratios are reported. Achieved FLOP/s = images/s x flops (MACs, pycls
convention) x 2 FLOP/MAC x 3 (forward + backward), over the matmul peak measured here.

CPU: the small presets, the 16-token ones (p16 on 64 px, p8 on 32 px) included. CUDA (when available, or --big): the 1GF and 4GF presets at 224 px on a
synthetic ImageFolder.
"""

from __future__ import annotations

import pickle
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from analysis import config, rundir
from analysis.engine.data import default_root
from benchmarks import reference
from benchmarks.common import CACHE, matmul_peak, spread

SMALL = [
    "vit_p_fmnist_tiny",
    "vit_c_fmnist_tiny",
    "vit_p_fmnist_p16_tiny",
    "vit_c_fmnist_p16_tiny",
    "vit_p_fmnist_p8_tiny",
    "vit_c_fmnist_p8_tiny",
    "vit_p_fmnist",
    "vit_c_fmnist",
    "vit_p_cifar",
    "vit_c_cifar",
]
BIG = ["vit_p_1gf", "vit_c_1gf", "vit_p_4gf", "vit_c_4gf"]


def cifar_root() -> tuple[str, str]:
    """(root, kind): the real CIFAR-10 folder when present, else random uint8 data of CIFAR shape
    written in CIFAR's pickle format (5 x 1000 train images, 1000 test)."""
    real = Path(default_root("cifar10"))
    if (real / "cifar-10-batches-py" / "data_batch_1").is_file() or (real / "data_batch_1").is_file():
        return str(real), "cifar10"
    folder = CACHE / "cifar10_random" / "cifar-10-batches-py"
    if not (folder / "test_batch").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {
                b"data": rng.integers(0, 256, (1000, 3072), dtype=np.uint8),
                b"labels": rng.integers(0, 10, 1000).tolist(),
            }
            with open(folder / name, "wb") as f:
                pickle.dump(batch, f)
    return str(folder.parent), "cifar_random"


def imagefolder_root(n_per_class: int = 64, classes: int = 10) -> str:
    """A synthetic ImageNet-style folder of random 256 px JPEGs (train and val)."""
    from PIL import Image

    root = CACHE / f"imagefolder_random_{n_per_class}"
    if (root / "val").is_dir():
        return str(root)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_per_class), ("val", max(2, n_per_class // 8))):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(d / f"{i}.jpg", quality=90)
    return str(root)


def engine_images_per_s(overrides: dict) -> float:
    """Images/s of the engine's last training epoch (from its metrics.jsonl)."""
    from analysis.engine.train import train

    cfg = config.RunConfig().replace(overrides)
    with tempfile.TemporaryDirectory() as d:
        train(cfg, Path(d) / "run")
        return rundir.read_metrics(Path(d) / "run")[-1]["images_per_s"]


def small_case(preset: str, per_class: int, batch: int) -> tuple[dict, dict]:
    """(engine overrides, reference kwargs) for a small preset."""
    fmnist = "fmnist" in preset
    root, kind = (None, "fashion_mnist") if fmnist else cifar_root()
    engine = {
        "model.preset": preset,
        "data.name": "fashion_mnist" if fmnist else "cifar10",
        "data.root": root,
        "data.train_per_class": per_class,
        "data.test_per_class": 10,
        "train.epochs": 2,
        "train.batch_size": batch,
        "train.precision": "fp32",
        "train.progress": "none",
        "train.checkpoint_minutes": 0,
        "train.device": "cpu",
    }
    ref = {
        "preset": preset,
        "dataset": "fashion_mnist" if fmnist else "cifar_random",
        "epochs": 2,
        "batch_size": batch,
        "lr": 1e-3,
        "weight_decay": 0.05,
        "seed": 0,
        "train_per_class": per_class,
        "test_per_class": 10,
        "evaluate": False,
    }
    return engine, ref


def big_case(preset: str, per_class: int, batch: int, device: str) -> tuple[dict, dict]:
    """(engine overrides, reference kwargs) for a 224 px preset on a synthetic ImageFolder."""
    root = imagefolder_root(per_class)
    engine = {
        "model.preset": preset,
        "data.name": "imagefolder",
        "data.root": root,
        "data.workers": 8,
        "data.augment": "crop_flip",
        "train.epochs": 2,
        "train.batch_size": batch,
        "train.precision": "auto",
        "train.progress": "none",
        "train.checkpoint_minutes": 0,
        "train.device": device,
    }
    ref = {"preset": preset, "imagefolder": root, "batch_size": batch, "device": device, "workers": 8}
    return engine, ref


def reference_big(preset: str, imagefolder: str, batch_size: int, device: str, workers: int) -> float:
    """Images/s of the second epoch of the plain loop at 224 px (torchvision ImageFolder, fp32)."""
    import time

    import torch.nn.functional as F
    from torchvision import datasets as tvd, transforms as T

    tf = T.Compose(
        [
            T.RandomResizedCrop(224),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    ds = tvd.ImageFolder(str(Path(imagefolder) / "train"), tf)
    model = reference.reference_model(preset).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers, pin_memory=device == "cuda"
    )
    rate = 0.0
    for _ in range(2):
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            seen += len(y)
        rate = seen / (time.perf_counter() - t0)
    return rate


def flops_of(preset: str) -> int:
    from analysis.models import complexity, create_model

    m = create_model(preset)
    return complexity(m, m.img_size, m.in_chans)["flops"]


def measure(preset: str, engine_kw: dict, ref_fn, repeats: int) -> dict:
    """Alternate engine and reference `repeats` times; return images/s lists, medians and ratios."""
    eng, ref = [], []
    for _ in range(repeats):
        eng.append(engine_images_per_s(engine_kw))
        ref.append(ref_fn())
    pair = [e / r for e, r in zip(eng, ref)]
    return {
        "preset": preset,
        "engine_images_per_s": eng,
        "reference_images_per_s": ref,
        "engine_median": statistics.median(eng),
        "reference_median": statistics.median(ref),
        "ratio_median_of_pairs": statistics.median(pair),
        "ratio_spread": spread(pair) if len(pair) > 1 else 0.0,
    }


def run(quick: bool = False, big: bool = False, only: list[str] | None = None) -> dict:
    """Measure every small preset (or those in `only`); returns the JSON payload."""
    repeats = 1 if quick else 3
    presets = only or SMALL[:4] + (["vit_c_cifar"] if quick else SMALL[4:])
    per_class, batch = (100, 128) if quick else (200, 128)
    rows = []
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    for preset in presets:
        engine_kw, ref_kw = small_case(preset, per_class, batch)
        row = measure(preset, engine_kw, lambda: reference.run(**ref_kw)["epochs"][-1]["images_per_s"], repeats)
        row.update(batch_size=batch, train_images=per_class * 10, device="cpu", precision="fp32")
        rows.append(row)
    if torch.cuda.is_available() or big:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        b_batch, b_per_class = (128, 64) if device == "cuda" else (4, 1)
        for preset in BIG if device == "cuda" else BIG[:1]:
            engine_kw, ref_kw = big_case(preset, b_per_class, b_batch, device)
            row = measure(preset, engine_kw, lambda: reference_big(**ref_kw), 1 if quick or device == "cpu" else 3)
            row.update(batch_size=b_batch, device=device, precision="auto (engine) / fp32 (reference)")
            rows.append(row)
        if device == "cuda":
            peak.update(
                {
                    "cuda_fp32": matmul_peak(torch.float32, "cuda", 8192),
                    "cuda_bf16": matmul_peak(torch.bfloat16, "cuda", 8192),
                }
            )
    for row in rows:
        f = flops_of(row["preset"]) * 2 * 3
        key = "cuda_fp32" if row["device"] == "cuda" else "fp32"
        row["flop_per_image_train"] = f
        row["engine_gflops"] = row["engine_median"] * f / 1e9
        row["reference_gflops"] = row["reference_median"] * f / 1e9
        row["engine_fraction_of_fp32_peak"] = row["engine_median"] * f / peak[key]
    return {
        "peak_flops": peak,
        "rows": rows,
        "notes": "images/s of the 2nd epoch, training only; ratio = engine / reference, median of "
        "alternating pairs; fraction = engine FLOP/s over the fp32 matmul peak measured here",
    }

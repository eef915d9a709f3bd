"""The plain reference loop the suite is measured against.

A timm VisionTransformer of the preset's shape (for conv-stem presets, timm's VisionTransformer
with the suite's conv stem as embed_layer), a torch DataLoader over a standard per-sample dataset
(torchvision's FashionMNIST; CIFAR-shaped random uint8 arrays through the same PIL path as
torchvision's CIFAR10) with torchvision transforms (random crop with padding, flip, ToTensor,
Normalize), fp32, the usual AdamW step and a test pass per epoch.

    python -m benchmarks.reference --preset vit_p_fmnist_tiny --epochs 2 --lr 1e-3   # one run, JSON out
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import CACHE

FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def reference_model(preset: str) -> torch.nn.Module:
    """timm's VisionTransformer with the preset's shape (conv presets: the suite's conv stem)."""
    from timm.models.vision_transformer import VisionTransformer

    from analysis.models import resolve
    from analysis.models.registry import lookup_stem, stem_layer

    s = resolve(preset)
    kwargs = dict(
        img_size=s["img_size"],
        patch_size=s["patch_size"],
        in_chans=s["in_chans"],
        num_classes=s["num_classes"],
        embed_dim=s["embed_dim"],
        depth=s["depth"],
        num_heads=s["num_heads"],
        mlp_ratio=s["mlp_ratio"],
        qkv_bias=True,
    )
    if s["stem"] != "patchify":
        kwargs["embed_layer"] = stem_layer(lookup_stem(s["stem"]), s["stem_channels"], s["stem_strides"])
    return VisionTransformer(**kwargs)


def fashion_mnist_root() -> Path:
    """A torchvision FashionMNIST root (raw IDX files decompressed into the benchmark cache)."""
    from analysis.engine.data import default_root

    src = Path(default_root("fashion_mnist"))
    raw = CACHE / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FMNIST_FILES:
        if not (raw / name).is_file():  # written under a private name, then renamed: processes run side by side
            gz, tmp = src / f"{name}.gz", raw / f".{name}.{os.getpid()}.tmp"
            if gz.is_file():
                with gzip.open(gz, "rb") as f, open(tmp, "wb") as g:
                    shutil.copyfileobj(f, g)
            else:
                shutil.copy(src / name, tmp)
            os.replace(tmp, raw / name)
    return CACHE


class PerSampleArrays(torch.utils.data.Dataset):
    """uint8 (N, H, W, C) images and labels, one PIL image per item (torchvision CIFAR10's path)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def first_per_class(labels, n: int | None) -> list[int]:
    """Indices of the first n examples of each class (the suite's data.train_per_class rule)."""
    labels = np.asarray(labels)
    if n is None:
        return list(range(len(labels)))
    keep = np.concatenate([np.flatnonzero(labels == c)[:n] for c in np.unique(labels)])
    return sorted(keep.tolist())


def datasets(
    dataset: str,
    train_per_class: int | None,
    test_per_class: int | None,
    cifar_n: int = 5000,
    img_size: int | None = None,
):
    """(train, test) per-sample datasets with the standard torchvision transforms; `img_size` other
    than the native size resizes each image first (antialiased) and scales the crop padding."""
    from torchvision import datasets as tvd, transforms as T

    if dataset == "fashion_mnist":
        mean, std, size = (0.2860,), (0.3530,), 28
        root = fashion_mnist_root()
        train = tvd.FashionMNIST(root, train=True, download=False)
        test = tvd.FashionMNIST(root, train=False, download=False)
    else:  # CIFAR-shaped random data (or real CIFAR-10 when the suite finds it)
        mean, std, size = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32
        rng = np.random.default_rng(0)
        train = PerSampleArrays(
            rng.integers(0, 256, (cifar_n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, cifar_n), None
        )
        test = PerSampleArrays(
            rng.integers(0, 256, (cifar_n // 5, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, cifar_n // 5), None
        )
    resize = [T.Resize(img_size, antialias=True)] if img_size and img_size != size else []
    side = img_size or size
    aug = T.Compose(
        [
            *resize,
            T.RandomCrop(side, padding=round(2 * side / size)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    plain = T.Compose([*resize, T.ToTensor(), T.Normalize(mean, std)])
    train.transform, test.transform = aug, plain
    train_labels = train.targets if hasattr(train, "targets") else train.labels
    test_labels = test.targets if hasattr(test, "targets") else test.labels
    return (
        torch.utils.data.Subset(train, first_per_class(train_labels, train_per_class)),
        torch.utils.data.Subset(test, first_per_class(test_labels, test_per_class)),
    )


def _img_size(preset: str) -> int:
    from analysis.models import resolve

    return resolve(preset)["img_size"]


def run(
    preset: str,
    dataset: str,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    train_per_class: int | None,
    test_per_class: int | None,
    workers: int = 0,
    evaluate: bool = True,
) -> dict:
    """Train one run with the plain loop; return per-epoch train seconds, images/s and test error."""
    torch.manual_seed(seed)
    model = reference_model(preset)
    train_ds, test_ds = datasets(dataset, train_per_class, test_per_class, img_size=_img_size(preset))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = torch.utils.data.DataLoader(
        train_ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers
    )
    test_loader = torch.utils.data.DataLoader(test_ds, batch_size=500, num_workers=workers)
    epochs_out = []
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        seen, total = 0, 0.0
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            seen += len(y)
        seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "seconds": seconds,
            "images_per_s": seen / seconds,
            "train_loss": total * batch_size / max(seen, 1),
        }
        if evaluate:
            model.eval()
            wrong = n = 0
            with torch.no_grad():
                for x, y in test_loader:
                    wrong += (model(x).argmax(1) != y).sum().item()
                    n += len(y)
            row["test_top1_err"] = 100.0 * wrong / n
        epochs_out.append(row)
    return {"preset": preset, "epochs": epochs_out}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="one run of the plain reference training loop")
    p.add_argument("--preset", default="vit_c_fmnist_tiny")
    p.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "cifar_random"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-per-class", type=int, default=None)
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--workers", type=int, default=0)
    a = p.parse_args(argv)
    out = run(
        a.preset, a.dataset, a.epochs, a.batch_size, a.lr, a.wd, a.seed, a.train_per_class, a.test_per_class, a.workers
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Datasets: Fashion-MNIST (IDX), CIFAR-10/100 (python pickles), ImageFolder trees (timm).

Small datasets take a fast path: uint8 tensors kept on the training device, batches drawn and
augmented on that device (random crop with padding, horizontal flip) with no per-sample Python.
Every random draw comes from a generator seeded by (seed, epoch, batch), so a run resumed at
any batch sees exactly the batches an uninterrupted run would. Other datasets (ImageFolder trees,
small ones with timm's per-image augmentations) go through DataLoaders. `build_data` gives a run
its train and test batch sources (`Data`).
"""

from __future__ import annotations

import copy
import functools
import gzip
import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from analysis.config import RunConfig
from analysis.models.presets import DATASET_STATS as STATS
from analysis.errors import ConfigError
from analysis.trust import load_pickle

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class ArrayData:
    """A dataset held as arrays: images uint8 (N, C, H, W), labels int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.labels)


REPO_DATA = Path(__file__).resolve().parent.parent / "data"


def default_root(name: str) -> str:
    """Return the folder used when data.root is not set: $STEMLAB_DATA/<name> if STEMLAB_DATA is
    set; for Fashion-MNIST the Debian package's folder, else the repo's data/fashion-mnist."""
    base = os.environ.get("STEMLAB_DATA")
    folder = {"fashion_mnist": "fashion-mnist"}.get(name, name)
    if base:
        return os.path.join(base, folder)
    if name == "fashion_mnist" and not (REPO_DATA / folder).is_dir():
        return FASHION_MNIST_DIR
    return str(REPO_DATA / folder)


def _missing(name: str, root: str, hint: str) -> ConfigError:
    return ConfigError(f"{name} not found in {root}: {hint}")


MAX_IDX_BYTES = 256 << 20  # an IDX data file of at most 256 MiB once inflated (Fashion-MNIST's largest: 47 MB)


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array, inflating no more than its header's
    shape says (a gzip bomb stops there): a bad header, a size over MAX_IDX_BYTES, a truncated file or
    trailing data is a one-line ConfigError."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] != 0x08 or not 1 <= head[3] <= 4:
                raise ConfigError(f"{path}: not an unsigned-byte IDX file")
            dims = f.read(4 * head[3])
            shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(head[3]))
            size = int(np.prod(shape, dtype=np.float64))
            if len(dims) < 4 * head[3] or size > MAX_IDX_BYTES:
                raise ConfigError(f"{path}: IDX shape {shape} is truncated or over {MAX_IDX_BYTES} bytes")
            raw = f.read(size + 1)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ConfigError(f"{path}: unreadable IDX file ({type(e).__name__})") from None
    if len(raw) != size:
        raise ConfigError(
            f"{path}: holds {len(raw)}{'+' if len(raw) > size else ''} bytes of data, its header says {size}"
        )
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def load_fashion_mnist(root: str, train: bool) -> ArrayData:
    """Fashion-MNIST from its four IDX files (.gz or plain)."""
    prefix = "train" if train else "t10k"
    folder = Path(root)
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        found = [folder / f"{prefix}-{kind}{ext}" for ext in (".gz", "")]
        found = [p for p in found if p.is_file()]
        if not found:
            raise _missing(
                "Fashion-MNIST",
                root,
                "install it with `apt-get install dataset-fashion-mnist` "
                "(or `make data`), or set data.root / STEMLAB_DATA to a folder with its IDX files",
            )
        paths.append(found[0])
    images = torch.from_numpy(_read_idx(paths[0]).copy()).unsqueeze(1)
    labels = torch.from_numpy(_read_idx(paths[1]).astype(np.int64))
    mean, std = STATS["fashion_mnist"]
    return ArrayData(images, labels, FASHION_MNIST_CLASSES, mean, std)


def _cifar_part(path: Path, keys: tuple[bytes, ...]) -> dict:
    """One CIFAR batch or meta file, read by the restricted unpickler (analysis.trust): a dict with `keys`."""
    part = load_pickle(path)
    if not isinstance(part, dict) or not all(k in part for k in keys):
        raise ConfigError(f"{path}: not a CIFAR python batch (a dict with {', '.join(map(repr, keys))})")
    return part


def load_cifar(root: str, train: bool, name: str) -> ArrayData:
    """CIFAR-10/100 from the python-pickle folder (cifar-10-batches-py / cifar-100-python)."""
    folder = Path(root)
    sub = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
    if (folder / sub).is_dir():
        folder = folder / sub
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        label_key, meta, names_key = b"labels", "batches.meta", b"label_names"
    else:
        files = ["train"] if train else ["test"]
        label_key, meta, names_key = b"fine_labels", "meta", b"fine_label_names"
    if not all((folder / f).is_file() for f in files):
        raise _missing(
            name, root, f"unpack the python version of {name} ({sub}) there, or set data.root / STEMLAB_DATA"
        )
    images, labels = [], []
    for f in files:
        batch = _cifar_part(folder / f, (b"data", label_key))
        try:
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        except (ValueError, TypeError):
            raise ConfigError(f"{folder / f}: its data is not CIFAR images (N x 3072 bytes)") from None
        labels.extend(batch[label_key])
    classes = CIFAR10_CLASSES
    if (folder / meta).is_file():
        names = _cifar_part(folder / meta, (names_key,))[names_key]
        classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in names)
    mean, std = STATS[name]
    return ArrayData(
        torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64), classes, mean, std
    )


def first_per_class(data: ArrayData, n: int | None) -> ArrayData:
    """Keep the first n examples of each class, in dataset order (deterministic)."""
    if n is None:
        return data
    labels = data.labels
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        keep[torch.nonzero(labels == c).flatten()[:n]] = True
    return ArrayData(data.images[keep], labels[keep], data.classes, data.mean, data.std)


NATIVE_SIZE = {"fashion_mnist": 28, "cifar10": 32, "cifar100": 32}


def resize(data: ArrayData, size: int | None) -> ArrayData:
    """The images resized to size x size (bilinear, antialiased when shrinking), still uint8.

    torchvision's uint8 resize, which matches PIL's bilinear resize to within one grey level.
    None or the current size returns the data unchanged.
    """
    if size is None or data.images.shape[-1] == size and data.images.shape[-2] == size:
        return data
    from torchvision.transforms.v2 import functional as TF

    images = (
        torch.cat([TF.resize(chunk, [size, size], antialias=True) for chunk in data.images.split(8192)])
        if len(data)
        else data.images.new_zeros((0, data.images.shape[1], size, size))
    )
    return ArrayData(images, data.labels, data.classes, data.mean, data.std)


def load_arrays(
    name: str, root: str | None, train: bool, per_class: int | None = None, img_size: int | None = None
) -> ArrayData:
    """Load a small dataset as uint8 arrays, the first `per_class` of each class, resized to img_size
    (None keeps the native size); raise ConfigError naming the searched path when missing."""
    if name not in NATIVE_SIZE:
        raise ConfigError(f"{name} has no array form; allowed: fashion_mnist, cifar10, cifar100")
    data = _native_arrays(name, root or default_root(name), train)
    return resize(first_per_class(data, per_class), img_size)


@functools.lru_cache(maxsize=4)
def _native_arrays(name: str, root: str, train: bool) -> ArrayData:
    """The whole split as read from its files, kept for the process: a sweep job training many runs
    reads (and decompresses) each split once. Callers get copies (subsets, resizes) or must not write."""
    if name == "fashion_mnist":
        return load_fashion_mnist(root, train)
    return load_cifar(root, train, name)


def scaled_padding(padding: int, native: int, size: int) -> int:
    """Crop padding for images resized from `native` to `size` pixels: the same share of the image
    (rounded to whole pixels), so a resized run sees the same translations as a native one."""
    return int(round(padding * size / native))


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the generator for one batch (stable across processes and resumes)."""
    return (seed * 1_000_003 + epoch * 10_007 + index) % (2**63 - 1)


class DeviceLoader:
    """Batches of a uint8 dataset held on `device`, augmented on the device.

    Iterating yields (images float normalised (B, C, H, W), labels (B,)). Training order and
    augmentation for epoch e depend only on (seed, e); `batches(epoch, start)` resumes mid-epoch.
    """

    def __init__(
        self,
        data: ArrayData,
        batch_size: int,
        device: torch.device,
        train: bool,
        seed: int = 0,
        crop_padding: int = 0,
        hflip: bool = False,
        drop_last: bool = True,
    ):
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.seed = seed
        self.pad = crop_padding if train else 0
        self.hflip = hflip and train
        self.drop_last = drop_last and train
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(data.mean, device=device).view(shape) * 255
        self.std = torch.tensor(data.std, device=device).view(shape) * 255
        if self.pad:
            self.padded = torch.nn.functional.pad(self.images, (self.pad,) * 4)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self, epoch: int, index: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(batch_seed(self.seed, epoch, index))
        return g

    def order(self, epoch: int) -> torch.Tensor:
        """Sample order of one epoch (a permutation for training, identity for eval)."""
        n = len(self.labels)
        if not self.train:
            return torch.arange(n, device=self.device)
        return torch.randperm(n, generator=self._generator(epoch, -1), device=self.device)

    def augment(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random crop (from the padded copy) and flip for the images at idx; returns uint8."""
        if not self.pad:
            x = self.images[idx]
        else:
            b, (h, w) = len(idx), self.images.shape[-2:]
            dy = torch.randint(0, 2 * self.pad + 1, (b, 1), generator=g, device=self.device)
            dx = torch.randint(0, 2 * self.pad + 1, (b, 1), generator=g, device=self.device)
            rows = (dy + torch.arange(h, device=self.device))[:, None, :, None]
            cols = (dx + torch.arange(w, device=self.device))[:, None, None, :]
            chans = torch.arange(self.images.shape[1], device=self.device)[None, :, None, None]
            x = self.padded[idx[:, None, None, None], chans, rows, cols]
        if self.hflip:
            flip = torch.rand(len(idx), generator=g, device=self.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def batches(self, epoch: int = 0, start: int = 0):
        """Yield batches of the epoch from batch index `start` on."""
        order = self.order(epoch)
        for i in range(start, len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            if self.train:
                x = self.augment(idx, self._generator(epoch, i))
            else:
                x = self.images[idx]
            yield (x.float() - self.mean) / self.std, self.labels[idx]

    def __iter__(self):
        return self.batches(0, 0)


class ArrayImageDataset(torch.utils.data.Dataset):
    """An ArrayData as a per-image dataset of PIL images, for timm's per-sample transforms."""

    def __init__(self, data: ArrayData, transform=None):
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        from PIL import Image

        arr = self.data.images[i].numpy()
        img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
        return (self.transform(img) if self.transform else img), int(self.data.labels[i])


def timm_transform(train: bool, img_size: int, mean, std, augment: str, crop_pct: float = 0.875):
    """timm's train/eval transform; autoaugment/randaugment pick timm's policies."""
    from timm.data import create_transform

    policy = {"autoaugment": "original", "randaugment": "rand-m9-mstd0.5-inc1"}.get(augment)
    kwargs = dict(input_size=img_size, is_training=train, mean=mean, std=std, interpolation="bicubic")
    if train:
        kwargs.update(auto_augment=policy, hflip=0.5, re_prob=0.0)
        if augment == "none":
            kwargs.update(no_aug=True)
    else:
        kwargs.update(crop_pct=crop_pct)
    return create_transform(**kwargs)


def small_image_transform(train: bool, data: ArrayData, augment: str, pad: int, hflip: bool):
    """Per-image transform for small arrays on the loader path (keeps the arrays' size)."""
    from torchvision import transforms as T
    from timm.data.auto_augment import auto_augment_transform, rand_augment_transform

    ops = []
    if train and augment != "none":
        ops.append(T.RandomCrop(data.images.shape[-1], padding=pad))
        if hflip:
            ops.append(T.RandomHorizontalFlip())
        hparams = {"img_mean": tuple(round(255 * m) for m in data.mean)}
        if augment == "autoaugment":
            ops.append(auto_augment_transform("original", hparams))
        elif augment == "randaugment":
            ops.append(rand_augment_transform("rand-m9-mstd0.5-inc1", hparams))
    ops += [T.ToTensor(), T.Normalize(data.mean, data.std)]
    return T.Compose(ops)


class UnreadableImages(ConfigError):
    """An ImageFolder split where timm met nothing but unreadable files (e.g. .png files that are not
    images) in the run of consecutive files it tries before it gives up."""


class ImageFiles(torch.utils.data.Dataset):
    """An ImageFolder split: timm reads each image (an unreadable file is skipped for the next one, with
    a warning) and the transform is applied here, so that timm giving up raises UnreadableImages, one
    line naming the folder, and not its RuntimeError."""

    def __init__(self, images, folder: str, transform):
        self.images = images  # timm's dataset, without a transform
        self.folder = folder
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        try:
            img, target = self.images[i]
        except RuntimeError:  # timm's "Failed to load N consecutive samples": reading is all it did
            raise UnreadableImages(self.problem()) from None
        return self.transform(img), target

    def problem(self) -> str:
        return f"cannot read the images in {self.folder}: consecutive files there are not images timm can open"


def imagefolder(root: str, train: bool, img_size: int, augment: str) -> ImageFiles:
    """An ImageNet-style folder (root/train/<class>/*.jpg, root/val/<class>/*.jpg) through timm."""
    from timm.data import create_dataset
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    split = "train" if train else "val"
    if not (Path(root) / split).is_dir():
        raise _missing("ImageFolder split", root, f"expected {root}/{split}/<class>/<image> (set data.root)")
    images = create_dataset("", root=root, split=split, is_training=train)
    transform = timm_transform(train, img_size, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, augment)
    return ImageFiles(images, str(Path(root) / split), transform)


def checked(batches, ds):
    """The batches of a DataLoader over `ds`; UnreadableImages (which a worker process passes on as a
    traceback in its message) ends them with the dataset's one line."""
    try:
        yield from batches
    except UnreadableImages:
        raise UnreadableImages(ds.problem()) from None


def loader(ds, batch_size: int, train: bool, workers: int, seed: int, epoch: int = 0):
    """A DataLoader over a per-image dataset, shuffled by (seed, epoch) when training."""
    g = torch.Generator()
    g.manual_seed(batch_seed(seed, epoch, -1))
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=workers,
        generator=g,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


@dataclass
class Data:
    """Train/test batch sources for a run."""

    train_batches: callable  # (epoch, start) -> iterator of (x, y)
    steps_per_epoch: int
    test_batches: callable  # () -> iterator of (x, y)
    num_train: int
    num_test: int
    loader: "DeviceLoader | None" = None  # the in-memory training loader, when there is one

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
        root = d.root or default_root("imagefolder")
        train_ds = imagefolder(root, True, img_size, d.augment)
        test_ds = imagefolder(root, False, img_size, "none")
        return _loader_data(train_ds, test_ds, cfg)
    train = load_arrays(d.name, d.root, True, d.train_per_class, img_size)
    test = load_arrays(d.name, d.root, False, d.test_per_class, img_size)
    pad = scaled_padding(d.crop_padding, NATIVE_SIZE[d.name], img_size)
    if d.in_memory and d.augment in ("none", "crop_flip"):
        aug = d.augment == "crop_flip"
        tr = DeviceLoader(train, t.batch_size, device, True, t.seed, pad if aug else 0, d.hflip and aug)
        te = DeviceLoader(test, t.eval_batch_size, device, False)
        return Data(tr.batches, len(tr), te.__iter__, len(train), len(test), loader=tr)
    train_ds = ArrayImageDataset(train, small_image_transform(True, train, d.augment, pad, d.hflip))
    test_ds = ArrayImageDataset(test, small_image_transform(False, test, "none", 0, False))
    return _loader_data(train_ds, test_ds, cfg)


def _loader_data(train_ds, test_ds, cfg: RunConfig) -> Data:
    t, w = cfg.train, cfg.data.workers

    def train_batches(epoch: int, start: int):
        it = checked(loader(train_ds, t.batch_size, True, w, t.seed, epoch), train_ds)
        for i, batch in enumerate(it):
            if i >= start:
                yield batch

    def test_batches():
        return checked(loader(test_ds, t.eval_batch_size, False, w, t.seed), test_ds)

    return Data(train_batches, len(train_ds) // t.batch_size, test_batches, len(train_ds), len(test_ds))

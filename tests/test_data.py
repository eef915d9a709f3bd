"""The in-memory data path at another input size: resize on load, crop/flip after it."""

import numpy as np
import pytest
import torch
from PIL import Image

from analysis import config
from analysis.engine import data as D
from analysis.engine.model import build_model, input_size


@pytest.fixture(scope="module")
def fmnist():
    return D.load_arrays("fashion_mnist", None, False, per_class=20)


def test_resize_equals_a_reference_resize(fmnist):
    """Each resized image equals PIL's bilinear resize of the same image to within one grey level."""
    big = D.resize(fmnist, 64)
    assert big.images.shape == (200, 1, 64, 64) and big.images.dtype == torch.uint8
    assert torch.equal(big.labels, fmnist.labels)
    for i in range(0, 200, 17):
        ref = np.asarray(Image.fromarray(fmnist.images[i, 0].numpy()).resize((64, 64), Image.BILINEAR))
        diff = np.abs(big.images[i, 0].numpy().astype(int) - ref.astype(int))
        assert diff.max() <= 1, f"image {i} differs from PIL by {diff.max()}"
    small = D.resize(fmnist, 14)  # shrinking is antialiased like PIL's
    ref = np.asarray(Image.fromarray(fmnist.images[3, 0].numpy()).resize((14, 14), Image.BILINEAR))
    assert np.abs(small.images[3, 0].numpy().astype(int) - ref.astype(int)).max() <= 1
    assert D.resize(fmnist, 28) is fmnist


def _crop_flip_stats(data: D.ArrayData, pad: int) -> tuple[float, float]:
    """(mean |shift| as a fraction of the side, share of flipped images) of the device loader's
    augmentation, measured on images whose content is a one-pixel-wide ramp."""
    side = data.images.shape[-1]
    ramp = (torch.arange(side) * 255 // side).to(torch.uint8)
    images = ramp.view(1, 1, 1, side).expand(len(data), 1, side, side).contiguous()
    loader = D.DeviceLoader(
        D.ArrayData(images, data.labels, data.classes, (0.0,), (1 / 255,)),
        50,
        torch.device("cpu"),
        True,
        seed=3,
        crop_padding=pad,
        hflip=True,
    )
    shifts, flips = [], []
    for epoch in range(4):
        for x, _ in loader.batches(epoch):
            row = x[:, 0, side // 2]  # one row per image: shifted (and maybe flipped) ramp
            inner = row[:, pad : side - pad].numpy()
            flipped = inner[:, 0] > inner[:, -1]
            flips += flipped.tolist()
            first = np.where(flipped, inner[:, ::-1][:, 0], inner[:, 0])
            shifts += (np.abs(np.round(first / (255 / side)) - pad) / side).tolist()
    return float(np.mean(shifts)), float(np.mean(flips))


def test_crop_flip_at_64_px_as_at_28(fmnist):
    """Padding scales with the resize: translations are the same share of the image, flips half."""
    pad64 = D.scaled_padding(2, 28, 64)
    assert pad64 == 5 and D.scaled_padding(2, 28, 28) == 2
    shift28, flip28 = _crop_flip_stats(fmnist, 2)
    shift64, flip64 = _crop_flip_stats(D.resize(fmnist, 64), pad64)
    assert abs(flip28 - 0.5) < 0.08 and abs(flip64 - 0.5) < 0.08
    assert shift64 == pytest.approx(shift28, rel=0.25)  # 1.2/28 vs 2.9/64 expected: 0.043 vs 0.045


def test_runs_train_on_resized_images():
    """A 64 px preset on Fashion-MNIST gets 64 px batches; data.img_size overrides the preset's size."""
    cfg = config.RunConfig().replace(
        {
            "model.preset": "vit_c_fmnist_p16_tiny",
            "data.train_per_class": 5,
            "data.test_per_class": 2,
            "train.batch_size": 10,
        }
    )
    assert input_size(cfg) == 64
    model = build_model(cfg)
    data = D.build_data(cfg, torch.device("cpu"), model.img_size)
    x, y = next(data.train_batches(0, 0))
    assert x.shape == (10, 1, 64, 64) and model(x).shape == (10, 10)
    assert data.loader.pad == 5
    cfg32 = cfg.replace({"data.img_size": 32, "model.preset": "vit_c_fmnist_p8_tiny"})
    assert build_model(cfg32).img_size == 32 and input_size(cfg32) == 32

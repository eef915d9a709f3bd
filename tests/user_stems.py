"""Stems written outside the package, the way a user's own module would hold them.

`two_conv` is registered by name; sweeps and run configs name it by import path,
`tests.user_stems:two_conv`. The others break the stem contract on purpose.
"""

import os
import time

from torch import nn

from analysis.models import register_stem


class TwoConvStem(nn.Module):
    """Two stride-2 3x3 convs with a GELU between them: tokens at pitch 4 (the tiny presets' patch size)."""

    def __init__(self, img_size, patch_size, in_chans, embed_dim, width=16, **kwargs):
        super().__init__()
        self.first_conv = nn.Conv2d(in_chans, width, 3, stride=2, padding=1)
        self.body = nn.Sequential(self.first_conv, nn.GELU(), nn.Conv2d(width, embed_dim, 3, stride=2, padding=1))
        self.stride, self.kind = 4, "two_conv"
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.grid_size = (size[0] // 4, size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x):
        return self.body(x).flatten(2).transpose(1, 2)


@register_stem("two_conv")
def two_conv(img_size, patch_size, in_chans, embed_dim):
    """The registered factory: takes only the arguments it names (no **kwargs)."""
    return TwoConvStem(img_size, patch_size, in_chans, embed_dim)


@register_stem("pooled_two_conv", seq_pool=True)
def pooled_two_conv(**kwargs):
    """The same stem in a ViT without class token, pooled by sequence pooling."""
    return TwoConvStem(**kwargs)


class GatedTwoConvStem(TwoConvStem):
    """TwoConvStem whose first training step waits until the file that $STEMLAB_TEST_GATE names exists
    (at most 300 s): a job training it holds still in `running` (its job.json written, its lock held)
    until a test has seen it there, whatever the machine's speed."""

    def forward(self, x):
        gate, deadline = os.environ.get("STEMLAB_TEST_GATE"), time.monotonic() + 300
        while self.training and gate and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.2)
        return super().forward(x)


def gated_two_conv(**kwargs):
    return GatedTwoConvStem(**kwargs)


def no_grid(**kwargs):
    """Breaks the contract: no grid_size, num_patches or kind."""
    stem = TwoConvStem(**kwargs)
    del stem.grid_size, stem.num_patches, stem.kind
    return stem


def stride_eight(**kwargs):
    """Breaks the contract: claims a token pitch of 8 in a patch-4 preset."""
    stem = TwoConvStem(**kwargs)
    stem.stride = 8
    return stem


NOT_CALLABLE = 3

"""ViT stems: the module that turns an image into a grid of d-dim tokens.

`Stem` plugs into timm's VisionTransformer as `embed_layer`, the way timm's PatchEmbed does
(num_patches, grid_size, feat_ratio, dynamic_feat_size, set_input_size), and exposes for the
analyses: `stride` (token pitch in pixels), `grid_size`, `first_conv` and `kind`.

Kinds (Xiao et al. 2021 and the related designs):
  patchify     Conv2d(in, d, p, stride p, bias)                                  (ViT_P)
  conv         [3x3 conv (no bias) -> BN -> ReLU] x n, then 1x1 conv (bias) to d   (ViT_C)
  patchify_bn  patchify, then BN -> ReLU                                          (ablation)
  conv_ln      the conv stem with LayerNorm over channels instead of BN           (ablation)
  cct          CCT tokenizer: [3x3 conv (no bias) -> ReLU -> 3x3/2 max-pool] per stride-2 step
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.layers import Format, LayerNorm2d, nchw_to, to_2tuple

from analysis.errors import one_of

STEMS: Tuple[str, ...] = ("patchify", "conv", "patchify_bn", "conv_ln", "cct")


def conv_stack(in_chans: int, channels: Sequence[int], strides: Sequence[int], embed_dim: int,
               norm: str, **dd) -> nn.Sequential:
    """Returns the conv stem body: [3x3 conv -> norm -> ReLU] per layer, then a 1x1 conv with bias."""
    layers, c_in = [], in_chans
    for c_out, s in zip(channels, strides):
        layers.append(nn.Conv2d(c_in, c_out, 3, stride=s, padding=1, bias=False, **dd))
        layers.append(nn.BatchNorm2d(c_out, **dd) if norm == "bn" else LayerNorm2d(c_out, **dd))
        layers.append(nn.ReLU(inplace=True))
        c_in = c_out
    layers.append(nn.Conv2d(c_in, embed_dim, 1, bias=True, **dd))
    return nn.Sequential(*layers)


def cct_stack(in_chans: int, channels: Sequence[int], strides: Sequence[int], embed_dim: int,
              **dd) -> nn.Sequential:
    """Returns CCT's tokenizer: one conv-ReLU-maxpool layer per stride-2 step of the conv stem.

    Widths follow the conv stem's stride-2 layers; the last layer outputs embed_dim.
    """
    widths = [c for c, s in zip(channels, strides) if s == 2]
    widths[-1] = embed_dim
    layers, c_in = [], in_chans
    for c_out in widths:
        layers += [nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=False, **dd),
                   nn.ReLU(inplace=True),
                   nn.MaxPool2d(3, stride=2, padding=1)]
        c_in = c_out
    return nn.Sequential(*layers)


def patchify_stack(in_chans: int, patch_size: int, embed_dim: int, bias: bool, bn: bool,
                   **dd) -> nn.Sequential:
    """Returns the patchify stem body: one p x p conv with stride p (then BN -> ReLU if bn)."""
    layers = [nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, bias=bias, **dd)]
    if bn:
        layers += [nn.BatchNorm2d(embed_dim, **dd), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def stem_stride(kind: str, patch_size: int, strides: Sequence[int]) -> int:
    """Returns the total stride (token pitch in pixels) a stem of this kind would have."""
    return patch_size if kind in ("patchify", "patchify_bn") else math.prod(strides)


class Stem(nn.Module):
    """Image -> tokens (B, N, d), a drop-in `embed_layer` for timm's VisionTransformer.

    Build with functools.partial(Stem, kind=..., channels=..., strides=...); timm supplies
    img_size, patch_size, in_chans, embed_dim. `channels`/`strides` describe the conv stem's
    3x3 layers (ignored by the patchify kinds; the cct kind uses the stride-2 ones).
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            embed_dim: int = 768,
            kind: str = "patchify",
            channels: Sequence[int] = (),
            strides: Sequence[int] = (),
            bias: bool = True,
            flatten: bool = True,
            output_fmt: Optional[str] = None,
            strict_img_size: bool = True,
            dynamic_img_pad: bool = False,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if kind not in STEMS:
            raise one_of("stem", kind, STEMS)
        if dynamic_img_pad:
            raise ValueError("Stem does not pad images; use an img_size divisible by its stride")
        patch_size = int(to_2tuple(patch_size)[0])
        if kind in ("patchify", "patchify_bn"):
            self.body = patchify_stack(in_chans, patch_size, embed_dim, bias, kind == "patchify_bn", **dd)
        elif kind in ("conv", "conv_ln"):
            if len(channels) != len(strides) or not channels:
                raise ValueError("conv stem needs equal-length, non-empty channels and strides")
            self.body = conv_stack(in_chans, channels, strides, embed_dim, "bn" if kind == "conv" else "ln", **dd)
        else:
            self.body = cct_stack(in_chans, channels, strides, embed_dim, **dd)
        self.kind = kind
        self.stride = stem_stride(kind, patch_size, strides)
        if self.stride != patch_size:
            raise ValueError(f"{kind} stem stride {self.stride} != patch_size {patch_size}")
        self.patch_size = (self.stride, self.stride)
        self.embed_dim = embed_dim
        self.first_conv: nn.Conv2d = self.body[0]
        self.flatten = flatten and output_fmt is None
        self.output_fmt = Format(output_fmt) if output_fmt is not None else Format.NCHW
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = False
        self.set_input_size(img_size)

    def set_input_size(self, img_size=None, patch_size=None) -> None:
        """Sets img_size, grid_size and num_patches for a new input size (the stride is fixed)."""
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise ValueError(f"a {self.kind} stem cannot change its stride {self.stride}")
        if img_size is None:
            img_size = getattr(self, "img_size", None)
        if img_size is None:
            self.img_size = self.grid_size = self.num_patches = None
            return
        self.img_size = to_2tuple(img_size)
        self.grid_size = tuple(s // self.stride for s in self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def feat_ratio(self, as_scalar: bool = True) -> Union[int, Tuple[int, int]]:
        """Returns the total stride (as an int, or an (h, w) pair)."""
        return self.stride if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Returns the token grid (h, w) produced for an image of size img_size."""
        if self.kind in ("patchify", "patchify_bn"):
            return img_size[0] // self.stride, img_size[1] // self.stride
        # padded stride-2 convs / pools round up at every step
        return math.ceil(img_size[0] / self.stride), math.ceil(img_size[1] / self.stride)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialises every stem parameter; returns nothing.

        The paper's stems follow its code (pycls `vitconfigs`, `init_weights_vit`):
          patchify  the p x p conv trunc_normal(std=sqrt(1/fan_in), cut at +-2 absolute,
                    torch's default bounds, as pycls), bias 0;
          conv      the 3x3 convs keep PyTorch's default Conv2d init (kaiming_uniform with
                    a=sqrt(5): U(+-1/sqrt(fan_in)); no bias), the final 1x1
                    normal(std=sqrt(2/out_channels)), bias 0; BN weight 1, bias 0.
        The other kinds are this suite's choices (the paper's code has no such stems):
          patchify_bn  as patchify, BN 1/0;  conv_ln  as conv, LayerNorm 1/0;
          cct          3x3 convs He-normal over fan_in (kaiming_normal_, gain sqrt(2)), as CCT's
                       tokenizer code does.
        """
        convs = [m for m in self.body if isinstance(m, nn.Conv2d)]
        for i, m in enumerate(convs):
            if self.kind in ("patchify", "patchify_bn"):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                nn.init.trunc_normal_(m.weight, std=math.sqrt(1.0 / fan_in))
            elif self.kind == "cct":
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif i == len(convs) - 1:  # the conv stem's final 1x1
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / m.out_channels))
            else:
                m.reset_parameters()  # PyTorch's default; these convs have no bias
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        for m in self.body:
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.reset_parameters()  # weight 1, bias 0 (and fresh BN running statistics)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns tokens (B, N, d) (or NCHW/NHWC maps when built with output_fmt)."""
        _, _, h, w = x.shape
        if self.img_size is not None:
            if self.strict_img_size:
                torch._assert(h == self.img_size[0] and w == self.img_size[1],
                              f"input size ({h}, {w}) does not match the model's {self.img_size}")
            else:
                torch._assert(h % self.stride == 0 and w % self.stride == 0,
                              f"input size ({h}, {w}) is not divisible by the stem stride {self.stride}")
        x = self.body(x)
        if self.flatten:
            return x.flatten(2).transpose(1, 2)
        if self.output_fmt != Format.NCHW:
            return nchw_to(x, self.output_fmt)
        return x

"""ViT stems: the module that turns an image into a grid of d-dim tokens.

Every stem plugs into timm's VisionTransformer as `embed_layer`, the way timm's PatchEmbed does
(num_patches, grid_size, feat_ratio, dynamic_feat_size, set_input_size), and exposes for the
analyses: `stride` (token pitch in pixels), `grid_size`, `first_conv` and `kind`.

The suite's stems (Xiao et al. 2021 and the related designs), one class each; the registry
(analysis.models.registry) names them with `register_stem`, as a user's stem is named:
  PatchifyStem           Conv2d(in, d, p, stride p, bias)                        patchify (ViT_P)
  PatchifyStem(bn=True)  patchify, then BN -> ReLU                               patchify_bn (ablation)
  ConvStem               [3x3 conv (no bias) -> BN -> ReLU] x n, 1x1 conv (bias)  conv (ViT_C)
  ConvStem(norm="ln")    the conv stem with LayerNorm over channels instead      conv_ln (ablation)
  CCTStem                CCT tokenizer: [3x3 conv (no bias) -> ReLU -> 3x3/2 max-pool] per stride-2 step
"""

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.layers import Format, LayerNorm2d, nchw_to, to_2tuple

from analysis.errors import one_of

NORMS = ("bn", "ln")


def conv_stack(
    in_chans: int, channels: Sequence[int], strides: Sequence[int], embed_dim: int, norm: str, **dd
) -> nn.Sequential:
    """Returns the conv stem body: [3x3 conv -> norm -> ReLU] per layer, then a 1x1 conv with bias."""
    layers, c_in = [], in_chans
    for c_out, s in zip(channels, strides):
        layers.append(nn.Conv2d(c_in, c_out, 3, stride=s, padding=1, bias=False, **dd))
        layers.append(nn.BatchNorm2d(c_out, **dd) if norm == "bn" else LayerNorm2d(c_out, **dd))
        layers.append(nn.ReLU(inplace=True))
        c_in = c_out
    layers.append(nn.Conv2d(c_in, embed_dim, 1, bias=True, **dd))
    return nn.Sequential(*layers)


def cct_stack(in_chans: int, channels: Sequence[int], strides: Sequence[int], embed_dim: int, **dd) -> nn.Sequential:
    """Returns CCT's tokenizer: one conv-ReLU-maxpool layer per stride-2 step of the conv stem.

    Widths follow the conv stem's stride-2 layers; the last layer outputs embed_dim.
    """
    widths = [c for c, s in zip(channels, strides) if s == 2]
    widths[-1] = embed_dim
    layers, c_in = [], in_chans
    for c_out in widths:
        layers += [
            nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=False, **dd),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        c_in = c_out
    return nn.Sequential(*layers)


def patchify_stack(in_chans: int, patch_size: int, embed_dim: int, bias: bool, bn: bool, **dd) -> nn.Sequential:
    """Returns the patchify stem body: one p x p conv with stride p (then BN -> ReLU if bn)."""
    layers = [nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, bias=bias, **dd)]
    if bn:
        layers += [nn.BatchNorm2d(embed_dim, **dd), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def stride_product(patch_size: int, strides: Sequence[int]) -> int:
    """A layered stem's stride, known before it is built: the product of its layers' strides."""
    return math.prod(strides)


class Stem(nn.Module):
    """The base of the suite's stems: timm's PatchEmbed interface around `self.body` (an nn.Sequential).

    A subclass builds its body, then calls `finish`; it defines `total_stride(patch_size, strides)`
    (the stride it will have, known before it is built; `finish` checks it) and `init_weights()`.
    """

    kind: str

    def finish(
        self,
        body: nn.Sequential,
        patch_size,
        strides: Sequence[int],
        img_size,
        embed_dim: int,
        flatten: bool,
        output_fmt: Optional[str],
        strict_img_size: bool,
        dynamic_img_pad: bool,
    ) -> None:
        """Sets the body, its stride (`total_stride(patch_size, strides)`) and timm's PatchEmbed
        attributes; raises ValueError on a stride != patch_size."""
        if dynamic_img_pad:
            raise ValueError("Stem does not pad images; use an img_size divisible by its stride")
        patch_size = int(to_2tuple(patch_size)[0])
        self.body = body
        self.stride = self.total_stride(patch_size, strides)
        if self.stride != patch_size:
            raise ValueError(f"{self.kind} stem stride {self.stride} != patch_size {patch_size}")
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
        # padded stride-2 convs / pools round up at every step
        return math.ceil(img_size[0] / self.stride), math.ceil(img_size[1] / self.stride)

    def convs(self) -> list:
        """The body's convs, in order."""
        return [m for m in self.body if isinstance(m, nn.Conv2d)]

    def reset_norms(self) -> None:
        """Norm weights 1, biases 0 (and fresh BN running statistics)."""
        for m in self.body:
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns tokens (B, N, d) (or NCHW/NHWC maps when built with output_fmt)."""
        _, _, h, w = x.shape
        if self.img_size is not None:
            if self.strict_img_size:
                torch._assert(
                    h == self.img_size[0] and w == self.img_size[1],
                    f"input size ({h}, {w}) does not match the model's {self.img_size}",
                )
            else:
                torch._assert(
                    h % self.stride == 0 and w % self.stride == 0,
                    f"input size ({h}, {w}) is not divisible by the stem stride {self.stride}",
                )
        x = self.body(x)
        if self.flatten:
            return x.flatten(2).transpose(1, 2)
        if self.output_fmt != Format.NCHW:
            return nchw_to(x, self.output_fmt)
        return x


class PatchifyStem(Stem):
    """One p x p conv with stride p (ViT_P); bn=True adds BN -> ReLU after it (the paper's ablation).

    Init (the paper's code, pycls `init_weights_vit`): the conv trunc_normal(std=sqrt(1/fan_in), cut
    at +-2 absolute, torch's default bounds, as pycls), bias 0; BN (the suite's choice) 1/0.
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        bn: bool = False,
        bias: bool = True,
        flatten: bool = True,
        output_fmt: Optional[str] = None,
        strict_img_size: bool = True,
        dynamic_img_pad: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.kind = "patchify_bn" if bn else "patchify"
        patch_size = int(to_2tuple(patch_size)[0])
        body = patchify_stack(in_chans, patch_size, embed_dim, bias, bn, device=device, dtype=dtype)
        self.finish(body, patch_size, (), img_size, embed_dim, flatten, output_fmt, strict_img_size, dynamic_img_pad)

    @staticmethod
    def total_stride(patch_size: int, strides: Sequence[int] = ()) -> int:
        """The stem's stride: the patch size."""
        return patch_size

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Returns the token grid (h, w) produced for an image of size img_size."""
        return img_size[0] // self.stride, img_size[1] // self.stride

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialises every stem parameter as the class docstring says; returns nothing."""
        for m in self.convs():
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            nn.init.trunc_normal_(m.weight, std=math.sqrt(1.0 / fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        self.reset_norms()


def check_layout(channels: Sequence[int], strides: Sequence[int]) -> None:
    """Raises ValueError unless channels and strides are equal-length and non-empty."""
    if len(channels) != len(strides) or not channels:
        raise ValueError("conv stem needs equal-length, non-empty channels and strides")


class ConvStem(Stem):
    """The conv stem (ViT_C): [3x3 conv (no bias) -> norm -> ReLU] per (channels, strides) layer, then
    a 1x1 conv with bias to d. norm "bn" (the paper's) or "ln" (LayerNorm over channels, the ablation).

    Init (the paper's code, pycls `init_weights_vit`): the 3x3 convs keep PyTorch's default Conv2d
    init (kaiming_uniform with a=sqrt(5): U(+-1/sqrt(fan_in)); no bias), the final 1x1
    normal(std=sqrt(2/out_channels)), bias 0; norms 1/0.
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        channels: Sequence[int] = (),
        strides: Sequence[int] = (),
        norm: str = "bn",
        bias: bool = True,
        flatten: bool = True,
        output_fmt: Optional[str] = None,
        strict_img_size: bool = True,
        dynamic_img_pad: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise one_of("conv stem norm", norm, NORMS)
        self.kind = "conv" if norm == "bn" else "conv_ln"
        check_layout(channels, strides)
        body = conv_stack(in_chans, channels, strides, embed_dim, norm, device=device, dtype=dtype)
        self.finish(
            body, patch_size, strides, img_size, embed_dim, flatten, output_fmt, strict_img_size, dynamic_img_pad
        )

    total_stride = staticmethod(stride_product)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialises every stem parameter as the class docstring says; returns nothing."""
        convs = self.convs()
        for m in convs[:-1]:
            m.reset_parameters()  # PyTorch's default; these convs have no bias
        nn.init.normal_(convs[-1].weight, std=math.sqrt(2.0 / convs[-1].out_channels))
        nn.init.zeros_(convs[-1].bias)
        self.reset_norms()


class CCTStem(Stem):
    """CCT's tokenizer: [3x3 conv (no bias) -> ReLU -> 3x3/2 max-pool] per stride-2 layer of the conv
    stem's layout (channels, strides), the last one to d. Registered with sequence pooling (no class token).

    Init (the suite's choice; the paper's code has no such stem): the convs He-normal over fan_in
    (kaiming_normal_, gain sqrt(2)), as CCT's tokenizer code does.
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
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
        self.kind = "cct"
        check_layout(channels, strides)
        body = cct_stack(in_chans, channels, strides, embed_dim, device=device, dtype=dtype)
        self.finish(
            body, patch_size, strides, img_size, embed_dim, flatten, output_fmt, strict_img_size, dynamic_img_pad
        )

    total_stride = staticmethod(stride_product)  # each stride-2 step a max-pool

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialises every stem parameter as the class docstring says; returns nothing."""
        for m in self.convs():
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

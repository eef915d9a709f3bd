"""ViTs with pluggable stems, built on timm's VisionTransformer.

Adds what timm lacks: sequence pooling (CCT) and LocalViT's depthwise-conv MLP. Weights follow
the paper's reference code (pycls), module by module: see `init_vit` and the stems' `init_weights`.
"""

from functools import partial
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer

from analysis.models.registry import lookup_stem, stem_layer


class LocalMlp(nn.Module):
    """LocalViT's MLP: fc1 -> GELU -> depthwise 3x3 conv on the token grid -> GELU -> fc2.

    Prefix tokens (class token) skip the depthwise conv; they still pass fc1/fc2.
    Returns tokens of the input's shape (B, N, C).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        act_layer=nn.GELU,
        norm_layer=None,
        bias: bool = True,
        drop: float = 0.0,
        grid_size: Tuple[int, int] = (14, 14),
        num_prefix_tokens: int = 1,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        hidden = hidden_features or in_features
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.fc1 = nn.Linear(in_features, hidden, bias=bias, **dd)
        self.act1 = act_layer()
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=True, **dd)
        self.act2 = act_layer()
        self.norm = norm_layer(hidden, **dd) if norm_layer is not None else nn.Identity()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, out_features or in_features, bias=bias, **dd)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h, w = self.grid_size
        p = self.num_prefix_tokens
        torch._assert(n - p == h * w, f"LocalMlp expects {p}+{h}x{w} tokens, got {n}")
        x = self.act1(self.fc1(x))
        prefix, grid = x[:, :p], x[:, p:]
        grid = grid.transpose(1, 2).reshape(b, -1, h, w)
        grid = self.act2(self.dwconv(grid)).flatten(2).transpose(1, 2)
        x = torch.cat([prefix, grid], dim=1)
        x = self.norm(self.drop1(x))
        return self.drop2(self.fc2(x))


class StemViT(VisionTransformer):
    """timm VisionTransformer whose patch_embed is a stem (any registered or import-path stem, see
    analysis.models.registry); optional CCT sequence pooling.

    seq_pool=True: no class token; pooled features are a softmax-weighted average of the
    final (normed) tokens, weights from a learned Linear(d, 1).
    """

    def __init__(self, *args, seq_pool: bool = False, **kwargs) -> None:
        if seq_pool:
            kwargs.update(class_token=False, global_pool="")
        super().__init__(*args, **kwargs)
        self.seq_pool = nn.Linear(self.embed_dim, 1) if seq_pool else None

    @property
    def stem(self) -> nn.Module:
        """The stem module (same object as patch_embed)."""
        return self.patch_embed

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        """Returns pooled features (B, d): sequence pooling when enabled, else timm's pooling."""
        if self.seq_pool is None or pool_type is not None:
            return super().pool(x, pool_type)
        weights = self.seq_pool(x).softmax(dim=1)  # (B, N, 1)
        return (weights.transpose(1, 2) @ x).squeeze(1)


def set_fused_attn(model: nn.Module, fused: bool) -> int:
    """Sets `fused_attn` on every timm Attention module; returns how many were set."""
    count = 0
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = fused
            count += 1
    return count


def _init_linear(m: nn.Linear, rule: str) -> None:
    """Initialises one Linear by `rule`: "xavier" (bias 0), "mlp" (xavier, bias normal(1e-6)),
    "default" (PyTorch's kaiming_uniform(a=sqrt(5)) weight, bias 0), "zeros" or "trunc02" (bias 0)."""
    if rule == "default":
        m.reset_parameters()
    elif rule == "zeros":
        nn.init.zeros_(m.weight)
    elif rule == "trunc02":
        nn.init.trunc_normal_(m.weight, std=0.02)
    else:
        nn.init.xavier_uniform_(m.weight)
    if m.bias is not None:
        nn.init.normal_(m.bias, std=1e-6) if rule == "mlp" else nn.init.zeros_(m.bias)


@torch.no_grad()
def init_vit(model: StemViT) -> None:
    """Initialises every parameter of a StemViT; raises RuntimeError if one has no rule.

    The paper's code (pycls `vitconfigs`, `init_weights_vit`), applied to every preset and stem:
    class token 0; position embedding normal(0.02); attention qkv xavier_uniform, bias 0;
    attention output projection PyTorch's default Linear weight (kaiming_uniform with a=sqrt(5):
    U(+-1/sqrt(fan_in))), bias 0; MLP linears xavier_uniform, bias normal(1e-6); norms 1/0;
    head 0; the stem by its own `init_weights` (analysis.models.stems).
    This suite's choices for parts the paper's code lacks: CCT's sequence-pooling Linear
    trunc_normal(0.02), bias 0 (as CCT's code); LocalViT's depthwise conv PyTorch's default
    Conv2d init (weight and bias U(+-1/sqrt(9))).
    """
    done = set()

    def mark(module: nn.Module) -> None:
        done.update(id(p) for p in module.parameters())

    if model.cls_token is not None:
        nn.init.zeros_(model.cls_token)
        done.add(id(model.cls_token))
    if model.pos_embed is not None:
        nn.init.normal_(model.pos_embed, std=0.02)
        done.add(id(model.pos_embed))
    if hasattr(model.stem, "init_weights"):  # a user's stem without it keeps its modules' own init
        model.stem.init_weights()
    mark(model.stem)
    for block in model.blocks:
        _init_linear(block.attn.qkv, "xavier")
        _init_linear(block.attn.proj, "default")
        mark(block.attn.qkv)
        mark(block.attn.proj)
        for name, m in block.mlp.named_children():
            if isinstance(m, nn.Linear):
                _init_linear(m, "mlp")
                mark(m)
            elif name == "dwconv":
                m.reset_parameters()
                mark(m)
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            m.reset_parameters()
            mark(m)
    if model.seq_pool is not None:
        _init_linear(model.seq_pool, "trunc02")
        mark(model.seq_pool)
    if isinstance(model.head, nn.Linear):
        _init_linear(model.head, "zeros")
        mark(model.head)
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise RuntimeError(f"init_vit has no rule for {', '.join(missed)}")


def build_vit(s: Dict[str, Any], fused_attn: bool = True) -> StemViT:
    """Returns a StemViT from resolved preset settings `s` (see presets.py for the keys)."""
    stem = s["stem"]
    entry = lookup_stem(stem)
    embed = stem_layer(entry, s["stem_channels"], s["stem_strides"])
    seq_pool = entry.seq_pool
    kwargs: Dict[str, Any] = {}
    if s["local_mlp"]:
        grid = (s["img_size"] // s["patch_size"],) * 2
        kwargs["mlp_layer"] = partial(LocalMlp, grid_size=grid, num_prefix_tokens=0 if seq_pool else 1)
    model = StemViT(
        img_size=s["img_size"],
        patch_size=s["patch_size"],
        in_chans=s["in_chans"],
        num_classes=s["num_classes"],
        embed_dim=s["embed_dim"],
        depth=s["depth"],
        num_heads=s["num_heads"],
        mlp_ratio=s["mlp_ratio"],
        qkv_bias=True,
        embed_layer=embed,
        weight_init="skip",
        seq_pool=seq_pool,
        **kwargs,
    )
    init_vit(model)
    set_fused_attn(model, fused_attn)
    model.stem_name = stem
    return model

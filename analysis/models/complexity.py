"""Model complexity in the pycls convention (Radosavovic et al.; Xiao et al. Table 1).

flops: multiply-accumulates of Conv2d and Linear layers plus the two attention matmuls
(Q K^T and A V), plus one flop per output element of every added bias (a conv or linear with
bias=True), as pycls' conv2d_cx/linear_cx count it; norms, activations, softmax and residual
adds are not counted.
acts: total size of the outputs of those convs, linears and matmuls. params: all parameters.
Counted from one forward pass of a single image with hooks, so any stem or CNN works.
"""

from typing import Dict

import torch
from torch import nn
from timm.layers import Attention


def complexity(model: nn.Module, img_size: int, in_chans: int) -> Dict[str, int]:
    """Returns {"flops": MACs per image, "params": parameter count, "acts": activations per image}."""
    totals = {"flops": 0, "acts": 0}

    def conv_hook(m: nn.Conv2d, inp, out) -> None:
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        totals["flops"] += out.numel() * (k + (m.bias is not None))
        totals["acts"] += out.numel()

    def linear_hook(m: nn.Linear, inp, out) -> None:
        totals["flops"] += out.numel() * (m.in_features + (m.bias is not None))
        totals["acts"] += out.numel()

    def attn_hook(m: Attention, inp, out) -> None:
        b, n, _ = inp[0].shape
        d = m.num_heads * m.head_dim
        totals["flops"] += 2 * b * n * n * d  # Q K^T and A V
        totals["acts"] += b * m.num_heads * n * n + b * n * d  # A, then A V

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, Attention):
            hooks.append(m.register_forward_hook(attn_hook))
    param = next(model.parameters())
    x = torch.zeros(1, in_chans, img_size, img_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return {"flops": int(totals["flops"]), "params": int(params), "acts": int(totals["acts"])}

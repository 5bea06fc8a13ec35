"""An RMSNorm and the linear layer it feeds, run as one fused kernel once the norm's gain is in the weight."""
import os

import torch
import torch.nn.functional as F

from kernels.config import Config
from kernels.rms_norm_linear import fold_norm_weight, fused_rms_norm_linear
from nanovllm.layers.layernorm import RMSNorm
from nanovllm.layers.linear import Linear


def fuse_norm_linear(norm: RMSNorm, linear: Linear, configs: list[Config]) -> None:
    """Fold the gain into `linear` (once, after loading) and route `norm_linear` through the fused kernel.

    `configs[M]` is the kernel config for a batch of M rows (nanovllm.utils.tuning.resolve_configs).
    """
    linear.weight.data = fold_norm_weight(linear.weight.data, norm.weight.data)
    linear.norm_configs = configs


def norm_linear(norm: RMSNorm, linear: Linear, x: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """linear(norm(x + residual)) and the new residual stream x + residual (x alone when residual is None)."""
    configs = linear.norm_configs
    if configs is None:
        if residual is None:
            return linear(norm(x)), x
        y, residual = norm(x, residual)
        return linear(y), residual
    if x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        out = fused_rms_norm_linear(x, linear.weight, linear.bias, norm.eps, residual=residual,
                                    config=configs[x.shape[0]])
        return out if residual is not None else (out, x)
    # A CPU without Triton's interpreter: the same folded computation in PyTorch.
    h = x if residual is None else x + residual
    h32 = h.float()
    y = (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + norm.eps)).to(h.dtype)
    return F.linear(y, linear.weight, linear.bias), h

"""An RMSNorm and the linear layer it feeds, run as one fused kernel once the norm's gain is in the weight."""
import torch

from kernels.config import Config
from kernels.rms_norm_linear import fold_norm_weight, fused_rms_norm_linear
from nanovllm.layers.layernorm import RMSNorm
from nanovllm.layers.linear import Linear, triton_runs


def fuse_norm_linear(norm: RMSNorm, linear: Linear, configs: list[Config | None]) -> None:
    """Move the norm's gain into `linear`'s weight (once, after loading) and route `norm_linear` through the kernel.

    `configs[M]` is the kernel config for a batch of M rows, None where the separate norm and cuBLAS GEMM are
    faster (nanovllm.utils.tuning.resolve_configs); with the gain folded, that path runs the norm with a unit gain.
    """
    linear.weight.data = fold_norm_weight(linear.weight.data, norm.weight.data)
    norm.weight.data.fill_(1.0)
    linear.norm_configs = configs


def norm_linear(norm: RMSNorm, linear: Linear, x: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """linear(norm(x + residual)) and the new residual stream x + residual (x alone when residual is None)."""
    config = linear.norm_configs[x.shape[0]] if linear.norm_configs is not None else None
    # Where the kernel cannot run, the separate path computes the same.
    if config is None or not triton_runs(x):
        if residual is None:
            return linear(norm(x)), x
        y, residual = norm(x, residual)
        return linear(y), residual
    out = fused_rms_norm_linear(x, linear.weight, linear.bias, norm.eps, residual=residual, config=config)
    return out if residual is not None else (out, x)

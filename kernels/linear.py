"""The fused kernel's tuned GEMM without the norm: out = x @ W.T + b, for the decode step's plain linears.

o_proj and down_proj read no RMSNorm, but at decode sizes cuBLAS runs them as a split-K GEMM plus a reduce
kernel; on an H200 a plain Triton GEMM was faster at M = 1-16 (llama-7b o_proj 12.4-12.9 vs 13.8-13.9 us,
down_proj 26.9-27.2 vs 28.2-30.0 us: scripts/exp_linear_sites.py), and each kernel it saves also saves a gap in
the decode CUDA graph. It is the kernels of kernels/rms_norm_linear.py compiled with HAS_NORM=False (no row
statistics prologue, no 1/RMS scale, bias still added), launched by the same code; Config.SUMSQ_IN_LOOP must
be 0. Tuned as kernel "linear" (search_spaces/linear.py).
"""
from __future__ import annotations

import torch

from kernels.checks import check_inputs
from kernels.config import Config
from kernels.rms_norm_linear import launch

__all__ = ["linear"]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           config: Config | None = None) -> torch.Tensor:
    """x @ weight.T + bias, as F.linear; config None: kernels.config.default_config for the shape."""
    check_inputs(x, weight, bias, None, None)
    K, N = x.shape[-1], weight.shape[0]
    out, _ = launch(x.reshape(-1, K), weight, bias, config, has_norm=False)
    return out.reshape(*x.shape[:-1], N)

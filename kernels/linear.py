"""The fused kernel's tuned GEMM without the norm: out = x @ W.T + b, for the decode step's plain linears.

o_proj and down_proj read no RMSNorm, but at decode sizes cuBLAS runs them as a split-K GEMM plus a reduce
kernel; on an H200 a plain Triton GEMM was faster at M = 1-16 (llama-7b o_proj 12.4-12.9 vs 13.8-13.9 us,
down_proj 26.9-27.2 vs 28.2-30.0 us: scripts/exp_linear_sites.py), and each kernel it saves also saves a gap in
the decode CUDA graph. It is the kernels of kernels/rms_norm_linear.py compiled with HAS_NORM=False (no row
statistics prologue, no 1/RMS scale, bias still added), launched by the same code; Config.SUMSQ_IN_LOOP must
be 0. Tuned as kernel "linear" (search_spaces/linear.py).

`linear_residual` also adds the residual stream and returns each row's sum of squares: the statistics the
next RMSNorm needs, computed by the kernel that sums the split-K partials (kernels/row_stats.py), so that the
fused site after it launches no row-statistics kernel of its own: two kernels fewer a decoder layer.
"""
from __future__ import annotations

import contextlib

import torch

from kernels import prepare
from kernels.checks import check_inputs, check_like
from kernels.config import Config
from kernels.pdl import pdl_launch_args
from kernels.gemm import launch, main_loop
from kernels.row_stats import launch_row_stats, row_chunks

__all__ = ["linear", "linear_residual"]

# Columns a program of the row statistics sums after a plain linear: 4 programs a row of a 4096-wide model, whose
# loads overlap where one program a row would issue them in turn.
RESIDUAL_CHUNK = 1024


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           config: Config | None = None, trusted: bool = False) -> torch.Tensor:
    """x @ weight.T + bias, as F.linear; config None: kernels.config.default_config for the shape. trusted: `config`
    was validated for this shape and device already (tuning_table.select_configs)."""
    check_inputs(x, weight, bias, None, None)
    K, N = x.shape[-1], weight.shape[0]
    out, _ = launch(x.reshape(-1, K), weight, bias, config, has_norm=False, trusted=trusted)
    return out.reshape(*x.shape[:-1], N)


def linear_residual(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor, *,
                    config: Config | None = None, trusted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, row_sumsq): h = (x @ weight.T + bias) + residual, rounded as F.linear and the add round it, and the
    fp32 sums of squares of h's rows as partial sums over chunks of RESIDUAL_CHUNK columns, (chunks,
    *x.shape[:-1]), which `fused_rms_norm_linear(h, ..., row_sumsq=...)` takes instead of computing them."""
    check_inputs(x, weight, bias, None, None)
    K, N, lead = x.shape[-1], weight.shape[0], x.shape[:-1]
    check_like("residual", residual, (*lead, N), x.dtype, x)
    x2, r2 = x.reshape(-1, K), residual.reshape(-1, N)
    M = x2.shape[0]
    config = prepare.choose_config(config, M, N, K, x2, weight, None, None, has_norm=False, trusted=trusted)
    bias = bias.contiguous() if bias is not None else None  # indexed with unit stride
    # With one split the GEMM writes its output into h, and the row statistics add the residual in place.
    h = prepare.new_buffer((M, N), x2, x2.dtype)
    if M == 0:
        return h.reshape(*lead, N), prepare.new_buffer((row_chunks(N, RESIDUAL_CHUNK), *lead), x2, torch.float32)
    wide = prepare.is_wide(config.SPLIT_K * M * N, x2, weight, h, r2)
    pdl = pdl_launch_args(x2.device)
    with torch.cuda.device(x2.device) if x2.is_cuda else contextlib.nullcontext():
        y = main_loop(x2, weight, bias, h, h, h, config, eps=0.0, norm_weight=None, residual=None,
                      has_norm=False, in_loop=False, wide=wide, pdl=pdl)
        ss = launch_row_stats(y, h, residual=r2, bias=bias if config.SPLIT_K > 1 else None, wide=wide, pdl=pdl,
                              chunk=RESIDUAL_CHUNK)
    return h.reshape(*lead, N), ss.reshape(-1, *lead)

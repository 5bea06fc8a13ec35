"""Row statistics of the fused RMSNorm+Linear: the new residual stream h and each row's fp32 sum of squares.

Two kernels launch it before a fused site's GEMM reads h (kernels/rms_norm_linear.py, SUMSQ_IN_LOOP=0):
- the fused site's own prologue: h = x + residual;
- the epilogue of the plain linear before it (kernels/linear.py `linear_residual`): h = (x @ W.T + b) + residual,
  read from the GEMM's output or summed from its split-K partials (this kernel is then the split-K reduce).
  The fused site that follows starts from (h, sums of squares) and launches no prologue of its own.
One program per row, the whole row in one chunk up to 8192 columns: at decode sizes this kernel is latency.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.pdl import pdl_wait


@triton.jit
def _row_stats_kernel(x_ptr, r_ptr, b_ptr, h_ptr, ss_ptr, K, stride_xs, stride_xm, stride_xk, stride_rm,
                      stride_rk, stride_hm, PARTS: tl.constexpr, HAS_BIAS: tl.constexpr,
                      HAS_RESIDUAL: tl.constexpr, WRITE_H: tl.constexpr, WIDE: tl.constexpr,
                      BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr):
    """h = (sum of the PARTS partial rows of x [+ bias], rounded to h's dtype) [+ residual], rounded again,
    as the separate linear and `y + residual` round; stored when WRITE_H; its fp32 sum of squares always."""
    pdl_wait(USE_PDL)
    row = tl.program_id(0)
    if WIDE:  # some element offset passes 2**31: index in int64
        row = row.to(tl.int64)
        stride_xs = stride_xs.to(tl.int64)
    sumsq = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = offs_k < K
        x_row = x_ptr + row * stride_xm + offs_k * stride_xk
        a = tl.load(x_row, mask=mask, other=0.0).to(tl.float32)
        for s in tl.static_range(1, PARTS):
            a += tl.load(x_row + s * stride_xs, mask=mask, other=0.0)
        if HAS_BIAS:
            a += tl.load(b_ptr + offs_k, mask=mask, other=0.0).to(tl.float32)
        a = a.to(h_ptr.dtype.element_ty)
        if HAS_RESIDUAL:
            r = tl.load(r_ptr + row * stride_rm + offs_k * stride_rk, mask=mask, other=0.0)
            a = (a.to(tl.float32) + r.to(tl.float32)).to(h_ptr.dtype.element_ty)
        if WRITE_H:
            tl.store(h_ptr + row * stride_hm + offs_k, a, mask=mask)
        a32 = a.to(tl.float32)
        sumsq += a32 * a32
    tl.store(ss_ptr + row, tl.sum(sumsq, axis=0))


def launch_row_stats(x: torch.Tensor, h: torch.Tensor, ss: torch.Tensor, *, residual: torch.Tensor | None,
                     bias: torch.Tensor | None, wide: bool, pdl: dict) -> None:
    """Fill ss (M,) with the fp32 row sums of squares of h = x [summed over its partials] [+ bias] [+ residual],
    storing h (M, K) unless that is x as given (h is then not touched). x is (M, K), or (parts, M, K) fp32
    split-K partials."""
    parts = x.shape[0] if x.dim() == 3 else 1
    x3 = x if x.dim() == 3 else x.unsqueeze(0)
    _, M, K = x3.shape
    r = residual if residual is not None else h
    block_k = min(8192, triton.next_power_of_2(K))
    _row_stats_kernel[(M,)](
        x3, r, bias if bias is not None else h, h, ss, K, x3.stride(0), x3.stride(1), x3.stride(2), r.stride(0),
        r.stride(1), h.stride(0), PARTS=parts, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        WRITE_H=residual is not None or parts > 1 or bias is not None, WIDE=wide, BLOCK_K=block_k,
        num_warps=8 if block_k >= 4096 else 4, **pdl)

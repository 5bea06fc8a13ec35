"""Row statistics of the fused RMSNorm+Linear: the new residual stream h and each row's fp32 sum of squares.

Two kernels launch it before a fused site's GEMM reads h (kernels/rms_norm_linear.py, SUMSQ_IN_LOOP=0):
- the fused site's own prologue: h = x + residual;
- the epilogue of the plain linear before it (kernels/linear.py `linear_residual`): h = (x @ W.T + b) + residual,
  read from the GEMM's output or summed from its split-K partials (this kernel is then the split-K reduce).
  The fused site that follows starts from (h, sums of squares) and launches no prologue of its own.
One program per row and chunk of columns: at decode sizes this kernel is latency, and a row's sum of squares
leaves it as partial sums, one per chunk, which the GEMM that reads them adds up.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import prepare
from kernels.pdl import pdl_wait


@triton.jit
def _row_stats_kernel(x_ptr, r_ptr, b_ptr, h_ptr, ss_ptr, M, K, stride_xs, stride_xm, stride_xk, stride_rm,
                      stride_rk, stride_hm, PARTS: tl.constexpr, HAS_BIAS: tl.constexpr,
                      HAS_RESIDUAL: tl.constexpr, WRITE_H: tl.constexpr, WIDE: tl.constexpr,
                      BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr):
    """Program (row, c), columns [c * BLOCK_K, (c + 1) * BLOCK_K): h = (sum of the PARTS partial rows of x
    [+ bias], rounded to h's dtype) [+ residual], rounded again, as the separate linear and `y + residual`
    round; stored when WRITE_H; the fp32 sum of squares of the chunk to ss[c, row]."""
    pdl_wait(USE_PDL)
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    if WIDE:  # some element offset passes 2**31: index in int64
        row = row.to(tl.int64)
        stride_xs = stride_xs.to(tl.int64)
    offs_k = chunk * BLOCK_K + tl.arange(0, BLOCK_K)
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
    tl.store(ss_ptr + chunk * M + row, tl.sum(a32 * a32, axis=0))


def row_chunks(K: int, chunk: int) -> int:
    """How many partial sums `launch_row_stats` writes a row of K columns."""
    return triton.cdiv(K, min(chunk, triton.next_power_of_2(K)))


def launch_row_stats(x: torch.Tensor, h: torch.Tensor, *, residual: torch.Tensor | None, bias: torch.Tensor | None,
                     wide: bool, pdl: dict, chunk: int = 8192) -> torch.Tensor:
    """The fp32 sums of squares of the rows of h = x [summed over its partials] [+ bias] [+ residual], as
    (chunks, M) partial sums over `chunk` columns each (more programs a row: less latency; the GEMM reading
    them adds them up), storing h (M, K) unless that is x as given (h is then not touched). x is (M, K), or
    (parts, M, K) fp32 split-K partials."""
    parts = x.shape[0] if x.dim() == 3 else 1
    x3 = x if x.dim() == 3 else x.unsqueeze(0)
    _, M, K = x3.shape
    r = residual if residual is not None else h
    block_k = min(chunk, triton.next_power_of_2(K))
    ss = prepare.new_buffer((row_chunks(K, chunk), M), x, torch.float32)
    _row_stats_kernel[(M, ss.shape[0])](
        x3, r, bias if bias is not None else h, h, ss, M, K, x3.stride(0), x3.stride(1), x3.stride(2), r.stride(0),
        r.stride(1), h.stride(0), PARTS=parts, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        WRITE_H=residual is not None or parts > 1 or bias is not None, WIDE=wide, BLOCK_K=block_k,
        num_warps=8 if block_k >= 4096 else 4, **pdl)
    return ss

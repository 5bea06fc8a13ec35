"""The second kernel of a split-K GEMM: sums the fp32 partial products, scales each row by 1/RMS (the fused
RMSNorm+Linear) and adds the bias. SPLIT_K > 1 pays where the output has too few tiles to keep every SM
streaming weights (decode sizes)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.pdl import pdl_wait

_BLOCK_M, _BLOCK_N = 16, 128


@triton.jit
def _split_k_reduce_kernel(
    ws_ptr, ss_ptr, b_ptr, out_ptr, M, N, K, eps, stride_om,
    HAS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, SS_PARTS: tl.constexpr, WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr,
):
    """out = sum of the SPLIT_K partials [x 1/RMS from the SS_PARTS partial sums of squares] [+ bias]."""
    pdl_wait(USE_PDL)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    if WIDE:
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
    mask_m = offs_m < M
    mask = mask_m[:, None] & (offs_n[None, :] < N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    sumsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(ws_ptr + (s * M + offs_m[:, None]) * N + offs_n[None, :], mask=mask, other=0.0)
    if HAS_NORM:
        for s in tl.static_range(SS_PARTS):
            sumsq += tl.load(ss_ptr + s * M + offs_m, mask=mask_m, other=0.0)
        acc = acc * (1.0 / tl.sqrt(sumsq / K + eps))[:, None]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


def launch_split_k_reduce(ws: torch.Tensor, ss: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
                          K: int, eps: float, *, has_norm: bool, ss_parts: int, wide: bool, pdl: dict) -> None:
    """out (M, N) from the partials ws (SPLIT_K, M, N) of a product over K; with has_norm, ss holds ss_parts
    rows of M partial sums of squares."""
    split, M, N = ws.shape
    _split_k_reduce_kernel[(triton.cdiv(M, _BLOCK_M), triton.cdiv(N, _BLOCK_N))](
        ws, ss, bias if bias is not None else ws, out, M, N, K, float(eps), out.stride(0),
        HAS_NORM=has_norm, HAS_BIAS=bias is not None, SPLIT_K=split, SS_PARTS=ss_parts, WIDE=wide,
        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, num_warps=4, **pdl)

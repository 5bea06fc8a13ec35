"""The GEMM every linear kernel here runs: out = x @ W.T + b, with the fused RMSNorm and the paired epilogues
compiled in by constexpr flags; and the launch code the wrappers share.

The 1/RMS of a row is a scalar, so it commutes with the matrix product and is applied in the epilogue, before the
bias. Where the fp32 sum of squares comes from is a tunable (Config.SUMSQ_IN_LOOP):
- 1: accumulated inside the K loop from the A tiles the product reads (one launch);
- 0: a row-statistics kernel (kernels/row_stats.py) reads each row once (adding the residual and writing h on
  the way) and the K loop is a plain GEMM; where the plain linear before the site computed those statistics
  in its own epilogue (row_sumsq), nothing runs before the GEMM. Triton 3.6 cannot software-pipeline an A tile
  that also feeds a reduction, so this is often the faster of the two (docs/PERF_NOTES.md has the figures).
With SPLIT_K > 1 each split writes its partial product (and partial sum of squares) to an fp32 workspace, and a
small second kernel (kernels/split_k.py) reduces them, scales and adds the bias. HAS_NORM=False is the plain GEMM
of kernels/linear.py: no row statistics, no 1/RMS scale. GATED and ROTARY are the epilogues of kernels/paired.py.
Row tiles below tl.dot's 16 rows (Config.BLOCK_M 1..8, decode sizes) run a GEMV-like main loop: each row's products
with the weight tile summed over K in fp32, every epilogue unchanged. At M = 1 a 16-row tile computes 15 rows of
padding; these tiles also let a program stream fewer weight columns with fewer warps, as Helion's autotuner chose
for llama-7b QKV (docs/PERF_NOTES.md).
Callers: kernels/rms_norm_linear.py (the fused wrapper) and kernels/linear.py (the plain one).
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from kernels import prepare
from kernels.config import Config, sm_count
from kernels.epilogue import PLAIN, Epilogue
from kernels.paired import RotaryKV, rotary_store, silu_and_mul
from kernels.pdl import pdl_launch_args, pdl_launch_next, pdl_wait_first
from kernels.row_stats import launch_row_stats
from kernels.split_k import launch_split_k_reduce
from kernels.tiles import grouped_tile
from kernels.tma_gemm import launch_tma_gemm


@triton.jit
def gemv_rows(acc, a, b, BLOCK_M: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] + a [BLOCK_M, BLOCK_K] @ b [BLOCK_N, BLOCK_K].T in fp32, one row of a at a time:
    each product is a [BLOCK_N, BLOCK_K] tile laid out like the weight's, where a 3-D broadcast of all rows at once
    spilled registers on sm_90 (triton 3.6) from 4x64x128 a warp."""
    rows = tl.arange(0, BLOCK_M)[:, None]
    for m in tl.static_range(BLOCK_M):
        a_row = tl.sum(tl.where(rows == m, a, 0.0), axis=0)
        acc += tl.where(rows == m, tl.sum(b * a_row[None, :], axis=1)[None, :], 0.0)
    return acc


@triton.jit
def _gemm_kernel(
    x_ptr, r_ptr, w_ptr, g_ptr, b_ptr, out_ptr, h_ptr, ws_ptr, ss_ptr,
    pos_ptr, cs_ptr, slot_ptr, kc_ptr, vc_ptr,
    M, N, K, eps,
    stride_xm, stride_xk, stride_rm, stride_rk, stride_wn, stride_wk,
    stride_om, stride_hm, stride_cs, stride_cslot, stride_ch,
    HAS_NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_NORM_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr, IEEE: tl.constexpr, SUMSQ_IN_LOOP: tl.constexpr, WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr, GATED: tl.constexpr, ROTARY: tl.constexpr, HALF: tl.constexpr,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, SS_PARTS: tl.constexpr, EVICT: tl.constexpr,
    GEMV_STAGES: tl.constexpr, USE_PDL: tl.constexpr,
):
    """With SUMSQ_IN_LOOP=0, x_ptr is already x + residual and ss_ptr holds SS_PARTS rows of M partial sums of
    squares (kernels/row_stats.py).
    HAS_NORM=False (then SUMSQ_IN_LOOP=0): a plain GEMM, ss_ptr unused.
    GATED or ROTARY (kernels/paired.py; then SPLIT_K=1): N counts column pairs, and a program also streams the
    paired rows of its columns (pos_ptr .. stride_ch and HALF .. NUM_KV_HEADS: ROTARY only).
    BLOCK_M < 16: the GEMV-like tile (gemv_rows), its loads pipelined over GEMV_STAGES (the launch's num_stages)."""
    pdl_wait_first(USE_PDL)
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    pid_k = tl.program_id(1)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if WIDE:  # some element offset passes 2**31: index in int64
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
    mask_m = offs_m < M
    mask_n = offs_n < N
    if ROTARY:  # a program's columns lie in one head, whose second half is HALF rows further down
        rows = offs_n + (pid_n * BLOCK_N // HALF) * HALF
        pair_rows = HALF
    else:  # GATED: the up half follows the N gate rows
        rows = offs_n
        pair_rows = N
    # Only one column of programs writes the new residual stream, so each element is written once.
    write_h = HAS_RESIDUAL and pid_n == 0

    # EVICT=1: the weight, read once, is streamed past L2 (evict_first) and the activations, read by every
    # column of programs, stay (evict_last). Only unpipelined loads keep the hint: the pipelined K loop's cp.async
    # copies carry none (sm_90, triton 3.6).
    w_policy: tl.constexpr = "evict_first" if EVICT else ""
    x_policy: tl.constexpr = "evict_last" if EVICT else ""
    k_blocks = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_blocks, SPLIT_K)
    kb_start = pid_k * per_split
    kb_end = tl.minimum(kb_start + per_split, k_blocks)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_pair = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # GATED or ROTARY only
    sumsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    # tl.dot's loads are software-pipelined over the launch's num_stages; the GEMV tile's only where the loop asks.
    for kb in tl.range(kb_start, kb_end, num_stages=None if BLOCK_M >= 16 else GEMV_STAGES):
        offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        if EVEN_K:
            mask_a = mask_m[:, None]
            mask_b = mask_n[None, :]
        else:
            mask_k = offs_k < K
            mask_a = mask_m[:, None] & mask_k[None, :]
            mask_b = mask_k[:, None] & mask_n[None, :]
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk, mask=mask_a, other=0.0,
                    eviction_policy=x_policy)
        if HAS_RESIDUAL and SUMSQ_IN_LOOP:
            r = tl.load(r_ptr + offs_m[:, None] * stride_rm + offs_k[None, :] * stride_rk, mask=mask_a, other=0.0,
                        eviction_policy=x_policy)
            # Round the sum to the input dtype, as the unfused `x + residual` does.
            a = (a.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
            if write_h:
                tl.store(h_ptr + offs_m[:, None] * stride_hm + offs_k[None, :], a, mask=mask_a)
        a32 = a.to(tl.float32)
        if SUMSQ_IN_LOOP:
            sumsq += tl.sum(a32 * a32, axis=1)
        if HAS_NORM_WEIGHT:
            if EVEN_K:
                g = tl.load(g_ptr + offs_k).to(tl.float32)
            else:
                g = tl.load(g_ptr + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
            a = (a32 * g[None, :]).to(x_ptr.dtype.element_ty)
        if BLOCK_M >= 16:
            w_tile = w_ptr + offs_k[:, None] * stride_wk + rows[None, :] * stride_wn
            b = tl.load(w_tile, mask=mask_b, other=0.0, eviction_policy=w_policy)
            acc = tl.dot(a, b, acc, input_precision="ieee" if IEEE else None)
            if GATED or ROTARY:
                b_pair = tl.load(w_tile + pair_rows * stride_wn, mask=mask_b, other=0.0, eviction_policy=w_policy)
                acc_pair = tl.dot(a, b_pair, acc_pair, input_precision="ieee" if IEEE else None)
        else:  # a GEMV-like tile, below tl.dot's 16 rows: products summed over K in fp32, W read K-contiguous
            w_tile = w_ptr + rows[:, None] * stride_wn + offs_k[None, :] * stride_wk
            mask_w = mask_n[:, None] if EVEN_K else mask_n[:, None] & mask_k[None, :]
            a32 = a.to(tl.float32)
            b = tl.load(w_tile, mask=mask_w, other=0.0, eviction_policy=w_policy)
            acc = gemv_rows(acc, a32, b.to(tl.float32), BLOCK_M)
            if GATED or ROTARY:
                b_pair = tl.load(w_tile + pair_rows * stride_wn, mask=mask_w, other=0.0, eviction_policy=w_policy)
                acc_pair = gemv_rows(acc_pair, a32, b_pair.to(tl.float32), BLOCK_M)
    pdl_launch_next(USE_PDL)

    if HAS_NORM:
        if not SUMSQ_IN_LOOP:
            for s in tl.static_range(SS_PARTS):
                sumsq += tl.load(ss_ptr + s * M + offs_m, mask=mask_m, other=0.0)
    if SPLIT_K == 1:
        if HAS_NORM:
            rstd = 1.0 / tl.sqrt(sumsq / K + eps)
            acc = acc * rstd[:, None]
            acc_pair = acc_pair * rstd[:, None]
        if HAS_BIAS:
            acc += tl.load(b_ptr + rows, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            if GATED or ROTARY:
                acc_pair += tl.load(b_ptr + pair_rows + rows, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if ROTARY:
            head = pid_n * BLOCK_N // HALF
            rotary_store(acc, acc_pair, offs_m, mask_m, offs_n - head * HALF, head, out_ptr, stride_om, pos_ptr,
                         cs_ptr, stride_cs, slot_ptr, kc_ptr, vc_ptr, stride_cslot, stride_ch, HALF, NUM_Q_HEADS,
                         NUM_KV_HEADS)
        else:
            if GATED:
                acc = silu_and_mul(acc, acc_pair, out_ptr.dtype.element_ty)
            out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
            tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])
    else:
        ws_ptrs = ws_ptr + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :]
        tl.store(ws_ptrs, acc, mask=mask_m[:, None] & mask_n[None, :])
        if SUMSQ_IN_LOOP and pid_n == 0:
            tl.store(ss_ptr + pid_k * M + offs_m, sumsq, mask=mask_m)


def launch(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: Config | None, *,
           eps: float = 1e-6, norm_weight: torch.Tensor | None = None, residual: torch.Tensor | None = None,
           row_sumsq: torch.Tensor | None = None, has_norm: bool = True, epilogue: Epilogue = PLAIN,
           rotary: RotaryKV | None = None, trusted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The launch code of both wrappers (inputs already checked, 2-D): picks or validates the config (not a
    `trusted` one, prepare.choose_config), allocates, launches. Returns (out, h); h is out itself without a
    residual. has_norm=False: x2 @ weight.T + bias. A gated or rotary `epilogue` runs kernels/paired.py's GATED or
    ROTARY, the latter writing into `rotary`'s cache."""
    M, K = x2.shape
    gated = epilogue.kind == "gated"
    config = prepare.choose_config(config, M, weight.shape[0], K, x2, weight, residual, norm_weight, has_norm,
                                   epilogue, trusted)
    rows = weight.shape[0]
    N = rotary.num_q_heads * rotary.head_dim if rotary is not None else rows // 2 if gated else rows
    # The per-column vectors are indexed with unit stride in the kernels; copies only when strided.
    bias = bias.contiguous() if bias is not None else None
    norm_weight = norm_weight.contiguous() if norm_weight is not None else None
    out = prepare.new_buffer((M, N), x2, x2.dtype)
    h = prepare.new_buffer((M, K), x2, x2.dtype) if residual is not None else out
    if M == 0:
        return out, h
    in_loop = bool(config.SUMSQ_IN_LOOP) and row_sumsq is None
    split = config.SPLIT_K
    # Without the norm there are no row statistics: `out` only fills the unused pointer argument. The prologue's
    # statistics are allocated where it runs.
    if row_sumsq is not None:
        ss = row_sumsq
    elif has_norm and in_loop and split > 1:
        ss = prepare.new_buffer((split, M), x2, torch.float32)
    else:
        ss = out
    caches = [rotary.k_cache, rotary.v_cache] if rotary is not None else []
    wide = prepare.is_wide(split * M * N, x2, weight, out, h, *([residual] if residual is not None else []), *caches)
    pdl = pdl_launch_args(x2.device)
    # Triton launches on the current device, which need not be x's.
    with torch.cuda.device(x2.device) if x2.is_cuda else contextlib.nullcontext():
        a = x2
        if has_norm and not in_loop and row_sumsq is None:
            ss = launch_row_stats(x2, h, residual=residual, bias=None, wide=wide, pdl=pdl)
            a = h if residual is not None else x2
        ws = main_loop(a, weight, bias, out, h, ss, config, eps=eps, norm_weight=norm_weight,
                       residual=residual if in_loop else None, has_norm=has_norm, in_loop=in_loop, wide=wide, pdl=pdl,
                       gated=gated, rotary=rotary)
        if split > 1:
            launch_split_k_reduce(ws, ss, bias, out, K, eps, has_norm=has_norm,
                                  ss_parts=split if in_loop else ss.shape[0], wide=wide, pdl=pdl)
    return out, h


def main_loop(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, h: torch.Tensor,
              ss: torch.Tensor, config: Config, *, eps: float, norm_weight: torch.Tensor | None,
              residual: torch.Tensor | None, has_norm: bool, in_loop: bool, wide: bool, pdl: dict,
              gated: bool = False, rotary: RotaryKV | None = None) -> torch.Tensor:
    """Launch the GEMM over a (TMA or pointer loads). With SPLIT_K > 1 it writes fp32 partials to a workspace,
    returned for the caller's reduce; otherwise the finished `out` (returned too). gated, rotary: see `launch`."""
    M, K = a.shape
    N = weight.shape[0] // 2 if gated or rotary is not None else weight.shape[0]  # columns, or column pairs
    if config.TMA:
        launch_tma_gemm(a, weight, out, ss, bias, eps, config, sm_count(a.device), has_norm=has_norm, pdl=pdl,
                        ss_parts=ss.shape[0] if has_norm else 1)
        return out
    split = config.SPLIT_K
    ws = prepare.new_buffer((split, M, N), a, torch.float32) if split > 1 else out
    r2 = residual if residual is not None else a
    # ROTARY's tensors; the other launches pass `a` for the unused pointers.
    rot = (rotary.positions, rotary.cos_sin_cache, rotary.slot_mapping, rotary.k_cache, rotary.v_cache) \
        if rotary is not None else (a,) * 5
    rot_strides = (rotary.cos_sin_cache.stride(0), rotary.k_cache.stride(1), rotary.k_cache.stride(2)) \
        if rotary is not None else (0, 0, 0)
    grid = (triton.cdiv(M, config.BLOCK_M) * triton.cdiv(N, config.BLOCK_N), split)
    _gemm_kernel[grid](
        a, r2, weight, norm_weight if norm_weight is not None else a, bias if bias is not None else a,
        out, h, ws, ss, *rot, M, N, K, float(eps),
        a.stride(0), a.stride(1), r2.stride(0), r2.stride(1), weight.stride(0), weight.stride(1),
        out.stride(0), h.stride(0), *rot_strides,
        HAS_NORM=has_norm, HAS_RESIDUAL=residual is not None, HAS_NORM_WEIGHT=norm_weight is not None,
        HAS_BIAS=bias is not None, EVEN_K=K % config.BLOCK_K == 0, IEEE=a.dtype == torch.float32,
        SUMSQ_IN_LOOP=in_loop, WIDE=wide, BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N,
        BLOCK_K=config.BLOCK_K, GROUP_M=config.GROUP_M, SPLIT_K=split, GATED=gated, ROTARY=rotary is not None,
        HALF=rotary.head_dim // 2 if rotary is not None else 1,
        NUM_Q_HEADS=rotary.num_q_heads if rotary is not None else 0,
        NUM_KV_HEADS=rotary.k_cache.shape[2] if rotary is not None else 0,
        SS_PARTS=ss.shape[0] if has_norm and not in_loop else 1, EVICT=config.EVICT,
        GEMV_STAGES=config.num_stages,
        num_warps=config.num_warps, num_stages=config.num_stages, **pdl,
    )
    return ws

"""Causal attention of new tokens over a paged KV cache: plain, prefix-cached and chunked prefill.

One program handles BLOCK_Q consecutive query tokens of one sequence for all GROUP query heads
that share a KV head, packed as the BLOCK_M = BLOCK_Q * GROUP rows of one tile, so every K/V tile
read through the block table serves the whole group. The programs of a batch are laid out without a
host sync: sequence b owns the program ids from cu_seqlens_q[b] // BLOCK_Q + b on, which leaves room
for its ceil(q_len / BLOCK_Q) tiles; a program finds its sequence by binary search and exits when
it has no tile. Softmax is online, in fp32, in base 2 (scale folded with log2(e)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.pdl import pdl_launch_args, pdl_wait
from kernels.attention_tile import LOG2E, attend_tile
from kernels.validation import (FLOAT_DTYPES, check_attention_heads, check_block_tables, check_kv_cache,
                                     check_shape, check_sliding_window, check_tensor)


@dataclass(frozen=True)
class PrefillTile:
    """The kernel's launch parameters: query rows of a program (BLOCK_M = BLOCK_Q query tokens x GROUP heads, a power
    of two >= GROUP), keys a loop step reads, warps and pipeline stages."""
    BLOCK_M: int
    BLOCK_N: int
    num_warps: int
    num_stages: int


def default_prefill_tile(dtype: torch.dtype, num_tokens: int, group: int) -> PrefillTile:
    """What a step launches where the tuning table has no tile (search_spaces/attention.py tunes the alternatives)."""
    if dtype == torch.float32:
        # fp32 dots run as FMA loops (input_precision="ieee"): small tiles keep them in registers.
        return PrefillTile(max(16, triton.next_power_of_2(group)), 32, 4, 2)
    # Larger tiles pay off once there are enough query rows to keep every SM busy.
    block_m = max(128 if num_tokens * group >= 4096 else 64, triton.next_power_of_2(group))
    return PrefillTile(block_m, 64, 8 if block_m >= 128 else 4, 2)


# The batch size and the block table's width change from step to step; Triton would compile a kernel for each of
# their classes (1, a multiple of 16, other) as the steps first meet them, seconds of a serving run each.
@triton.jit(do_not_specialize=["num_seqs", "stride_bt"])
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, o_ptr, block_tables_ptr, cu_seqlens_q_ptr, seq_lens_ptr,
    qk_scale, window, num_seqs,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_kb, stride_ks, stride_kh, stride_bt,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, USE_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    # The last sequence whose first program id is <= pid.
    # Both bounds are tensors so the loop carries one type even when num_seqs is specialized to 1.
    lo = tl.full((), 0, tl.int32)
    hi = lo + num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tl.load(cu_seqlens_q_ptr + mid) // BLOCK_Q + mid <= pid:
            lo = mid
        else:
            hi = mid - 1
    seq = lo
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    q_block = pid - (q_start // BLOCK_Q + seq)
    if q_block * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len

    offs_m = tl.arange(0, BLOCK_M)
    q_idx = q_block * BLOCK_Q + offs_m // GROUP
    head = kv_head * GROUP + offs_m % GROUP
    mask_m = (offs_m < BLOCK_Q * GROUP) & (q_idx < q_len)
    pos = context_len + q_idx
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    tok = (q_start + q_idx).to(tl.int64)
    q = tl.load(q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)

    # A finite floor keeps exp2(m_i - m_new) defined for rows that see no key in a tile.
    m_i = tl.full((BLOCK_M,), -1.0e30, tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    key_end = context_len + tl.minimum(q_len, (q_block + 1) * BLOCK_Q)
    table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    kv_head_off = kv_head * stride_kh
    # Keys [full_start, full_end) are visible to every row of the tile (at or before its first query,
    # and inside the window of its last one): those tiles skip the mask. Rows past q_len don't count.
    first_pos = context_len + q_block * BLOCK_Q
    key_start = 0
    full_start = 0
    if USE_WINDOW:
        key_start = tl.maximum(first_pos - window + 1, 0) // BLOCK_N * BLOCK_N
        full_start = tl.cdiv(tl.maximum(key_end - window, 0), BLOCK_N) * BLOCK_N
    full_end = tl.maximum((first_pos + 1) // BLOCK_N * BLOCK_N, key_start)
    full_start = tl.minimum(tl.maximum(full_start, key_start), full_end)
    for start in range(key_start, full_start, BLOCK_N):
        m_i, l_i, acc = attend_tile(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table_ptr, kv_head_off, start,
                                    key_end, pos, qk_scale, window, stride_kb, stride_ks, offs_d, mask_d,
                                    BLOCK_N, BLOCK_SIZE, True, USE_WINDOW, DOT_PRECISION)
    for start in range(full_start, full_end, BLOCK_N):
        m_i, l_i, acc = attend_tile(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table_ptr, kv_head_off, start,
                                    key_end, pos, qk_scale, window, stride_kb, stride_ks, offs_d, mask_d,
                                    BLOCK_N, BLOCK_SIZE, False, USE_WINDOW, DOT_PRECISION)
    for start in range(full_end, key_end, BLOCK_N):
        m_i, l_i, acc = attend_tile(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table_ptr, kv_head_off, start,
                                    key_end, pos, qk_scale, window, stride_kb, stride_ks, offs_d, mask_d,
                                    BLOCK_N, BLOCK_SIZE, True, USE_WINDOW, DOT_PRECISION)
    # Padding rows (past q_len) may see no key under a window; they are not stored, the guard avoids 0 / 0.
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(o_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def paged_prefill_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                   block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                                   scale: float, sliding_window: int | None = None,
                                   out: torch.Tensor | None = None, tile: PrefillTile | None = None) -> torch.Tensor:
    """out: where to write the result (default: a new tensor like q); tile: the launch parameters (default:
    default_prefill_tile)."""
    device = q.device
    check_tensor("q", q, 3, FLOAT_DTYPES, device)
    check_kv_cache(k_cache, v_cache, device)
    check_attention_heads(q, k_cache)
    check_tensor("cu_seqlens_q", cu_seqlens_q, 1, (torch.int32,), device)
    batch = cu_seqlens_q.shape[0] - 1
    if batch < 0:
        raise ValueError("cu_seqlens_q must hold B + 1 offsets, got an empty tensor")
    check_block_tables(block_tables, seq_lens, batch, device)
    check_sliding_window(sliding_window)
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(q)
    else:
        check_tensor("out", out, 3, (q.dtype,), device)
        check_shape("out", out, tuple(q.shape))
    if num_tokens == 0 or batch == 0:
        return out
    tile = tile or default_prefill_tile(q.dtype, num_tokens, group)
    if tile.BLOCK_M < group or tile.BLOCK_M & (tile.BLOCK_M - 1):
        raise ValueError(f"tile.BLOCK_M={tile.BLOCK_M}: expected a power of two >= the {group} query heads per KV head")
    block_m = tile.BLOCK_M
    block_q = block_m // group
    _prefill_kernel[(num_tokens // block_q + batch, num_kv_heads)](
        q, k_cache, v_cache, out, block_tables, cu_seqlens_q, seq_lens,
        scale * LOG2E, sliding_window or 0, batch,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), block_tables.stride(0),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_D=max(triton.next_power_of_2(head_dim), 16), BLOCK_Q=block_q,
        BLOCK_M=block_m, BLOCK_N=tile.BLOCK_N, BLOCK_SIZE=block_size, USE_WINDOW=sliding_window is not None,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=tile.num_warps, num_stages=tile.num_stages, **pdl_launch_args(q.device),
    )
    return out

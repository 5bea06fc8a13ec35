"""Paged attention of one new token per sequence, split over the KV length (split-KV, two kernels).

Stage 1: program (b, kv_head, split) takes the query heads sharing kv_head as the rows of one tile
(padded to 16 for tl.dot) and attends over its share of the sequence's keys, writing the normalized
partial output and its log-sum-exp (base 2). Stage 2 merges the splits of each (b, q_head).
Each sequence divides its own length among the splits on the device, so the grid and the buffers
depend only on tensor shapes: no host sync, safe to capture in a CUDA graph.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.pdl import pdl_launch_args, pdl_wait_first
from kernels.attention_tile import LOG2E, attend_tile
from kernels.validation import (FLOAT_DTYPES, check_attention_heads, check_block_tables, check_kv_cache,
                                     check_shape, check_sliding_window, check_tensor)



@dataclass(frozen=True)
class DecodeTile:
    """The split kernel's launch parameters: keys a loop step reads, warps and pipeline stages."""
    BLOCK_N: int = 64
    num_warps: int = 4
    num_stages: int = 2


# What a decode step launches where the tuning table has no tile (search_spaces/attention.py tunes the alternatives).
DEFAULT_TILE = DecodeTile()
# A split shorter than this spends more on its partial write and merge than it saves.
MIN_KEYS_PER_SPLIT = 256
MAX_SPLITS = 64


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, part_o_ptr, part_lse_ptr, o_ptr,
    qk_scale, window, num_splits,
    stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_bt, stride_pb, stride_ph, stride_ps,
    stride_lb, stride_lh, stride_ob, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, USE_WINDOW: tl.constexpr, SINGLE_SPLIT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_wait_first(USE_PDL)
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    first_key = 0
    if USE_WINDOW:
        first_key = tl.maximum(seq_len - window, 0)
    keys_per_split = tl.cdiv(tl.cdiv(seq_len - first_key, num_splits), BLOCK_N) * BLOCK_N
    start = first_key + split * keys_per_split
    end = tl.minimum(start + keys_per_split, seq_len)

    offs_h = tl.arange(0, BLOCK_H)
    head = kv_head * GROUP + offs_h
    mask_h = offs_h < GROUP
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_qb + head[:, None] * stride_qh + offs_d[None, :],
                mask=mask_h[:, None] & mask_d[None, :], other=0.0)
    pos = tl.zeros((BLOCK_H,), tl.int32) + seq_len - 1

    m_i = tl.full((BLOCK_H,), -1.0e30, tl.float32)
    l_i = tl.zeros((BLOCK_H,), tl.float32)
    acc = tl.zeros((BLOCK_H, BLOCK_D), tl.float32)
    table_ptr = block_tables_ptr + seq * stride_bt
    kv_head_off = kv_head * stride_kh
    # Every key of the range is visible to the single query (the window only moves first_key), so
    # only the last, partial tile needs a mask.
    full_end = start + tl.maximum(end - start, 0) // BLOCK_N * BLOCK_N
    for tile_start in range(start, full_end, BLOCK_N):
        m_i, l_i, acc = attend_tile(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table_ptr, kv_head_off, tile_start,
                                    end, pos, qk_scale, window, stride_kb, stride_ks, offs_d, mask_d,
                                    BLOCK_N, BLOCK_SIZE, False, False, DOT_PRECISION)
    if full_end < end:
        m_i, l_i, acc = attend_tile(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table_ptr, kv_head_off, full_end,
                                    end, pos, qk_scale, window, stride_kb, stride_ks, offs_d, mask_d,
                                    BLOCK_N, BLOCK_SIZE, True, False, DOT_PRECISION)
    # An empty split (short sequence) contributes weight zero to the merge.
    has_keys = l_i > 0
    out = tl.where(has_keys[:, None], acc / tl.where(has_keys, l_i, 1.0)[:, None], 0.0)
    mask_hd = mask_h[:, None] & mask_d[None, :]
    if SINGLE_SPLIT:
        # Nothing to merge: the output goes straight to o.
        tl.store(o_ptr + seq * stride_ob + head[:, None] * stride_oh + offs_d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=mask_hd)
    else:
        lse = tl.where(has_keys, m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(part_o_ptr + seq * stride_pb + head[:, None] * stride_ph + split * stride_ps + offs_d[None, :],
                 out, mask=mask_hd)
        tl.store(part_lse_ptr + seq * stride_lb + head * stride_lh + split, lse, mask=mask_h)


@triton.jit
def _decode_merge_kernel(part_o_ptr, part_lse_ptr, o_ptr, stride_pb, stride_ph, stride_ps, stride_lb, stride_lh,
                         stride_ob, stride_oh, num_splits,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
                         USE_PDL: tl.constexpr):
    pdl_wait_first(USE_PDL)
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < num_splits
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    lse = tl.load(part_lse_ptr + seq * stride_lb + head * stride_lh + offs_s, mask=mask_s, other=float("-inf"))
    # A sequence of length 0 (a padded row of a captured batch) has no keys at all and gets zeros.
    lse_max = tl.max(lse, axis=0)
    weight = tl.math.exp2(lse - tl.where(lse_max == float("-inf"), 0.0, lse_max))
    part = tl.load(part_o_ptr + seq * stride_pb + head * stride_ph + offs_s[:, None] * stride_ps + offs_d[None, :],
                   mask=mask_s[:, None] & mask_d[None, :], other=0.0)
    total = tl.sum(weight, axis=0)
    out = tl.sum(part * weight[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(o_ptr + seq * stride_ob + head * stride_oh + offs_d, out.to(o_ptr.dtype.element_ty), mask=mask_d)


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def default_num_splits(batch: int, num_kv_heads: int, max_keys: int, device: torch.device) -> int:
    """Enough programs to fill the GPU about four times over, from shapes only."""
    wanted = triton.cdiv(4 * _num_sms(device), batch * num_kv_heads)
    return max(1, min(wanted, triton.cdiv(max_keys, MIN_KEYS_PER_SPLIT), MAX_SPLITS))


def paged_decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                  block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                                  sliding_window: int | None = None, num_splits: int | None = None,
                                  out: torch.Tensor | None = None, tile: DecodeTile = DEFAULT_TILE) -> torch.Tensor:
    """num_splits: how many parts the KV length is cut into (default: from the shapes and the SM count);
    out: where to write the result (default: a new tensor like q); tile: the split kernel's launch parameters."""
    device = q.device
    check_tensor("q", q, 3, FLOAT_DTYPES, device)
    check_kv_cache(k_cache, v_cache, device)
    check_attention_heads(q, k_cache)
    batch, num_q_heads, head_dim = q.shape
    check_block_tables(block_tables, seq_lens, batch, device)
    check_sliding_window(sliding_window)
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    if num_splits is None:
        num_splits = default_num_splits(batch, num_kv_heads, block_tables.shape[1] * block_size, device)
    elif num_splits < 1:
        raise ValueError(f"num_splits must be a positive int, got {num_splits}")
    if out is None:
        out = torch.empty_like(q)
    else:
        check_tensor("out", out, 3, (q.dtype,), device)
        check_shape("out", out, tuple(q.shape))
    if batch == 0:
        return out
    # With one split the first kernel writes `out` itself and never touches the partial buffers.
    single = num_splits == 1
    part_o = torch.empty((batch, num_q_heads, 1 if single else num_splits, head_dim), dtype=torch.float32,
                         device=device)
    part_lse = torch.empty(part_o.shape[:3], dtype=torch.float32, device=device)
    block_d = max(triton.next_power_of_2(head_dim), 16)
    pdl = pdl_launch_args(device)
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, part_o, part_lse, out,
        scale * LOG2E, sliding_window or 0, num_splits,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        part_o.stride(0), part_o.stride(1), part_o.stride(2), part_lse.stride(0), part_lse.stride(1),
        out.stride(0), out.stride(1),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_H=max(triton.next_power_of_2(group), 16),
        BLOCK_N=tile.BLOCK_N, BLOCK_SIZE=block_size, USE_WINDOW=sliding_window is not None, SINGLE_SPLIT=single,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=tile.num_warps,
        num_stages=tile.num_stages,
        **pdl,
    )
    if not single:
        _decode_merge_kernel[(batch, num_q_heads)](
            part_o, part_lse, out, part_o.stride(0), part_o.stride(1), part_o.stride(2), part_lse.stride(0),
            part_lse.stride(1), out.stride(0), out.stride(1), num_splits,
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=triton.next_power_of_2(num_splits), **pdl,
        )
    return out

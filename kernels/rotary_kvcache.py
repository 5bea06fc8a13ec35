"""Rotary embedding of q and k fused with the paged KV-cache write, one program per token.

The rotated k is written straight into the cache: one kernel instead of a rotary and a KV-cache write per layer,
and k never makes a round trip through memory.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.pdl import pdl_launch_args, pdl_wait
from kernels.validation import (FLOAT_DTYPES, INDEX_DTYPES, check_attention_heads, check_kv_cache, check_shape,
                                     check_tensor)


@triton.jit
def _rotate(x_ptr, out_ptr, t, stride_xt, stride_xh, stride_ot, stride_oh, cos, sin,
            NUM_HEADS: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_HALF)
    mask = (offs_h[:, None] < NUM_HEADS) & (offs_d[None, :] < HALF)
    src = x_ptr + t * stride_xt + offs_h[:, None] * stride_xh + offs_d[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    # Round every product to the activation dtype, as HF's q * cos + rotate_half(q) * sin does in that dtype.
    dtype = out_ptr.dtype.element_ty
    o1 = ((x1 * cos).to(dtype).to(tl.float32) - (x2 * sin).to(dtype).to(tl.float32)).to(dtype)
    o2 = ((x2 * cos).to(dtype).to(tl.float32) + (x1 * sin).to(dtype).to(tl.float32)).to(dtype)
    dst = out_ptr + t * stride_ot + offs_h[:, None] * stride_oh + offs_d[None, :]
    tl.store(dst, o1, mask=mask)
    tl.store(dst + HALF, o2, mask=mask)


@triton.jit
def _rotary_store_kvcache_kernel(
    q_ptr, k_ptr, v_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, cos_sin_ptr, slot_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_qot, stride_qoh,
    stride_cslot, stride_ch, stride_cos_sin,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_HQ: tl.constexpr,
    BLOCK_HKV: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)  # before the early return too: a kernel further down the chain relies on it
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    HALF: tl.constexpr = HEAD_DIM // 2
    offs_half = tl.arange(0, BLOCK_HALF)
    dtype = q_out_ptr.dtype.element_ty
    # HF casts cos/sin to the activation dtype before using them.
    cos_sin = cos_sin_ptr + pos * stride_cos_sin + offs_half
    cos = tl.load(cos_sin, mask=offs_half < HALF).to(dtype).to(tl.float32)
    sin = tl.load(cos_sin + HALF, mask=offs_half < HALF).to(dtype).to(tl.float32)
    # Every row of q_out is written, padded ones too, so that no attention kernel reads uninitialized memory.
    _rotate(q_ptr, q_out_ptr, t, stride_qt, stride_qh, stride_qot, stride_qoh, cos[None, :], sin[None, :],
            NUM_Q_HEADS, HALF, BLOCK_HQ, BLOCK_HALF)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    # Padded tokens of a captured CUDA graph carry slot -1 and must leave the cache untouched.
    if slot < 0:
        return
    # _rotate reads and writes the same row number; k's row t goes to the cache's row `slot`, so pass both rows'
    # base pointers and row 0.
    _rotate(k_ptr + t * stride_kt, k_cache_ptr + slot * stride_cslot, 0, 0, stride_kh, 0, stride_ch,
            cos[None, :], sin[None, :], NUM_KV_HEADS, HALF, BLOCK_HKV, BLOCK_HALF)
    offs_h = tl.arange(0, BLOCK_HKV)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HEAD_DIM)
    v = tl.load(v_ptr + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    tl.store(v_cache_ptr + slot * stride_cslot + offs_h[:, None] * stride_ch + offs_d[None, :], v, mask=mask)


def apply_rotary_and_store_kvcache_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                                          cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                          slot_mapping: torch.Tensor) -> torch.Tensor:
    device = q.device
    check_tensor("q", q, 3, FLOAT_DTYPES, device)
    check_kv_cache(k_cache, v_cache, device)
    # _rotate rounds to the dtype it writes, so k rotated straight into the cache rounds as HF does only
    # if the cache has q's dtype; the attention kernels, which read this cache with this q, need that anyway.
    check_attention_heads(q, k_cache)
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if head_dim % 2:
        raise ValueError(f"q head_dim must be even, got {head_dim}")
    for name, x in (("k", k), ("v", v)):
        check_tensor(name, x, 3, (q.dtype,), device)
        check_shape(name, x, (num_tokens, num_kv_heads, head_dim))
    check_tensor("positions", positions, 1, INDEX_DTYPES, device)
    check_shape("positions", positions, (num_tokens,))
    # float32 is expected; a table cast along with the model gives the same result (cos/sin are rounded to q's
    # dtype anyway).
    check_tensor("cos_sin_cache", cos_sin_cache, 2, FLOAT_DTYPES, device)
    if cos_sin_cache.shape[1] != head_dim:
        raise ValueError(f"cos_sin_cache must be [max_positions, {head_dim}], got {tuple(cos_sin_cache.shape)}")
    check_tensor("slot_mapping", slot_mapping, 1, INDEX_DTYPES, device)
    check_shape("slot_mapping", slot_mapping, (num_tokens,))
    if k_cache.stride(0) != k_cache.shape[1] * k_cache.stride(1):
        raise ValueError("k_cache blocks must be laid out contiguously (stride(0) == block_size * stride(1))")
    q_out = torch.empty(q.shape, dtype=q.dtype, device=device)
    if num_tokens > 0:
        _rotary_store_kvcache_kernel[(num_tokens,)](
            q, k, v, q_out, k_cache, v_cache, positions, cos_sin_cache, slot_mapping,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            q_out.stride(0), q_out.stride(1), k_cache.stride(1), k_cache.stride(2), cos_sin_cache.stride(0),
            NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
            BLOCK_HQ=triton.next_power_of_2(num_q_heads), BLOCK_HKV=triton.next_power_of_2(num_kv_heads),
            BLOCK_HALF=triton.next_power_of_2(head_dim // 2), BLOCK_D=triton.next_power_of_2(head_dim),
            **pdl_launch_args(device),
        )
    return q_out

"""Scatter the new tokens' K and V into the paged cache, one program per token."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.pdl import pdl_launch_args, pdl_wait
from nanovllm.ops.validation import FLOAT_DTYPES, check_kv_cache, check_shape, check_tensor


@triton.jit
def _store_kvcache_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_cslot, stride_ch,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)  # before the early return too: a kernel further down the chain relies on it
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    # Padded tokens of a captured CUDA graph carry slot -1 and must leave the cache untouched.
    if slot < 0:
        return
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HEAD_DIM)
    t64 = t.to(tl.int64)
    k = tl.load(k_ptr + t64 * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
    v = tl.load(v_ptr + t64 * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    dst = slot * stride_cslot + offs_h[:, None] * stride_ch + offs_d[None, :]
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kvcache_triton(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         slot_mapping: torch.Tensor) -> None:
    device = k.device
    check_tensor("k", k, 3, FLOAT_DTYPES, device)
    check_tensor("v", v, 3, FLOAT_DTYPES, device)
    check_shape("v", v, tuple(k.shape))
    check_kv_cache(k_cache, v_cache, device)
    num_tokens, num_kv_heads, head_dim = k.shape
    if (num_kv_heads, head_dim) != tuple(k_cache.shape[2:]):
        raise ValueError(f"k heads/head_dim {(num_kv_heads, head_dim)} must match k_cache {tuple(k_cache.shape[2:])}")
    check_tensor("slot_mapping", slot_mapping, 1, (torch.int64, torch.int32), device)
    check_shape("slot_mapping", slot_mapping, (num_tokens,))
    if k_cache.stride(0) != k_cache.shape[1] * k_cache.stride(1):
        raise ValueError("k_cache blocks must be laid out contiguously (stride(0) == block_size * stride(1))")
    if num_tokens == 0:
        return
    _store_kvcache_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), k_cache.stride(1), k_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_H=triton.next_power_of_2(num_kv_heads), BLOCK_D=triton.next_power_of_2(head_dim),
        **pdl_launch_args(device),
    )

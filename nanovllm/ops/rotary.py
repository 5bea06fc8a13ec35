"""Neox-style rotary embedding (HF Llama's rotate_half) of q and k, one program per token."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.pdl import pdl_launch_args, pdl_wait
from nanovllm.ops.validation import FLOAT_DTYPES, check_shape, check_tensor


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
def _rotary_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, pos_ptr, cache_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_qot, stride_qoh, stride_kot, stride_koh, stride_cache,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_HALF: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)
    dtype = q_out_ptr.dtype.element_ty
    # HF casts cos/sin to the activation dtype before using them.
    cos = tl.load(cache_ptr + pos * stride_cache + offs_d, mask=offs_d < HALF).to(dtype).to(tl.float32)
    sin = tl.load(cache_ptr + pos * stride_cache + HALF + offs_d, mask=offs_d < HALF).to(dtype).to(tl.float32)
    _rotate(q_ptr, q_out_ptr, t, stride_qt, stride_qh, stride_qot, stride_qoh, cos[None, :], sin[None, :],
            NUM_Q_HEADS, HALF, BLOCK_HQ, BLOCK_HALF)
    _rotate(k_ptr, k_out_ptr, t, stride_kt, stride_kh, stride_kot, stride_koh, cos[None, :], sin[None, :],
            NUM_KV_HEADS, HALF, BLOCK_HKV, BLOCK_HALF)


def apply_rotary_triton(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                        cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    device = q.device
    check_tensor("q", q, 3, FLOAT_DTYPES, device)
    check_tensor("k", k, 3, (q.dtype,), device)
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    check_shape("k", k, (num_tokens, num_kv_heads, head_dim))
    if head_dim % 2:
        raise ValueError(f"q head_dim must be even, got {head_dim}")
    check_tensor("positions", positions, 1, (torch.int64, torch.int32), device)
    check_shape("positions", positions, (num_tokens,))
    # float32 is expected; a table cast along with the model (module.to(dtype)) gives the same result, since
    # HF rounds cos/sin to the activation dtype anyway.
    check_tensor("cos_sin_cache", cos_sin_cache, 2, FLOAT_DTYPES, device)
    if cos_sin_cache.shape[1] != head_dim:
        raise ValueError(f"cos_sin_cache must be [max_positions, {head_dim}], got {tuple(cos_sin_cache.shape)}")
    q_out, k_out = torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(
        k, memory_format=torch.contiguous_format)
    if num_tokens > 0:
        _rotary_kernel[(num_tokens,)](
            q, k, q_out, k_out, positions, cos_sin_cache,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), q_out.stride(0), q_out.stride(1),
            k_out.stride(0), k_out.stride(1), cos_sin_cache.stride(0),
            NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads, HALF=head_dim // 2,
            BLOCK_HQ=triton.next_power_of_2(num_q_heads), BLOCK_HKV=triton.next_power_of_2(num_kv_heads),
            BLOCK_HALF=triton.next_power_of_2(head_dim // 2), **pdl_launch_args(device),
        )
    return q_out, k_out

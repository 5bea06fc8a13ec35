"""The runtime's GPU ops: Triton kernels for CUDA tensors, the plain PyTorch references otherwise.

KV cache layout, per layer: k_cache and v_cache are [num_blocks, block_size, num_kv_heads, head_dim];
token slot = block_id * block_size + offset. Query head h reads KV head h // (Hq // Hkv).
"""
from __future__ import annotations

import torch

from kernels import reference
from kernels.activation import silu_and_mul_triton
from kernels.attention_decode import DEFAULT_TILE, DecodeTile, paged_decode_attention_triton
from kernels.attention_prefill import PrefillTile, paged_prefill_attention_triton
from kernels.norm import rms_norm_triton
from kernels.rotary_kvcache import apply_rotary_and_store_kvcache_triton
from kernels.sampling import sample

__all__ = ["apply_rotary_and_store_kvcache", "paged_prefill_attention", "paged_decode_attention", "rms_norm",
           "silu_and_mul", "sample", "use_triton"]


def use_triton(t: torch.Tensor) -> bool:
    """Whether an op on `t` runs its Triton kernel: on CUDA tensors. The CPU runs the references, which are faster
    there than the kernels in Triton's interpreter; a test that wants the kernels end to end on the CPU patches this.
    """
    return t.is_cuda


def apply_rotary_and_store_kvcache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                                   cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                   slot_mapping: torch.Tensor) -> torch.Tensor:
    """Rotates q [T, Hq, D] and k [T, Hkv, D] (Neox-style rotate_half, bit-exact with HF Llama) and writes k and v
    into the caches at slot_mapping [T] (slot -1: skip the token); returns the rotated q as a new tensor.

    The rotated k exists only in the cache. The caches have q's dtype: the attention ops read them with q.
    """
    fn = apply_rotary_and_store_kvcache_triton if use_triton(q) else \
        reference.apply_rotary_and_store_kvcache_reference
    return fn(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping)


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                            scale: float, sliding_window: int | None = None,
                            tile: PrefillTile | None = None) -> torch.Tensor:
    """Causal attention of the new tokens q [T, Hq, D] of B sequences over their paged KV cache.

    seq_lens[b] counts the whole context including the new tokens, whose K/V are already in the cache;
    query i of sequence b sits at position seq_lens[b] - q_len_b + i. tile: the kernel's launch parameters (None:
    kernels.attention_prefill.default_prefill_tile).
    """
    if not use_triton(q):
        return reference.paged_prefill_attention_reference(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens,
                                                           scale, sliding_window)
    return paged_prefill_attention_triton(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale,
                                          sliding_window, tile=tile)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                           sliding_window: int | None = None, tile: DecodeTile = DEFAULT_TILE,
                           num_splits: int | None = None) -> torch.Tensor:
    """Attention of one new token per sequence, q [B, Hq, D] at position seq_lens[b] - 1. CUDA-graph safe.
    tile and num_splits: the split kernel's launch parameters and how many parts the KV length is cut into (None:
    kernels.attention_decode.default_num_splits)."""
    if not use_triton(q):
        return reference.paged_decode_attention_reference(q, k_cache, v_cache, block_tables, seq_lens, scale,
                                                          sliding_window)
    return paged_decode_attention_triton(q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window,
                                         num_splits, tile=tile)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """HF RMSNorm of x [T, H]; with a residual, normalizes h = x + residual and returns (y, h)."""
    fn = rms_norm_triton if use_triton(x) else reference.rms_norm_reference
    return fn(x, weight, eps, residual)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[:, :I]) * x[:, I:] for x [T, 2I], in the input dtype like HF's MLP."""
    fn = silu_and_mul_triton if use_triton(x) else reference.silu_and_mul_reference
    return fn(x)

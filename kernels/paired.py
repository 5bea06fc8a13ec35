"""Epilogues of the fused kernel that need two rows of the weight for each output column.

A program then streams, for each of its BLOCK_N columns, a row and its pair, into two accumulators:
- GATED, the MLP's stacked [gate; up] site: gate row n and up row n + I; it stores silu(gate) * up, and the
  [M, 2I] projection never reaches memory (the SiLU-and-mul kernel is gone).
- ROTARY, the attention's stacked [q; k; v] site: in each head, row j and row j + D/2, the halves that the
  Neox-style rotary embedding mixes. It rotates q and k by each token's position and stores q to the output
  and k and v straight into the paged KV cache (the rotary + KV-write kernel is gone). A program's columns lie in
  one head, so BLOCK_N must divide D/2.
kernels/epilogue.py names these forms and maps a config tuned for the plain stacked product onto them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.checks import check_like
from kernels.epilogue import Epilogue, rotary

_MIN_BLOCK = 16  # tl.dot's smallest tile dimension


@dataclass(frozen=True)
class RotaryKV:
    """Where the ROTARY epilogue puts q, k and v, as ops.apply_rotary_and_store_kvcache takes them: positions and
    slot_mapping [M] (slot -1: leave the cache alone), the float32 cos | sin table [max_position, D], the caches
    [num_blocks, block_size, num_kv_heads, D] in the activation dtype, and the number of query heads."""
    positions: torch.Tensor
    cos_sin_cache: torch.Tensor
    slot_mapping: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    num_q_heads: int

    @property
    def head_dim(self) -> int:
        return self.cos_sin_cache.shape[1]

    @property
    def epilogue(self) -> Epilogue:
        """The rotary epilogue these buffers serve."""
        return rotary(self.head_dim, self.k_cache.shape[2])

    def check(self, x2: torch.Tensor, weight: torch.Tensor) -> None:
        """Raise naming the argument that does not fit an (M, K) input and its stacked [q; k; v] weight."""
        for name in ("positions", "cos_sin_cache", "slot_mapping", "k_cache", "v_cache"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise TypeError(f"rotary.{name}: expected a torch.Tensor, got {type(getattr(self, name)).__name__}")
        table = self.cos_sin_cache
        if table.dim() != 2 or table.dtype != torch.float32 or table.device != x2.device or table.stride(1) != 1:
            raise ValueError(f"rotary.cos_sin_cache: expected a float32 [max_position, head_dim] table on {x2.device}, "
                             f"rows contiguous; got {table.dtype} {tuple(table.shape)} on {table.device}")
        M, D = x2.shape[0], self.head_dim
        if D % 2 or (D // 2) % _MIN_BLOCK:
            raise ValueError(f"rotary.cos_sin_cache: head_dim/2 must be a multiple of {_MIN_BLOCK}, got head_dim={D}")
        for name in ("k_cache", "v_cache"):
            cache = getattr(self, name)
            if cache.dim() != 4 or cache.shape[-1] != D or cache.stride(-1) != 1:
                raise ValueError(f"rotary.{name}: expected [num_blocks, block_size, num_kv_heads, {D}], head_dim "
                                 f"innermost, got {tuple(cache.shape)}")
            check_like(f"rotary.{name}", cache, tuple(self.k_cache.shape), x2.dtype, x2)
        if self.k_cache.stride() != self.v_cache.stride() or \
                self.k_cache.stride(0) != self.k_cache.shape[1] * self.k_cache.stride(1):
            raise ValueError("rotary.k_cache, v_cache: expected the same layout, blocks laid out contiguously")
        num_kv_heads = self.k_cache.shape[2]
        if self.num_q_heads % num_kv_heads:
            raise ValueError(f"rotary.num_q_heads: {self.num_q_heads} is not a multiple of the cache's "
                             f"{num_kv_heads} KV heads")
        rows = (self.num_q_heads + 2 * num_kv_heads) * D
        if weight.shape[0] != rows:
            raise ValueError(f"weight: expected the stacked [q; k; v] rows, (num_q_heads + 2 x num_kv_heads) x "
                             f"head_dim = {rows}, got {weight.shape[0]}")
        for name in ("positions", "slot_mapping"):
            t = getattr(self, name)
            if t.shape != (M,) or t.dtype not in (torch.int32, torch.int64) or t.device != x2.device or \
                    (M > 1 and t.stride(0) != 1):
                raise ValueError(f"rotary.{name}: expected a contiguous int32/int64 tensor of shape ({M},) on "
                                 f"{x2.device}, got {t.dtype} {tuple(t.shape)} on {t.device}")


@triton.jit
def silu_and_mul(gate, up, dtype: tl.constexpr):
    """silu(gate) * up from fp32 accumulators, rounded where the separate GEMM and SiLU-and-mul kernel round:
    the GEMM's output, then silu(gate) (as HF does), then the product."""
    gate = gate.to(dtype).to(tl.float32)
    up = up.to(dtype).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    return (act * up).to(dtype)


@triton.jit
def rotary_store(x1, x2, offs_m, mask_m, j, head, out_ptr, stride_om, pos_ptr, cs_ptr, stride_cs, slot_ptr,
                 kc_ptr, vc_ptr, stride_cslot, stride_ch,
                 HALF: tl.constexpr, NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr):
    """x1, x2: fp32 tiles [BLOCK_M, BLOCK_N] of columns j and j + HALF of `head` in the stacked [q; k; v] output.
    Rounds as ops.apply_rotary_and_store_kvcache does after the separate GEMM: its output, cos and sin, each
    product, the result."""
    dtype = out_ptr.dtype.element_ty
    x1 = x1.to(dtype).to(tl.float32)
    x2 = x2.to(dtype).to(tl.float32)
    if head < NUM_Q_HEADS + NUM_KV_HEADS:  # q or k: rotate by each token's position
        pos = tl.load(pos_ptr + offs_m, mask=mask_m, other=0).to(tl.int64)
        cs = cs_ptr + pos[:, None] * stride_cs + j[None, :]
        cos = tl.load(cs, mask=mask_m[:, None]).to(dtype).to(tl.float32)
        sin = tl.load(cs + HALF, mask=mask_m[:, None]).to(dtype).to(tl.float32)
        o1 = (x1 * cos).to(dtype).to(tl.float32) - (x2 * sin).to(dtype).to(tl.float32)
        o2 = (x2 * cos).to(dtype).to(tl.float32) + (x1 * sin).to(dtype).to(tl.float32)
    else:
        o1 = x1
        o2 = x2
    if head < NUM_Q_HEADS:
        dst = out_ptr + offs_m[:, None] * stride_om + head * (2 * HALF) + j[None, :]
        tl.store(dst, o1.to(dtype), mask=mask_m[:, None])
        tl.store(dst + HALF, o2.to(dtype), mask=mask_m[:, None])
    else:
        # Padded tokens of a captured CUDA graph carry slot -1 and leave the cache alone.
        slot = tl.load(slot_ptr + offs_m, mask=mask_m, other=-1).to(tl.int64)
        mask = (slot >= 0)[:, None]
        kv_head = head - NUM_Q_HEADS
        cache = kc_ptr
        if kv_head >= NUM_KV_HEADS:
            kv_head -= NUM_KV_HEADS
            cache = vc_ptr
        dst = cache + slot[:, None] * stride_cslot + kv_head * stride_ch + j[None, :]
        tl.store(dst, o1.to(dtype), mask=mask)
        tl.store(dst + HALF, o2.to(dtype), mask=mask)

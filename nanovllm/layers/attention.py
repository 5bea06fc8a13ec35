"""Paged attention of one layer: writes k and v into its KV-cache slice and attends over it."""
import torch
from torch import nn

from kernels import ops
from nanovllm.layers.rotary_embedding import RotaryEmbedding
from nanovllm.utils.context import get_context
from tuning_table.attention import AttentionTiles


class Attention(nn.Module):
    """Applies the rotary embedding to q and k, writes the new K/V into this layer's paged cache, then attends
    over the cache. Rotary and the cache write are one kernel, so the rotated k only ever lands in the cache.

    The ModelRunner points `k_cache` and `v_cache` at this layer's slice of the cache, each
    [num_blocks, block_size, num_kv_heads, head_dim], and `tiles` at the tuning table's tiles of its shape (untuned:
    the kernels' defaults); a step's tile is its rows' and its longest sequence's (tuning_table/attention.py).
    """

    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int, rotary_emb: RotaryEmbedding,
                 sliding_window: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale
        self.num_kv_heads = num_kv_heads
        self.rotary_emb = rotary_emb
        self.sliding_window = sliding_window
        self.k_cache = self.v_cache = torch.tensor([])
        self.tiles = AttentionTiles(None, num_heads, num_kv_heads, head_dim, torch.get_default_dtype(), sliding_window)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ctx = get_context()
        q = ops.apply_rotary_and_store_kvcache(q, k, v, positions, self.rotary_emb.cos_sin_cache, self.k_cache,
                                               self.v_cache, ctx.slot_mapping)
        return self.attend(q)

    def attend(self, q: torch.Tensor) -> torch.Tensor:
        """Attention of q [T, heads, head_dim], rotated, over the cache, which already holds this step's K/V
        (written by `forward`, or by the fused QKV kernel's epilogue: nanovllm.layers.fused_norm_linear)."""
        ctx = get_context()
        # The keys of the step's longest sequence, as far as the block table's width says without a device sync.
        context = ctx.block_tables.shape[1] * self.k_cache.shape[1]
        if ctx.is_prefill:
            return ops.paged_prefill_attention(q, self.k_cache, self.v_cache, ctx.block_tables, ctx.cu_seqlens_q,
                                               ctx.seq_lens, self.scale, self.sliding_window,
                                               tile=self.tiles.prefill(q.shape[0], context))
        tile, num_splits = self.tiles.decode(q.shape[0], context)
        return ops.paged_decode_attention(q, self.k_cache, self.v_cache, ctx.block_tables, ctx.seq_lens,
                                          self.scale, self.sliding_window, tile=tile, num_splits=num_splits)

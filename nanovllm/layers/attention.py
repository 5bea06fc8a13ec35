import torch
from torch import nn

from nanovllm import ops
from nanovllm.utils.context import get_context


class Attention(nn.Module):
    """Writes the new K/V into this layer's paged cache, then attends over the cache.

    The ModelRunner points `k_cache` and `v_cache` at this layer's slice of the cache, each
    [num_blocks, block_size, num_kv_heads, head_dim].
    """

    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int,
                 sliding_window: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale
        self.num_kv_heads = num_kv_heads
        self.sliding_window = sliding_window
        self.k_cache = self.v_cache = torch.tensor([])

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ctx = get_context()
        ops.store_kvcache(k, v, self.k_cache, self.v_cache, ctx.slot_mapping)
        if ctx.is_prefill:
            return ops.paged_prefill_attention(q, self.k_cache, self.v_cache, ctx.block_tables, ctx.cu_seqlens_q,
                                               ctx.seq_lens, self.scale, self.sliding_window)
        return ops.paged_decode_attention(q, self.k_cache, self.v_cache, ctx.block_tables, ctx.seq_lens,
                                          self.scale, self.sliding_window)

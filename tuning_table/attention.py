"""The attention kernels' launch parameters of one model, read from the lookup table's "attention_decode" and
"attention_prefill" entries (tuned by search_spaces/attention.py), with the kernels' defaults where it has none.

A step looks up its row count (decode: the batch; prefill: the new tokens) and its context, the keys of its longest
sequence as the block table's width holds them (width x block size), by the table's bucket rule: the smallest tuned
value >= the step's, else the largest, the batch (tokens) first, then the context among those buckets. Every tile
and split count is correct for any sequence length (each sequence divides its own keys among the splits on the
device), so the rule only decides speed. A decode CUDA graph fixes the tile of its batch at its block table's
width, so each graph batch is captured at the widths where a tuned context changes the tile, up to max_model_len's
(`decode_widths`, nanovllm/engine/cuda_graph.py), and a step runs in the narrowest that holds its longest sequence.
Eager steps (prefill, decode without graphs) pick theirs step by step.
"""
from __future__ import annotations

import torch

from kernels.attention_decode import DEFAULT_TILE, DecodeTile
from kernels.attention_prefill import PrefillTile
from tuning_table.format import LookupTable

DECODE, PREFILL = "attention_decode", "attention_prefill"


class AttentionTiles:
    """One model's attention tiles, resolved once per (rows, context) seen: a step only reads a dict."""

    def __init__(self, table: LookupTable | None, q_heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 sliding_window: int | None = None):
        self.table, self.dtype = table, dtype
        self.dims = {"q_heads": q_heads, "kv_heads": kv_heads, "head_dim": head_dim}
        # search_spaces/attention.py's form of a problem: its sliding window.
        self.form = f"window={sliding_window}" if sliding_window else ""
        self._decode: dict[tuple[int, int], tuple[DecodeTile, int | None]] = {}
        self._prefill: dict[tuple[int, int], PrefillTile | None] = {}

    def decode(self, batch: int, context: int) -> tuple[DecodeTile, int | None]:
        """The split kernel's tile and the number of splits (None: the kernel's default) for a decode step."""
        key = (batch, context)
        if key not in self._decode:
            c = self._config(DECODE, {"batch": batch, "context": context})
            self._decode[key] = (DEFAULT_TILE, None) if c is None else \
                (DecodeTile(c["BLOCK_N"], c["num_warps"], c["num_stages"]), c["num_splits"])
        return self._decode[key]

    def decode_widths(self, batch: int, max_width: int, block_size: int) -> list[int]:
        """The block-table widths, ascending and ending at `max_width`, at which a decode graph of `batch` rows is
        captured: the blocks of each tuned context below max_width's (rounded down, so that the width's context looks
        up that context's tile or a smaller one's), each run of widths with equal tiles kept as its widest; without
        tuned contexts [max_width]."""
        contexts = [] if self.table is None else \
            self.table.tuned_values(DECODE, "context", {"batch": batch, **self.dims}, self.dtype, self.form)
        candidates = sorted({w for w in (max(1, c // block_size) for c in contexts) if w < max_width}) + [max_width]
        widths = [candidates[0]]
        for width in candidates[1:]:
            if self.decode(batch, width * block_size) == self.decode(batch, widths[-1] * block_size):
                widths[-1] = width  # the wider graph runs the narrower one's steps with the same tile
            else:
                widths.append(width)
        return widths

    def prefill(self, tokens: int, context: int) -> PrefillTile | None:
        """The prefill kernel's tile for a step of `tokens` new tokens (None: the kernel's default)."""
        key = (tokens, context)
        if key not in self._prefill:
            c = self._config(PREFILL, {"tokens": tokens, "context": context})
            self._prefill[key] = None if c is None else \
                PrefillTile(c["BLOCK_M"], c["BLOCK_N"], c["num_warps"], c["num_stages"])
        return self._prefill[key]

    def _config(self, kernel: str, bucket: dict[str, int]) -> dict[str, int] | None:
        if self.table is None:
            return None
        found = self.table.lookup(kernel, {**bucket, **self.dims}, self.dtype, self.form)
        return None if found is None else found.config

    def covered(self) -> dict[str, bool]:
        """Whether the table has entries of this model's attention, per kernel (for the runner's log)."""
        return {kernel: self._config(kernel, {d: 1 for d in dims}) is not None
                for kernel, dims in ((DECODE, ("batch", "context")), (PREFILL, ("tokens", "context")))}

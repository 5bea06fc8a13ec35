"""The paged KV cache's blocks: allocation per sequence, and prefix caching by chained block hashes."""
import hashlib
from collections import OrderedDict

import numpy as np

from nanovllm.engine.sequence import Sequence


def block_hash(token_ids: list[int], prefix_hash: bytes | None) -> bytes:
    """Hash of a full block chained with the hash of the blocks before it, so equal hashes mean equal prefixes."""
    h = hashlib.blake2b(digest_size=16)
    if prefix_hash is not None:
        h.update(prefix_hash)
    h.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    return h.digest()


class Block:
    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: bytes | None = None
        self.token_ids: list[int] = []


class BlockManager:
    """Paged KV cache bookkeeping with prefix caching.

    A full block is registered under its chained hash as soon as it is allocated: a sequence scheduled later in
    the same step then shares it instead of computing a duplicate (its K/V are written, layer by layer, before any
    attention reads them). Freed blocks keep their hash so that a later request can revive them.
    """

    def __init__(self, num_blocks: int, block_size: int):
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.hash_to_block_id: dict[bytes, int] = {}
        # Oldest freed first, so cached blocks are evicted least recently used first; O(1) removal on revival.
        self.free_block_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.used_block_ids: set[int] = set()
        self.num_cache_hit_tokens = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def _take_block(self, block_id: int) -> Block:
        block = self.blocks[block_id]
        assert block.ref_count == 0
        del self.free_block_ids[block_id]
        self.used_block_ids.add(block_id)
        block.ref_count = 1
        return block

    def _new_block(self) -> Block:
        block = self._take_block(next(iter(self.free_block_ids)))
        if block.hash is not None and self.hash_to_block_id.get(block.hash) == block.block_id:
            del self.hash_to_block_id[block.hash]
        block.hash = None
        block.token_ids = []
        return block

    def _register(self, block: Block, h: bytes, token_ids: list[int]) -> None:
        block.hash = h
        block.token_ids = token_ids
        self.hash_to_block_id[h] = block.block_id

    def _cached_block(self, h: bytes, token_ids: list[int]) -> int | None:
        block_id = self.hash_to_block_id.get(h)
        if block_id is None or self.blocks[block_id].token_ids != token_ids:
            return None
        return block_id

    def can_allocate(self, seq: Sequence) -> bool:
        return self.num_free_blocks >= seq.num_blocks

    def allocate(self, seq: Sequence) -> None:
        """Give `seq` blocks for all its tokens, reusing cached blocks for its longest cached prefix.

        The block holding the last token is never taken from the cache: the model must compute at least that token
        to produce logits, and it must not write into a block that other sequences share.
        """
        assert not seq.block_table
        num_lookup_blocks = (len(seq) - 1) // self.block_size
        h = None
        cache_miss = False
        for i in range(seq.num_blocks):
            token_ids = seq.block(i)
            full = len(token_ids) == self.block_size
            h = block_hash(token_ids, h) if full else None
            block_id = None
            if not cache_miss and i < num_lookup_blocks:
                block_id = self._cached_block(h, token_ids)
            if block_id is None:
                cache_miss = True
                block = self._new_block()
                if full:
                    self._register(block, h, token_ids)
            elif block_id in self.used_block_ids:
                block = self.blocks[block_id]
                block.ref_count += 1
            else:
                block = self._take_block(block_id)
            if block_id is not None:
                seq.num_cached_tokens += self.block_size
            seq.block_table.append(block.block_id)
        seq.num_computed_tokens = seq.num_cached_tokens
        self.num_cache_hit_tokens += seq.num_cached_tokens

    def deallocate(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.used_block_ids.remove(block_id)
                self.free_block_ids[block_id] = None
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_cached_tokens = 0

    def reset(self) -> None:
        """Free every block, for when no sequence holds any (Scheduler.abort_all). A block that was held loses its
        hash, since the step that failed may not have written its K/V; it goes to the front of the free list, to be
        reused before the blocks that still cache a prefix."""
        for block in self.blocks:
            if block.ref_count or block.block_id not in self.free_block_ids:
                if block.hash is not None and self.hash_to_block_id.get(block.hash) == block.block_id:
                    del self.hash_to_block_id[block.hash]
                block.hash, block.token_ids, block.ref_count = None, [], 0
                self.free_block_ids[block.block_id] = None
                self.free_block_ids.move_to_end(block.block_id, last=False)
        self.used_block_ids.clear()

    def needs_block(self, seq: Sequence) -> bool:
        # A decode step writes the K/V of the last token, at position len(seq) - 1.
        return (len(seq) - 1) % self.block_size == 0

    def can_append(self, seq: Sequence) -> bool:
        return self.num_free_blocks >= int(self.needs_block(seq))

    def may_append(self, seq: Sequence) -> None:
        """Before a decode step: open a new block for the last token if it starts one."""
        if self.needs_block(seq):
            seq.block_table.append(self._new_block().block_id)

    def register_full_block(self, seq: Sequence) -> None:
        """After a decode step: if it filled a block, register it so that later requests can share it."""
        if seq.num_computed_tokens % self.block_size != 0:
            return
        n = seq.num_computed_tokens // self.block_size
        prefix_hash = self.blocks[seq.block_table[n - 2]].hash if n >= 2 else None
        token_ids = seq.block(n - 1)
        self._register(self.blocks[seq.block_table[n - 1]], block_hash(token_ids, prefix_hash), token_ids)

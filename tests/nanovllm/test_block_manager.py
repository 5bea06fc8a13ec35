"""The paged KV cache's block manager: allocation, freeing, prefix-cache hits and misses, reset."""
from nanovllm.engine.block_manager import BlockManager
from nanovllm.engine.sequence import Sequence

BLOCK = 4


def seq(tokens):
    Sequence.block_size = BLOCK
    return Sequence(tokens)


def test_allocate_and_free_return_every_block():
    bm = BlockManager(8, BLOCK)
    s = seq(list(range(10)))
    assert bm.can_allocate(s)
    bm.allocate(s)
    assert len(s.block_table) == 3 and bm.num_free_blocks == 5
    assert s.num_cached_tokens == 0 and s.num_computed_tokens == 0
    bm.deallocate(s)
    assert bm.num_free_blocks == 8 and s.block_table == []


def test_shared_prefix_reuses_full_blocks_but_never_the_last_token_block():
    bm = BlockManager(16, BLOCK)
    a = seq(list(range(8)) + [100, 101])
    bm.allocate(a)
    b = seq(list(range(8)) + [200])
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert b.num_cached_tokens == 8 and b.num_computed_tokens == 8
    # The whole prompt is cached, but its last block is recomputed to get logits: it gets a fresh block.
    c = seq(list(range(8)))
    bm.allocate(c)
    assert c.block_table[0] == a.block_table[0] and c.block_table[1] != a.block_table[1]
    assert c.num_cached_tokens == 4
    assert bm.num_cache_hit_tokens == 12
    for s in (a, b, c):
        bm.deallocate(s)
    assert bm.num_free_blocks == 16


def test_chained_hash_does_not_match_equal_block_after_other_prefix():
    bm = BlockManager(16, BLOCK)
    a = seq([1, 2, 3, 4, 5, 6, 7, 8, 9])
    bm.allocate(a)
    b = seq([9, 9, 9, 9, 5, 6, 7, 8, 9])
    bm.allocate(b)
    assert b.num_cached_tokens == 0


def test_freed_blocks_are_revived_by_their_hash():
    bm = BlockManager(4, BLOCK)
    a = seq(list(range(9)))
    bm.allocate(a)
    first = a.block_table[:2]
    bm.deallocate(a)
    b = seq(list(range(9)))
    bm.allocate(b)
    assert b.block_table[:2] == first and b.num_cached_tokens == 8


def test_hash_hit_with_other_tokens_is_a_miss():
    bm = BlockManager(8, BLOCK)
    a = seq(list(range(9)))
    bm.allocate(a)
    # Forge a collision: the entry for block 0's hash now holds other token ids.
    bm.blocks[a.block_table[0]].token_ids = [7, 7, 7, 7]
    b = seq(list(range(9)))
    bm.allocate(b)
    assert b.num_cached_tokens == 0


def decoding_past_a_full_block(num_blocks: int):
    """A manager of `num_blocks` and a sequence whose one full block is computed and that has just sampled a token."""
    bm = BlockManager(num_blocks, BLOCK)
    a = seq([1, 2, 3, 4])
    bm.allocate(a)
    a.num_computed_tokens = 4
    a.append_token(5)
    return bm, a


def test_decode_opens_a_block_when_the_last_one_is_full_and_registers_full_blocks():
    bm, a = decoding_past_a_full_block(4)
    assert bm.can_append(a)
    bm.may_append(a)
    assert len(a.block_table) == 2
    for t in (6, 7, 8):
        a.num_computed_tokens += 1
        a.append_token(t)
        bm.may_append(a)
    a.num_computed_tokens += 1
    bm.register_full_block(a)
    assert len(a.block_table) == 2
    b = seq([1, 2, 3, 4, 5, 6, 7, 8, 9])
    bm.allocate(b)
    assert b.num_cached_tokens == 8


def test_can_append_false_when_a_new_block_is_needed_and_none_is_free():
    bm, a = decoding_past_a_full_block(1)
    assert not bm.can_append(a)


def test_reset_frees_every_block_and_drops_only_the_hashes_of_held_blocks():
    bm = BlockManager(8, BLOCK)
    done = seq(list(range(9)))
    bm.allocate(done)
    cached = done.block_table[:2]
    bm.deallocate(done)  # finished: its two full blocks stay cached
    held = seq([9] * 9)
    bm.allocate(held)
    bm._take_block(next(iter(bm.free_block_ids)))  # a block taken by a step that failed before recording it
    bm.reset()
    assert bm.num_free_blocks == 8 and not bm.used_block_ids and all(b.ref_count == 0 for b in bm.blocks)
    # The held blocks, whose K/V the failed step may not have written, are no longer a cached prefix...
    again = seq([9] * 9)
    bm.allocate(again)
    assert again.num_cached_tokens == 0
    # ...and were reused first, before the blocks that still cache the finished sequence's prefix.
    revived = seq(list(range(9)))
    bm.allocate(revived)
    assert revived.num_cached_tokens == 8 and revived.block_table[:2] == cached

"""The scheduler: batching, chunked prefill, preemption, finish reasons and aborting everything."""
from types import SimpleNamespace

import pytest

from nanovllm.engine.scheduler import Scheduler
from nanovllm.engine.sequence import PLACEHOLDER_TOKEN, Sequence, SequenceStatus
from nanovllm.sampling_params import SamplingParams

BLOCK = 4


def scheduler(num_blocks=64, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64):
    Sequence.block_size = BLOCK
    config = SimpleNamespace(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                             max_model_len=max_model_len, num_kvcache_blocks=num_blocks, kvcache_block_size=BLOCK)
    return Scheduler(config, eos_token_ids={0})


def run_step(s, token=7):
    seqs, is_prefill = s.schedule()
    tokens = [token if seq.num_computed_tokens + seq.num_scheduled_tokens == len(seq) else None for seq in seqs]
    s.postprocess(seqs, tokens)
    return seqs, is_prefill


def test_prefill_first_then_decode_until_max_tokens():
    s = scheduler()
    a = Sequence([1, 2, 3], SamplingParams(max_tokens=3))
    b = Sequence([4, 5], SamplingParams(max_tokens=2))
    s.add(a)
    s.add(b)
    seqs, is_prefill = run_step(s)
    assert is_prefill and seqs == [a, b]
    seqs, is_prefill = run_step(s)
    assert not is_prefill and seqs == [a, b]
    assert b.is_finished and b.completion_token_ids == [7, 7]
    run_step(s)
    assert a.is_finished and s.is_finished()
    assert s.block_manager.num_free_blocks == 64


def test_eos_and_stop_tokens_finish_unless_ignored():
    s = scheduler()
    a = Sequence([1, 2], SamplingParams(max_tokens=5))
    b = Sequence([1, 2], SamplingParams(max_tokens=5, ignore_eos=True))
    c = Sequence([1, 2], SamplingParams(max_tokens=5, stop_token_ids=[9]))
    for seq in (a, b, c):
        s.add(seq)
    seqs, _ = s.schedule()
    s.postprocess(seqs, [0, 0, 9])
    assert a.is_finished and not b.is_finished and c.is_finished


def test_chunked_prefill_respects_the_token_budget():
    s = scheduler(max_num_batched_tokens=5)
    a = Sequence(list(range(1, 13)), SamplingParams(max_tokens=1))
    s.add(a)
    chunks = []
    while not s.is_finished():
        seqs, is_prefill = s.schedule()
        assert is_prefill
        chunks.append(seqs[0].num_scheduled_tokens)
        s.postprocess(seqs, [7 if a.num_computed_tokens + a.num_scheduled_tokens == len(a) else None])
    assert chunks == [5, 5, 2] and a.completion_token_ids == [7]


def test_full_cache_preempts_the_newest_sequence_and_recomputes_it():
    s = scheduler(num_blocks=3)
    a = Sequence([1, 2, 3, 4], SamplingParams(max_tokens=4))
    b = Sequence([5, 6, 7, 8], SamplingParams(max_tokens=4))
    s.add(a)
    s.add(b)
    run_step(s)  # both prefilled, one block each; the first decode step needs two new blocks but one is free
    seqs, is_prefill = run_step(s)
    assert not is_prefill and seqs == [a] and s.num_preemptions == 1
    assert b.status == SequenceStatus.WAITING and b.block_table == [] and s.waiting[0] is b
    while not s.is_finished():
        run_step(s)
    assert a.completion_token_ids == [7] * 4 and b.completion_token_ids == [7] * 4


def test_stops_at_max_model_len():
    s = scheduler(max_model_len=6)
    a = Sequence([1, 2, 3, 4], SamplingParams(max_tokens=50))
    s.add(a)
    while not s.is_finished():
        run_step(s)
    assert len(a) == 6


def decode_batch(s, prompts, max_tokens=8):
    """The sequences of `prompts`, in their order, scheduled for their first decode step."""
    seqs = [Sequence(p, SamplingParams(max_tokens=max_tokens)) for p in prompts]
    for seq in seqs:
        s.add(seq)
    run_step(s)  # prefill
    batch, is_prefill = s.schedule()
    assert not is_prefill and batch == sorted(seqs, key=len, reverse=True)
    return seqs


def test_a_decode_batch_runs_longest_first_and_the_running_order_is_kept():
    s = scheduler()
    a, b, c, d = decode_batch(s, [[1, 2], [3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13]])
    assert list(s.running) == [a, b, c, d]  # arrival order: preemption takes the newest
    s.postprocess([b, d, c, a], [1, 2, 3, 4])
    batch, _ = s.schedule()
    assert batch == [b, d, c, a]  # equal lengths keep their arrival order
    assert s.schedule_ahead(batch) == batch


def test_schedule_ahead_appends_a_placeholder_and_opens_the_block_it_needs():
    s = scheduler()
    a, b = decode_batch(s, [[1, 2, 3], [4, 5, 6, 7, 8]])  # a's token 5 starts a block; b's token 7 does not
    blocks = [len(a.block_table), len(b.block_table)]
    assert s.schedule_ahead([a, b]) == [a, b]
    assert a.last_token == b.last_token == PLACEHOLDER_TOKEN
    assert [len(a.block_table), len(b.block_table)] == [blocks[0] + 1, blocks[1]]
    s.postprocess([a, b], [11, 12])
    assert a.token_ids == [1, 2, 3, 7, 11] and b.token_ids == [4, 5, 6, 7, 8, 7, 12]
    assert a.num_computed_tokens == 4 and a.num_scheduled_tokens == 1
    s.postprocess([a, b], [13, 14])  # the step scheduled ahead
    assert a.token_ids == [1, 2, 3, 7, 11, 13] and a.num_computed_tokens == 5 and a.num_scheduled_tokens == 0


@pytest.mark.parametrize("why", ["prefill_fits", "no_free_block"])
def test_schedule_ahead_declines_and_changes_nothing(why):
    s = scheduler(num_blocks=3 if why == "no_free_block" else 64)
    batch = decode_batch(s, [[1, 2, 3], [4, 5, 6, 7]])
    if why == "prefill_fits":
        s.add(Sequence([9, 9], SamplingParams()))
    before = [(list(seq.token_ids), list(seq.block_table)) for seq in batch]
    free = s.block_manager.num_free_blocks
    assert s.schedule_ahead(batch) == []
    assert [(seq.token_ids, seq.block_table) for seq in batch] == before and s.block_manager.num_free_blocks == free


def test_a_waiting_request_that_cannot_start_yet_does_not_stop_the_step_ahead():
    s = scheduler(max_num_seqs=2)
    a, b = decode_batch(s, [[1, 2, 3], [4, 5, 6, 7]])
    s.add(Sequence([9, 9], SamplingParams()))  # the batch is full: the next step decodes anyway
    assert s.schedule_ahead([a, b]) == [a, b]


@pytest.mark.parametrize("why", ["max_tokens", "max_model_len"])
def test_a_sequence_ending_by_length_is_left_out_of_the_step_ahead(why):
    s = scheduler(max_model_len=6 if why == "max_model_len" else 64)
    a = Sequence([1, 2, 3], SamplingParams(max_tokens=2 if why == "max_tokens" else 8))
    b = Sequence([4, 5, 6, 7] if why == "max_model_len" else [4, 5], SamplingParams(max_tokens=8))
    for seq in (a, b) if why == "max_tokens" else (b, a):
        s.add(seq)
    run_step(s)  # prefill
    batch, _ = s.schedule()
    ending = a if why == "max_tokens" else b  # 2 completion tokens / 6 tokens after this step
    assert s.schedule_ahead(batch) == [seq for seq in batch if seq is not ending]
    assert ending.last_token != PLACEHOLDER_TOKEN
    s.postprocess(batch, [21] * len(batch))
    assert ending.is_finished and ending.token_ids[-1] == 21 and PLACEHOLDER_TOKEN not in ending.token_ids


def test_a_sequence_that_ends_before_the_step_ahead_is_skipped_there():
    s = scheduler()
    a, b = decode_batch(s, [[1, 2, 3], [4, 5, 6]])
    assert s.schedule_ahead([a, b]) == [a, b]
    s.postprocess([a, b], [0, 12])  # a samples EOS
    assert a.is_finished and a.completion_token_ids == [7, 0] and not a.block_table
    s.postprocess([a, b], [99, 13])  # the step ahead still computed a row for a: dropped
    assert a.completion_token_ids == [7, 0] and b.completion_token_ids == [7, 12, 13]
    assert list(s.running) == [b]


def test_finish_reasons():
    s = scheduler(max_model_len=8)
    eos, stop, tokens, length = (Sequence([1, 2], SamplingParams(max_tokens=5)),
                                 Sequence([1, 2], SamplingParams(max_tokens=5, stop_token_ids=[9])),
                                 Sequence([1, 2], SamplingParams(max_tokens=1)),
                                 Sequence([1, 2, 3, 4, 5, 6, 7], SamplingParams(max_tokens=5)))
    for seq in (eos, stop, tokens, length):
        s.add(seq)
    seqs, _ = s.schedule()
    s.postprocess(seqs, [0, 9, 7, 7])
    assert [seq.finish_reason for seq in seqs] == ["stop", "stop", "length", "length"]
    assert s.is_finished()


def test_abort_all_empties_the_scheduler_mid_step_ahead():
    s = scheduler(max_num_seqs=2)
    a, b = decode_batch(s, [[1, 2, 3], [4, 5, 6, 7]])
    waiting = Sequence([8, 9], SamplingParams())
    s.add(waiting)
    assert s.schedule_ahead([a, b]) == [a, b]  # interrupted here: placeholders appended, their step never recorded
    s.abort_all()
    assert s.is_finished() and not s.block_manager.used_block_ids and s.block_manager.num_free_blocks == 64
    for seq in (a, b, waiting):
        assert seq.is_finished and seq.finish_reason == "abort" and not seq.block_table
        assert PLACEHOLDER_TOKEN not in seq.token_ids
    assert a.token_ids == [1, 2, 3, 7]

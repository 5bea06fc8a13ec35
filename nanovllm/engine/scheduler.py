"""Continuous batching: which sequences run each step (chunked prefill, decode, preemption by recomputation)."""
from collections import deque

from nanovllm.config import Config
from nanovllm.engine.block_manager import BlockManager
from nanovllm.engine.sequence import PLACEHOLDER_TOKEN, Sequence, SequenceStatus


class Scheduler:
    """Continuous batching: each step is either a prefill batch or a decode batch.

    Prefill comes first while requests wait. It fills up to `max_num_batched_tokens` new tokens; the sequence
    that does not fit is cut (chunked prefill) and stays at the head of the queue for the next step. When the KV
    cache cannot grow a running sequence, the newest running sequence is preempted: its blocks are freed and it is
    recomputed later from its tokens.

    A decode batch lists its sequences longest first. The decode attention's programs start in row order, so the
    longest sequences' programs start first and the short ones fill in behind them, instead of a long one starting
    last and leaving the GPU waiting on it. Every sequence of a batch grows by one token a step, so the batches
    scheduled ahead, subsequences of it, stay in that order.
    """

    def __init__(self, config: Config, eos_token_ids: set[int]):
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.max_model_len = config.max_model_len
        self.eos_token_ids = eos_token_ids
        self.block_manager = BlockManager(config.num_kvcache_blocks, config.kvcache_block_size)
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()
        self.num_preemptions = 0

    def is_finished(self) -> bool:
        return not self.waiting and not self.running

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> tuple[list[Sequence], bool]:
        scheduled = self._schedule_prefill()
        if scheduled:
            return scheduled, True
        scheduled = self._schedule_decode()
        assert scheduled, "no sequence fits in the KV cache"
        return scheduled, False

    def _schedule_prefill(self) -> list[Sequence]:
        scheduled = []
        budget = self.max_num_batched_tokens
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not seq.block_table:
                if not self.block_manager.can_allocate(seq):
                    break
                self.block_manager.allocate(seq)
            seq.num_scheduled_tokens = min(len(seq) - seq.num_computed_tokens, budget)
            budget -= seq.num_scheduled_tokens
            scheduled.append(seq)
            if seq.num_computed_tokens + seq.num_scheduled_tokens < len(seq):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
        return scheduled

    def _schedule_decode(self) -> list[Sequence]:
        scheduled = []
        while self.running and len(scheduled) < self.max_num_seqs:
            seq = self.running.popleft()
            while not self.block_manager.can_append(seq):
                if self.running:
                    self._preempt(self.running.pop())
                else:
                    self._preempt(seq)
                    break
            else:
                self.block_manager.may_append(seq)
                seq.num_scheduled_tokens = 1
                scheduled.append(seq)
        self.running.extendleft(reversed(scheduled))
        return sorted(scheduled, key=len, reverse=True)  # stable: equal lengths keep their order

    def _preempt(self, seq: Sequence) -> None:
        self.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.block_manager.deallocate(seq)
        self.waiting.appendleft(seq)

    def schedule_ahead(self, seqs: list[Sequence]) -> list[Sequence]:
        """While a decode step of the running sequences `seqs` runs, schedule the next decode step before its tokens
        are known; returns that step's batch: `seqs` less those the running step ends by length (max_tokens,
        max_model_len). Each gets a placeholder last token, which the ModelRunner replaces on the device with the
        token the running step samples, and postprocess with the real one.

        Declined ([], nothing changed) where the next step would be another: a prefill (a waiting request that
        fits), or a decode that preempts (the KV cache lacks a block).
        """
        if self._prefill_fits() or len(self.running) != len(seqs):
            return []
        batch = [seq for seq in seqs if not self._last_by_length(seq)]
        for seq in batch:
            seq.append_token(PLACEHOLDER_TOKEN)
        if sum(map(self.block_manager.needs_block, batch)) > self.block_manager.num_free_blocks:
            for seq in batch:
                seq.token_ids.pop()
            return []
        for seq in batch:
            self.block_manager.may_append(seq)
        return batch

    def _prefill_fits(self) -> bool:
        """Whether schedule() would now run a prefill (_schedule_prefill's first test)."""
        if not self.waiting or len(self.running) >= self.max_num_seqs:
            return False
        head = self.waiting[0]
        return bool(head.block_table) or self.block_manager.can_allocate(head)

    def _last_by_length(self, seq: Sequence) -> bool:
        """Whether the running step's token ends `seq` whatever it is."""
        return (seq.num_completion_tokens + 1 >= seq.sampling_params.max_tokens
                or len(seq) + 1 >= self.max_model_len)

    def postprocess(self, seqs: list[Sequence], token_ids: list[int | None]) -> None:
        """Record a step's results; `token_ids` is None for a prompt chunk that does not end its prompt.
        A sequence whose next step schedule_ahead scheduled gets its token in place of its placeholder. Sequences
        that ended at the step before (and ran in this one only because it was launched ahead) are skipped."""
        for seq, token_id in zip(seqs, token_ids):
            if seq.is_finished:
                continue
            seq.num_computed_tokens += seq.num_scheduled_tokens
            seq.num_scheduled_tokens = int(seq.ahead)
            if token_id is None:
                continue
            self.block_manager.register_full_block(seq)
            if seq.ahead:
                seq.token_ids[-1] = token_id
            else:
                seq.append_token(token_id)
            seq.finish_reason = self._finish_reason(seq, token_id)
            if seq.finish_reason is not None:
                seq.status = SequenceStatus.FINISHED
                self.block_manager.deallocate(seq)
                self.running.remove(seq)

    def _finish_reason(self, seq: Sequence, token_id: int) -> str | None:
        params = seq.sampling_params
        if ((not params.ignore_eos and token_id in self.eos_token_ids)
                or (params.stop_token_ids is not None and token_id in params.stop_token_ids)):
            return "stop"
        if seq.num_completion_tokens >= params.max_tokens or len(seq) >= self.max_model_len:
            return "length"
        return None

    def abort_all(self) -> None:
        """Finish every request with reason "abort" and free the whole KV cache (LLMEngine.abort_all). Made for a step
        that failed part-way, so it trusts no bookkeeping the step may have left half-done: the block manager is
        reset rather than given back each sequence's blocks."""
        for seq in (*self.waiting, *self.running):
            if seq.ahead:
                seq.token_ids.pop()  # the placeholder of a step that never got its token
            seq.status, seq.finish_reason = SequenceStatus.FINISHED, "abort"
            seq.block_table = []
            seq.num_computed_tokens = seq.num_cached_tokens = seq.num_scheduled_tokens = 0
        self.waiting.clear()
        self.running.clear()
        self.block_manager.reset()

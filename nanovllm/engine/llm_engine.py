import os
import time
from dataclasses import fields

from tqdm.auto import tqdm
from transformers import AutoTokenizer, GenerationConfig

from nanovllm.config import Config
from nanovllm.engine.model_runner import ModelRunner, PendingTokens
from nanovllm.engine.scheduler import Scheduler
from nanovllm.engine.sequence import Sequence
from nanovllm.sampling_params import SamplingParams

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def eos_token_ids(config: Config, tokenizer) -> set[int]:
    """End-of-sequence ids as `generate` sees them: generation_config.json first, then config.json, then tokenizer."""
    eos = None
    if os.path.isfile(os.path.join(config.model, "generation_config.json")):
        eos = GenerationConfig.from_pretrained(config.model).eos_token_id
    if eos is None:
        eos = config.hf_config.eos_token_id
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {eos}


class LLMEngine:
    def __init__(self, model: str, **kwargs):
        config_fields = {f.name for f in fields(Config) if f.init}
        unknown = set(kwargs) - config_fields
        if unknown:
            raise TypeError(f"unknown LLM arguments {sorted(unknown)}; accepted: {sorted(config_fields - {'model'})}")
        self.config = config = Config(model, **kwargs)
        Sequence.block_size = config.kvcache_block_size
        # Checkpoints without tokenizer files (e.g. a bare save_pretrained) still serve prompts given as token ids.
        self.tokenizer = None
        if any(os.path.isfile(os.path.join(model, f)) for f in TOKENIZER_FILES):
            self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model_runner = ModelRunner(config)
        config.num_kvcache_blocks = self.model_runner.num_kvcache_blocks
        self.scheduler = Scheduler(config, eos_token_ids(config, self.tokenizer))
        # A decode step launched ahead (step()): its sequences and its PendingTokens.
        self.ahead: tuple[list[Sequence], PendingTokens] | None = None

    def _make_sequence(self, prompt: str | list[int], sampling_params: SamplingParams) -> Sequence:
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(f"sampling_params must be SamplingParams, got {type(sampling_params).__name__}")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"model_path {self.config.model!r} has no tokenizer: give prompts as token ids")
            token_ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            token_ids = list(prompt)
        else:
            raise TypeError(f"a prompt must be a str or a list of token ids (ints), got {type(prompt).__name__}")
        if not token_ids:
            raise ValueError("a prompt must have at least one token, got an empty prompt")
        if len(token_ids) > self.config.max_model_len:
            raise ValueError(
                f"a prompt has {len(token_ids)} tokens, more than max_model_len={self.config.max_model_len}")
        vocab_size = self.config.hf_config.vocab_size
        if not all(0 <= t < vocab_size for t in token_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab_size}), got {min(token_ids)}..{max(token_ids)}")
        return Sequence(token_ids, sampling_params)

    def add_request(self, prompt: str | list[int], sampling_params: SamplingParams) -> Sequence:
        seq = self._make_sequence(prompt, sampling_params)
        self.scheduler.add(seq)
        return seq

    def step(self) -> tuple[list[Sequence], int]:
        """Run one scheduled batch; returns the sequences it finished and its token count (negative for decode).

        A decode step runs one step ahead where it can (Scheduler.schedule_ahead): the next decode step is launched
        before this step's tokens are read back, so the GPU goes on while the host records them and schedules. A
        sequence that ends at this step on a token (EOS, a stop token) also ran in the step ahead, whose result for
        it is dropped; one that ends by its length is left out of it.
        """
        if self.ahead is not None:
            (seqs, pending), is_prefill, self.ahead = self.ahead, False, None
        else:
            seqs, is_prefill = self.scheduler.schedule()
            pending = self.model_runner.launch(seqs, is_prefill)
        live = [seq for seq in seqs if not seq.is_finished]
        num_tokens = sum(seq.num_scheduled_tokens for seq in seqs) if is_prefill else -len(live)
        batch = [] if is_prefill else self.scheduler.schedule_ahead(live)
        if batch:
            row = {id(seq): i for i, seq in enumerate(seqs)}
            previous = pending.rows([row[id(seq)] for seq in batch])
            self.ahead = (batch, self.model_runner.launch(batch, False, previous=previous))
        self.scheduler.postprocess(seqs, pending.token_ids())
        if self.ahead is not None and all(seq.is_finished for seq in self.ahead[0]):
            self.ahead = None  # nothing left to read from it; what it computed is never used
        return [seq for seq in live if seq.is_finished], num_tokens

    def is_finished(self) -> bool:
        return self.scheduler.is_finished() and self.ahead is None

    def generate(self, prompts: list[str] | list[list[int]],
                 sampling_params: SamplingParams | list[SamplingParams] = SamplingParams(),
                 use_tqdm: bool = True) -> list[dict]:
        """Generate for every prompt; returns, in prompt order, {"text": str, "token_ids": list[int]} each."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            raise TypeError("prompts must be a list of prompts (strings or lists of token ids), not a single prompt")
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(f"got {len(sampling_params)} sampling_params for {len(prompts)} prompts")
        # Every request is checked before any is queued, so a bad one leaves the engine clean for the next call.
        seqs = [self._make_sequence(p, sp) for p, sp in zip(prompts, sampling_params)]
        for seq in seqs:
            self.scheduler.add(seq)
        pbar = tqdm(total=len(seqs), desc="Generating", dynamic_ncols=True, disable=not use_tqdm)
        prefill_tput = decode_tput = 0.0
        while not self.is_finished():
            start = time.perf_counter()
            finished, num_tokens = self.step()
            elapsed = time.perf_counter() - start
            if num_tokens > 0:
                prefill_tput = num_tokens / elapsed
            else:
                decode_tput = -num_tokens / elapsed
            pbar.set_postfix(prefill=f"{prefill_tput:.0f}tok/s", decode=f"{decode_tput:.0f}tok/s", refresh=False)
            pbar.update(len(finished))
        pbar.close()
        return [{"text": self._decode(seq.completion_token_ids), "token_ids": seq.completion_token_ids} for seq in seqs]

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids) if self.tokenizer is not None else ""

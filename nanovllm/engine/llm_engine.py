"""The engine: request checks, the generate loop (a decode step launched one ahead) and recovery from failures."""
import numbers
import os
import time
import warnings
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
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(model)
            except Exception as e:  # noqa: BLE001 - a damaged file raises whatever its parser meets
                first_line = str(e).partition("\n")[0]
                raise ValueError(f"model_path {model!r}: cannot load its tokenizer "
                                 f"({type(e).__name__}: {first_line})") from None
        self.model_runner = ModelRunner(config)
        config.num_kvcache_blocks = self.model_runner.num_kvcache_blocks
        self.scheduler = Scheduler(config, eos_token_ids(config, self.tokenizer))
        # A decode step launched ahead (step()): its sequences and its PendingTokens.
        self.ahead: tuple[list[Sequence], PendingTokens] | None = None

    def _make_sequence(self, prompt: str | list[int], sampling_params: SamplingParams, name: str) -> Sequence:
        """The request checked (`name` says which one in errors), not yet queued."""
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(f"sampling_params for {name} must be SamplingParams, got {type(sampling_params).__name__}")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"model_path {self.config.model!r} has no tokenizer: give prompts as token ids")
            token_ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)):
            for i, t in enumerate(prompt):
                if isinstance(t, bool) or not isinstance(t, numbers.Integral):
                    raise TypeError(f"{name}[{i}] must be a token id (int), got {type(t).__name__} {t!r}")
            token_ids = [int(t) for t in prompt]
        else:
            raise TypeError(f"{name} must be a str or a list of token ids (ints), got {type(prompt).__name__}")
        if not token_ids:
            raise ValueError(f"{name} is an empty prompt; a prompt must have at least one token")
        if len(token_ids) > self.config.max_model_len:
            raise ValueError(f"{name} has {len(token_ids)} tokens, more than max_model_len={self.config.max_model_len}")
        vocab_size = self.config.hf_config.vocab_size
        if not all(0 <= t < vocab_size for t in token_ids):
            raise ValueError(f"{name} has token ids out of [0, {vocab_size}): {min(token_ids)}..{max(token_ids)}")
        return Sequence(token_ids, sampling_params)

    def add_request(self, prompt: str | list[int], sampling_params: SamplingParams) -> Sequence:
        seq = self._make_sequence(prompt, sampling_params, "prompt")
        self.scheduler.add(seq)
        return seq

    def abort_all(self) -> None:
        """Abort every request (finish_reason "abort"), leaving the engine empty and consistent; step() and generate()
        call it when they fail or are interrupted, wherever that happens. The step launched ahead, if any, is
        dropped unread: the device runs steps in launch order, so the K/V it still writes land before any later
        step's, in blocks that the reset KV cache no longer lists as caching a prefix, and its pinned read-back
        buffer is kept by torch's caching host allocator until its copy is done."""
        self.ahead = None
        self.scheduler.abort_all()

    def step(self) -> tuple[list[Sequence], int]:
        """Run one scheduled batch; returns the sequences it finished and its token count (negative for decode).

        A decode step runs one step ahead where it can (Scheduler.schedule_ahead): the next decode step is launched
        before this step's tokens are read back, so the GPU goes on while the host records them and schedules. A
        sequence that ends at this step on a token (EOS, a stop token) also ran in the step ahead, whose result for
        it is dropped; one that ends by its length is left out of it.

        If it raises (or is interrupted), every request is aborted first (abort_all), so the engine can go on.
        """
        try:
            return self._step()
        except BaseException:
            self.abort_all()
            raise

    def _step(self) -> tuple[list[Sequence], int]:
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

    def exit(self) -> None:
        """Stop the engine's tensor-parallel worker processes (with one rank there are none); a later step raises.
        Collecting the engine or ending the interpreter stops them too."""
        self.model_runner.exit()

    def generate(self, prompts: list[str] | list[list[int]],
                 sampling_params: SamplingParams | list[SamplingParams] = SamplingParams(),
                 use_tqdm: bool = True) -> list[dict]:
        """Generate for every prompt; returns, in prompt order, {"text": str, "token_ids": list[int],
        "finish_reason": "stop" | "length"} each: "stop" for EOS or a stop token (kept in token_ids; special tokens
        are left out of text), "length" for max_tokens or max_model_len (warned about, as it cuts a request short).
        If it raises or is interrupted (Ctrl-C), every request is aborted (abort_all): the engine is ready for the
        next call."""
        if not isinstance(prompts, (str, list, tuple)):
            raise TypeError(f"prompts must be a list of prompts (strings or lists of token ids), got "
                            f"{type(prompts).__name__}")
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            raise TypeError("prompts must be a list of prompts (strings or lists of token ids), not a single prompt")
        if not isinstance(sampling_params, (list, tuple)):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(f"got {len(sampling_params)} sampling_params for {len(prompts)} prompts")
        # Every request is checked before any is queued, so a bad one leaves the engine clean for the next call.
        seqs = [self._make_sequence(p, sp, f"prompts[{i}]") for i, (p, sp) in enumerate(zip(prompts, sampling_params))]
        try:
            self._run(seqs, use_tqdm)
        except BaseException:
            self.abort_all()
            raise
        cut = sum(1 for seq in seqs if seq.finish_reason == "length"
                  and seq.num_completion_tokens < seq.sampling_params.max_tokens)
        if cut:
            warnings.warn(f"{cut} of {len(seqs)} requests stopped at max_model_len={self.config.max_model_len} "
                          "before max_tokens (finish_reason 'length')", stacklevel=2)
        return [{"text": self._decode(seq.completion_token_ids), "token_ids": seq.completion_token_ids,
                 "finish_reason": seq.finish_reason} for seq in seqs]

    def _run(self, seqs: list[Sequence], use_tqdm: bool) -> None:
        for seq in seqs:
            self.scheduler.add(seq)
        prefill_tput = decode_tput = 0.0
        with tqdm(total=len(seqs), desc="Generating", dynamic_ncols=True, disable=not use_tqdm) as pbar:
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

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True) if self.tokenizer is not None else ""

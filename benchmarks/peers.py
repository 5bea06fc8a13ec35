"""Hugging Face transformers on the workloads of benchmarks/serving.py, set up as a user would for speed (GPU only).

- Batch-1 decode: generate() with a static KV cache, which on CUDA compiles the decoding step itself
  (transformers' auto-compile); sdpa attention, bf16, greedy. The first calls compile and are not timed. A step's
  time is taken from a streamer: generate hands it each new token after copying it to the host, so the times
  between calls are whole steps; the prefill (up to the first token) is left out, as in ours.
- Throughput: continuous batching (`continuous_batching_context_manager`), sdpa, the checkpoint's dtype, sampling
  as ours samples (temperature 0.6, no top-k or top-p), after warm-up requests through the same manager.
"""
from __future__ import annotations

import time

import torch
from transformers import AutoModelForCausalLM, GenerationConfig
from transformers.generation.streamers import BaseStreamer

from benchmarks.serving import TEMPERATURE, fresh

WARMUP_CALLS = 2  # the first compiles the decoding step, the second runs it once compiled
WARMUP_REQUESTS = 4
WARMUP_TOKENS = 16


class StepTimes(BaseStreamer):
    """When generate() handed over the prompt, then each new token."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def load(path: str, dtype: torch.dtype | str) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").cuda().eval()


def hf_decode_latency(path: str, repeats: int, prompt_len: int = 128, output_len: int = 256) -> list[float]:
    """Seconds per decode step of batch-1 greedy generate() with a static cache, one per repeat."""
    model = load(path, torch.bfloat16)
    config = GenerationConfig(max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False,
                              cache_implementation="static", eos_token_id=None, pad_token_id=0)
    samples = []
    for call in range(WARMUP_CALLS + repeats):
        ids = torch.full((1, prompt_len), 2 + call, dtype=torch.long, device="cuda")
        streamer = StepTimes()
        model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config, streamer=streamer)
        times = streamer.times  # the prompt, the first token (the prefill), then one per decode step
        if len(times) < 3:
            raise RuntimeError(f"generate() made {len(times) - 1} tokens; expected {output_len}")
        if call >= WARMUP_CALLS:
            samples.append((times[-1] - times[1]) / (len(times) - 2))
    del model
    torch.cuda.empty_cache()
    return samples


def _generate(manager, prompts: list[list[int]], output_lens: list[int]) -> int:
    """Output tokens of the requests, all submitted at once and waited for."""
    for ids, n in zip(prompts, output_lens):
        manager.add_request(ids, max_new_tokens=n)
    num_tokens = 0
    for _ in prompts:
        while (result := manager.get_result(timeout=1)) is None or not result.is_finished():
            if result is None and not manager.is_running():
                raise RuntimeError("transformers' continuous batching thread stopped early")
        num_tokens += len(result.generated_tokens)
    return num_tokens


def hf_throughput(path: str, prompts: list[list[int]], output_lens: list[int], repeats: int) -> list[float]:
    """Output tokens/s of each repeat of the requests through transformers' continuous batching."""
    model = load(path, "auto")
    vocab = model.config.vocab_size
    config = GenerationConfig(max_new_tokens=max(output_lens), do_sample=True, temperature=TEMPERATURE, top_k=0,
                              top_p=1.0, eos_token_id=None, pad_token_id=0)
    samples = []
    with model.continuous_batching_context_manager(generation_config=config, block=True, timeout=5) as manager:
        warm = prompts[:WARMUP_REQUESTS]
        _generate(manager, fresh(warm, -1, vocab), [WARMUP_TOKENS] * len(warm))
        for repeat in range(repeats):
            start = time.perf_counter()
            num_tokens = _generate(manager, fresh(prompts, repeat, vocab), output_lens)
            elapsed = time.perf_counter() - start
            samples.append(num_tokens / elapsed)
            print(f"HF transformers continuous batching, {len(prompts)} requests: {num_tokens} output tokens in "
                  f"{elapsed:.2f} s: {samples[-1]:.1f} tok/s", flush=True)
    del model
    torch.cuda.empty_cache()
    return samples

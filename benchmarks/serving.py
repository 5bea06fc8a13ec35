"""Our engine on nano-vLLM's throughput workload and on batch-1 decode, each run several times (GPU only).

Throughput workload (as nano-vLLM's bench.py): random seed 0; prompt and output lengths uniform in 100..1024;
prompt tokens uniform in 0..10000; temperature 0.6, ignore_eos. Throughput = output tokens / wall time. A repeat
changes the first token of every prompt (`fresh`), so that no repeat reuses the prefix cache of the one before;
repeat 0 is the workload itself.

Batch-1 decode: greedy, a 128-token prompt, then the time per decode step, against the floor of reading every
weight once per token at the measured copy bandwidth and at the card's datasheet bandwidth.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from random import randint, seed

import torch

from nanovllm import LLM, SamplingParams

TEMPERATURE = 0.6  # nano-vLLM's bench.py
# Datasheet memory bandwidth in GB/s by a name the device name contains (NVIDIA's H200 and H100 SXM datasheets).
DATASHEET_GBPS = {"H200": 4800.0, "H100 80GB HBM3": 3350.0}


def datasheet_gbps(gpu: str) -> float | None:
    return next((v for k, v in DATASHEET_GBPS.items() if k in gpu), None)


def workload(num_seqs: int, vocab_size: int, max_len: int = 1024) -> tuple[list[list[int]], list[int]]:
    """The first `num_seqs` requests (lengths capped at `max_len`); token ids wrap around a vocabulary smaller than
    10001 (tiny test models)."""
    seed(0)
    prompts = [[randint(0, 10000) % vocab_size for _ in range(min(randint(100, 1024), max_len))]
               for _ in range(num_seqs)]
    output_lens = [min(randint(100, 1024), max_len) for _ in range(num_seqs)]
    return prompts, output_lens


def fresh(prompts: list[list[int]], repeat: int, vocab_size: int) -> list[list[int]]:
    """The prompts with their first token moved by `repeat`: same lengths and work, no prefix shared with another
    repeat's."""
    return [[(p[0] + repeat) % vocab_size, *p[1:]] for p in prompts]


def throughput(path: str, prompts: list[list[int]], output_lens: list[int], repeats: int,
               enforce_eager: bool = False, **options) -> list[float]:
    """Output tokens/s of each repeat of the requests, after a warm-up request; `options` go to LLM."""
    llm = LLM(path, enforce_eager=enforce_eager, max_model_len=4096, **options)
    vocab = llm.config.hf_config.vocab_size
    llm.generate(["Benchmark: "], SamplingParams(), use_tqdm=False)
    params = [SamplingParams(temperature=TEMPERATURE, ignore_eos=True, max_tokens=n) for n in output_lens]
    samples = []
    for repeat in range(repeats):
        start = time.perf_counter()
        outputs = llm.generate(fresh(prompts, repeat, vocab), params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        num_tokens = sum(len(o["token_ids"]) for o in outputs)
        samples.append(num_tokens / elapsed)
        print(f"nano-vLLM, {len(prompts)} requests: {num_tokens} output tokens in {elapsed:.2f} s: "
              f"{samples[-1]:.1f} tok/s", flush=True)
    llm.exit()
    return samples


@dataclass
class DecodeLatency:
    step_s: list[float]  # seconds per decode step, one per repeat
    weight_bytes: int  # what a decode step reads of the weights
    replay_s: float | None  # GPU time of the batch-1 decode graph replayed back to back (None: no graphs)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step reads of the weights: all of them, except the input embedding (one row) when it is not
    the LM head too."""
    embed = model.model.embed_tokens.weight
    total = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed)
    if embed is model.lm_head.weight:
        total += embed.numel() * embed.element_size()
    return total


def decode_latency(path: str, repeats: int, enforce_eager: bool = False, prompt_len: int = 128,
                   output_len: int = 256) -> DecodeLatency:
    """Batch-1 greedy decode of `output_len` tokens after a `prompt_len`-token prompt, `repeats` times after a
    warm-up request."""
    llm = LLM(path, enforce_eager=enforce_eager, max_model_len=prompt_len + output_len, max_num_seqs=1)
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=output_len)
    llm.generate([[1] * prompt_len], params, use_tqdm=False)
    steps = []
    for repeat in range(repeats):
        llm.add_request([2 + repeat] * prompt_len, params)
        llm.step()  # prefill
        torch.cuda.synchronize()
        start = time.perf_counter()
        num_steps = 0
        while not llm.is_finished():
            llm.step()
            num_steps += 1
        steps.append((time.perf_counter() - start) / num_steps)
    graphs = llm.model_runner.graphs
    # The last step's graph: batch 1 at the widest block table, as max_model_len is the request's own length.
    replay = graph_replay_seconds(graphs.graphs[1, graphs.widths[1][-1]]) if graphs is not None else None
    result = DecodeLatency(steps, weight_bytes(llm.model_runner.model), replay)
    llm.exit()
    return result


def graph_replay_seconds(graph: torch.cuda.CUDAGraph, replays: int = 50) -> float:
    """GPU time of one replay of the last step's graph on its last inputs (it rewrites the same KV slot)."""
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / replays

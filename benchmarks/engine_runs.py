"""One engine of the end-to-end benchmarks, built for a grid of points, and one timed request batch on it.

`build` sizes the KV cache, batch and prefill limits to the points; `run_once` times a fresh batch of random
prompts (the prefill step, then the decode steps to the last token); `measure` is the median of several such runs
after a warm-up, as benchmarks/bench_baseline.py reports it, with every run's times kept.

The variant "compiled" is what a user gets by compiling instead of tuning: the separate RMSNorm + GEMM path with
the model's forward under torch.compile (default mode), and the decode CUDA graphs captured from the compiled
forward, as vLLM captures its compiled model. LLM() has no compile option, so `build` makes the engine without
graphs, compiles the model in place and has the runner capture the graphs (ModelRunner.capture_graphs): the
prefill and every graph then run the compiled forward.
"""
from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path

import torch

from nanovllm import LLM, SamplingParams

SEEDS = itertools.count()
BLOCK_SIZE = 16  # KV-cache tokens per block


def engine_kwargs(variant: str, tuning_table: str | None) -> dict:
    if variant == "baseline":
        return {"fused_norm_linear": False}
    if variant == "compiled":  # the graphs are captured after compiling (compile_model)
        return {"fused_norm_linear": False, "enforce_eager": True}
    return {"fused_norm_linear": True, "tuning_table": False if variant == "fused" else tuning_table}


def footprint(point: tuple[int, int], output_len: int) -> tuple[int, int]:
    """(KV-cache blocks, prefill tokens) of a (batch, prompt length) point: what an engine built for it holds."""
    batch, seq_len = point
    return batch * -(-(seq_len + output_len) // BLOCK_SIZE), batch * seq_len


def build(path: str, variant: str, points: list[tuple[int, int]], output_len: int, tuning_table: str | None,
          **options) -> LLM:
    """An engine whose KV cache, batch and prefill limits hold every point in `points` and no more; `options` go
    to LLM (the experiments' `fusion=FusionOptions(...)`)."""
    blocks, tokens = (max(sizes) for sizes in zip(*(footprint(p, output_len) for p in points)))
    llm = LLM(path, dtype=torch.bfloat16, max_model_len=max(s for _, s in points) + output_len,
              max_num_seqs=max(b for b, _ in points), max_num_batched_tokens=tokens,
              kvcache_block_size=BLOCK_SIZE, num_kvcache_blocks=blocks, **engine_kwargs(variant, tuning_table),
              **options)
    if variant == "compiled":
        compile_model(llm)
    return llm


def compile_model(llm: LLM) -> None:
    """torch.compile the engine's model in place, then (on a GPU) capture its decode graphs from the compiled
    forward. The warm-up forward before each capture compiles that batch size, so nothing compiles while a graph
    is captured."""
    runner = llm.model_runner
    runner.model.compile()
    if runner.device.type == "cuda":
        runner.graphs = runner.capture_graphs()
    from torch._dynamo.utils import counters

    print(f"torch.compile: {counters['stats']['unique_graphs']} graphs, {sum(counters['graph_break'].values())} "
          "graph breaks so far in this process", flush=True)


def run_once(llm: LLM, batch: int, seq_len: int, output_len: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one batch of prompts never seen before (no prefix-cache hits)."""
    g = torch.Generator().manual_seed(next(SEEDS))
    vocab = llm.config.hf_config.vocab_size
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=output_len)
    for prompt in torch.randint(1, vocab, (batch, seq_len), generator=g).tolist():
        llm.add_request(prompt, params)
    torch.cuda.synchronize()
    start = time.perf_counter()
    _, num_tokens = llm.step()  # returns the sampled tokens as a list, so the GPU has finished
    prefill_end = time.perf_counter()
    if num_tokens != batch * seq_len:
        raise RuntimeError(f"the prefill step ran {num_tokens} tokens, expected {batch} x {seq_len}")
    while not llm.is_finished():
        llm.step()
    return prefill_end - start, time.perf_counter() - prefill_end


def measure(llm: LLM, batch: int, seq_len: int, output_len: int, repeats: int, profile: Path | None) -> dict:
    run_once(llm, batch, seq_len, output_len)  # compiles the kernels of this M, fills the allocator
    torch.cuda.reset_peak_memory_stats()
    runs = [run_once(llm, batch, seq_len, output_len) for _ in range(repeats)]
    peak_mb = torch.cuda.max_memory_allocated() / 2**20
    if profile is not None:
        write_profile(llm, batch, seq_len, output_len, profile)
    return summarize(runs, batch, output_len, peak_mb)


def write_profile(llm: LLM, batch: int, seq_len: int, output_len: int, path: Path) -> None:
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        run_once(llm, batch, seq_len, output_len)
    prof.export_chrome_trace(str(path))


def summarize(runs: list[tuple[float, float]], batch: int, output_len: int, peak_mb: float) -> dict:
    """The medians of the runs, and every run's ttft and tpot in the order they ran (';'-separated ms)."""
    ttft = statistics.median(p for p, _ in runs)
    decode = statistics.median(d for _, d in runs)
    tpot = decode / (output_len - 1)
    return {"ttft_ms": ttft * 1e3, "tpot_ms": tpot * 1e3, "latency_ms": (ttft + decode) * 1e3,
            "throughput_tokens_per_sec": batch / tpot, "peak_memory_mb": peak_mb, "status": "ok",
            "ttft_ms_samples": ";".join(f"{p * 1e3:.6g}" for p, _ in runs),
            "tpot_ms_samples": ";".join(f"{d * 1e3 / (output_len - 1):.6g}" for _, d in runs)}

"""Experiment: where bench.py's wall time goes, in one process.

First a torch.profiler table over the first N requests of bench.py's workload (kernels by CUDA time, host calls by CPU
time), then the full 256-request workload again in the same, now warm, process with every engine step's host wall
time: prefill and decode steps, decode steps by batch size, the time between steps. Writes bench_steps.csv (each
step's start, end and token count; negative counts are decode steps) under $OUT or the working directory.

    python3 scripts/exp_profile_bench.py [N]      # N = 64 by default

benchmarks/bench_results/profile_h200_d6443a6/ holds one run's output (H200, tree d6443a6), together with a cProfile
of the tuner made by `python3 -m cProfile -o tune.prof cli.py tune --gpu h200 --shapes llama-7b --budget 110`.
"""
import collections
import csv
import os
import sys
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile
from transformers import AutoConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.py lives at the root of the checkout

from bench import workload  # noqa: E402
from nanovllm import LLM, SamplingParams  # noqa: E402
from nanovllm.utils.random_checkpoint import cached_random_checkpoint  # noqa: E402


def main(profiled: int) -> None:
    path = cached_random_checkpoint("qwen3-0.6b")
    vocab = AutoConfig.from_pretrained(path).vocab_size
    llm = LLM(path, max_model_len=4096)
    llm.generate(["Benchmark: "], SamplingParams(), use_tqdm=False)

    prompts, lens = workload(profiled, vocab)
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n) for n in lens]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        out = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
    tokens = sum(len(o["token_ids"]) for o in out)
    print(f"{tokens} tokens in {elapsed:.2f}s {tokens / elapsed:.0f} tok/s (under profiler)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=40))

    step, log = llm.step, []

    def timed_step():
        t0 = time.perf_counter()
        finished, n = step()
        log.append((t0, time.perf_counter(), n))
        return finished, n

    llm.step = timed_step
    prompts, lens = workload(256, vocab)
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n) for n in lens]
    start = time.perf_counter()
    out = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o["token_ids"]) for o in out)
    print(f"full: {tokens} tokens in {elapsed:.2f}s {tokens / elapsed:.0f} tok/s; steps {len(log)}")
    prefill = [(b - a, k) for a, b, k in log if k > 0]
    decode = [(b - a, -k) for a, b, k in log if k < 0]
    print(f"prefill steps {len(prefill)} {sum(d for d, _ in prefill):.2f}s tokens {sum(k for _, k in prefill)}")
    print(f"decode steps {len(decode)} {sum(d for d, _ in decode):.2f}s")
    by_batch = collections.defaultdict(list)
    for d, k in decode:
        by_batch[(k + 31) // 32 * 32].append(d)
    for k in sorted(by_batch):
        steps = sorted(by_batch[k])
        print(f"  decode batch<= {k}: {len(steps)} steps, median {steps[len(steps) // 2] * 1e3:.2f} ms, "
              f"total {sum(steps):.2f}s")
    print(f"between steps {sum(log[i + 1][0] - log[i][1] for i in range(len(log) - 1)):.2f}s")
    with open(os.path.join(os.environ.get("OUT", "."), "bench_steps.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["start_s", "end_s", "tokens"])
        writer.writerows(log)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 64)

"""bench.py's workload with decode batches longest first (the scheduler's order) and in arrival order, on a CUDA GPU.

One engine, bench.py's requests run several times: first in the scheduler's order on the cold engine (bench.py's
own figure), then alternating arrival order (Scheduler._schedule_decode's batch put back in the running queue's
order, wrapped from outside) and longest first, so that drift hits both alike. The warm runs find every prompt in
the prefix cache, so their time is nearly all decode. Prints each run's wall and decode seconds, the medians by
order, and writes a CSV.

    python3 scripts/exp_decode_order.py --pairs 2 --output decode_order.csv
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import workload  # noqa: E402
from benchmarks.common import CsvWriter  # noqa: E402
from nanovllm import LLM, SamplingParams  # noqa: E402
from nanovllm.engine.scheduler import Scheduler  # noqa: E402
from nanovllm.utils.random_checkpoint import SHAPES, cached_random_checkpoint  # noqa: E402


def arrival_order(scheduler: Scheduler) -> None:
    """Make `scheduler`'s decode batches come in the running queue's order (arrival) instead of longest first."""
    longest_first = scheduler._schedule_decode

    def schedule_decode():
        batch = longest_first()
        rank = {id(seq): i for i, seq in enumerate(scheduler.running)}
        return sorted(batch, key=lambda seq: rank[id(seq)])

    scheduler._schedule_decode = schedule_decode


def timed_run(llm: LLM, prompts, params) -> tuple[float, float, int]:
    """(wall seconds, seconds in decode steps, output tokens) of one generate call."""
    decode = 0.0
    step = llm.step

    def timed_step():
        nonlocal decode
        start = time.perf_counter()
        finished, num_tokens = step()
        if num_tokens < 0:
            decode += time.perf_counter() - start
        return finished, num_tokens

    llm.step = timed_step
    try:
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - start
    finally:
        del llm.step
    return wall, decode, sum(len(o["token_ids"]) for o in outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen3-0.6b", choices=sorted(SHAPES))
    parser.add_argument("--pairs", type=int, default=2, help="warm runs of each order, alternating")
    parser.add_argument("--output", required=True, help="CSV of the runs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("exp_decode_order.py: needs a CUDA GPU (none detected); nothing was measured")
    if args.pairs < 1:
        parser.error(f"--pairs must be >= 1, got {args.pairs}")
    path = cached_random_checkpoint(args.shape)
    prompts, output_lens = workload(256, AutoConfig.from_pretrained(path).vocab_size)
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n) for n in output_lens]
    llm = LLM(path, max_model_len=4096)
    llm.generate([[1, 2, 3]], SamplingParams(), use_tqdm=False)
    longest_first = llm.scheduler._schedule_decode
    # Each run's row is written as it ends: a run cut short by its time limit (gpu_pending.sh) keeps the runs before.
    writer = CsvWriter(args.output, ["run", "order", "wall_s", "decode_s", "tokens", "tok_per_s"])
    rows = []
    for run, order in enumerate(["longest first (cold)"] + ["arrival", "longest first"] * args.pairs):
        if order == "arrival":
            arrival_order(llm.scheduler)
        else:
            llm.scheduler._schedule_decode = longest_first
        wall, decode, tokens = timed_run(llm, prompts, params)
        rows.append({"run": run, "order": order, "wall_s": round(wall, 3), "decode_s": round(decode, 3),
                     "tokens": tokens, "tok_per_s": round(tokens / wall, 1)})
        writer.write(rows[-1])
        print(f"run {run} {order:<22} {wall:6.2f} s wall, {decode:6.2f} s decode, {tokens / wall:8.0f} tok/s")
    for order in ("arrival", "longest first"):
        decode = [r["decode_s"] for r in rows if r["order"] == order]
        print(f"{order}: decode median {statistics.median(decode):.3f} s (range {min(decode):.3f}-{max(decode):.3f})")


if __name__ == "__main__":
    main()

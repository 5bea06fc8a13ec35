"""Host time of a decode step's bookkeeping, no model: the scheduler, block manager and input arrays of bench.py's
workload after its prefill, timed step by step on the CPU.

Each step is what LLMEngine.step does on the host around a decode step launched ahead: Scheduler.schedule_ahead
(with the block manager), the CUDA graph's arrays (cuda_graph.decode_arrays, padded to the graph's batch), and
Scheduler.postprocess of the step before. Prints the median of each part by batch size.

    python3 benchmarks/host_step.py
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import workload  # noqa: E402
from nanovllm.engine.cuda_graph import GRAPH_BATCH_SIZES, decode_arrays  # noqa: E402
from nanovllm.engine.scheduler import Scheduler  # noqa: E402
from nanovllm.engine.sequence import Sequence  # noqa: E402
from nanovllm.sampling_params import SamplingParams  # noqa: E402

MAX_MODEL_LEN = 4096
BLOCK_SIZE = 16


def prefilled(num_seqs: int) -> Scheduler:
    """A scheduler holding the workload's requests, every prompt prefilled (its first token appended)."""
    config = SimpleNamespace(max_num_seqs=num_seqs, max_num_batched_tokens=16384, max_model_len=MAX_MODEL_LEN,
                             kvcache_block_size=BLOCK_SIZE,
                             num_kvcache_blocks=num_seqs * MAX_MODEL_LEN // BLOCK_SIZE)
    Sequence.block_size = BLOCK_SIZE
    scheduler = Scheduler(config, eos_token_ids=set())
    prompts, output_lens = workload(num_seqs, 10001)
    for prompt, n in zip(prompts, output_lens):
        scheduler.add(Sequence(prompt, SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n)))
    while scheduler.waiting:
        seqs, _ = scheduler.schedule()
        scheduler.postprocess(seqs, [1 if seq.num_computed_tokens + seq.num_scheduled_tokens == len(seq) else None
                                     for seq in seqs])
    return scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_seqs", type=int, default=256, help="requests (the first N of bench.py's workload)")
    args = parser.parse_args()
    if not 1 <= args.num_seqs <= GRAPH_BATCH_SIZES[-1]:
        parser.error(f"--num_seqs must be in 1..{GRAPH_BATCH_SIZES[-1]}, got {args.num_seqs}")
    scheduler = prefilled(args.num_seqs)
    width = MAX_MODEL_LEN // BLOCK_SIZE
    seqs, _ = scheduler.schedule()
    times = defaultdict(lambda: defaultdict(list))  # batch bucket -> part -> ms
    while seqs:
        start = time.perf_counter()
        batch = scheduler.schedule_ahead([seq for seq in seqs if not seq.is_finished])
        scheduled = time.perf_counter()
        if batch:
            decode_arrays(batch, next(b for b in GRAPH_BATCH_SIZES if b >= len(batch)), BLOCK_SIZE, width)
        prepared = time.perf_counter()
        scheduler.postprocess(seqs, [7] * len(seqs))
        end = time.perf_counter()
        bucket = times[(len(seqs) - 1) // 64 * 64 + 1]
        for part, ms in (("schedule_ahead", scheduled - start), ("decode_arrays", prepared - scheduled),
                         ("postprocess", end - prepared), ("total", end - start)):
            bucket[part].append(ms * 1e3)
        seqs = batch
    print(f"host bookkeeping per decode step (median ms) of bench.py's first {args.num_seqs} requests")
    print(f"{'batch':>9} {'steps':>6} {'schedule_ahead':>15} {'decode_arrays':>14} {'postprocess':>12} {'total':>7}")
    for low in sorted(times, reverse=True):
        parts = times[low]
        print(f"{low:>4}-{low + 63:<4} {len(parts['total']):>6} {statistics.median(parts['schedule_ahead']):>15.3f} "
              f"{statistics.median(parts['decode_arrays']):>14.3f} {statistics.median(parts['postprocess']):>12.3f} "
              f"{statistics.median(parts['total']):>7.3f}")


if __name__ == "__main__":
    main()

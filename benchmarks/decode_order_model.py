"""A model of the decode attention's tail at bench.py's mixed lengths: how much of a kernel's time is the GPU waiting
on programs that started last, with the batch in arrival order and longest first (Scheduler._schedule_decode).

One program per (KV head, sequence), started in row order as resident slots free up (the GPU's order for a grid
whose first axis is the sequence); a program's work is its 64-key tiles plus a fixed start-up. The running programs
share the bandwidth, each at most `k` times its fair share of a full GPU (k = 1: a program's speed never changes;
larger k: a GPU with fewer programs left finishes them faster). Prints the kernel's time over its work (1.0: no
tail) at a few decode steps of the workload. A model, no GPU: it bounds the prediction in docs/PERF_NOTES.md.

    python3 benchmarks/decode_order_model.py
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import workload  # noqa: E402

KV_HEADS = 8  # qwen3-0.6b
SLOTS = 132 * 3  # H200 SMs x resident programs of 64 KB shared memory (64-key K and V tiles, two stages)
TILE_KEYS = 64
START_TILES = 2  # a program's fixed cost, in tiles


def tail_factor(lengths: list[int], k: float) -> float:
    """Kernel time over the time of its work at the full bandwidth, for these sequences' programs in this order."""
    work = [START_TILES + -(-n // TILE_KEYS) for _ in range(KV_HEADS) for n in lengths]
    active, started, elapsed = [], 0, 0.0
    while started < len(work) or active:
        while started < len(work) and len(active) < SLOTS:
            active.append(work[started])
            started += 1
        rate = min(k / SLOTS, 1.0 / len(active))
        step = min(active) / rate
        elapsed += step
        active = [w - rate * step for w in active if w - rate * step > 1e-9]
    return elapsed / sum(work)  # the bandwidth is 1: the whole work takes sum(work) at best


def main() -> None:
    prompts, output_lens = workload(256, 10001)
    print(f"{'step':>5} {'batch':>6} {'k':>4} {'arrival':>8} {'longest first':>14} {'gain':>6}")
    for step in (1, 200, 400, 600):
        lengths = [len(p) + step for p, n in zip(prompts, output_lens) if n > step]
        for k in (1.0, 1.5, 2.0):
            arrival, longest = tail_factor(lengths, k), tail_factor(sorted(lengths, reverse=True), k)
            print(f"{step:>5} {len(lengths):>6} {k:>4} {arrival:>8.3f} {longest:>14.3f} {100 * (1 - longest / arrival):>5.1f}%")


if __name__ == "__main__":
    main()

"""Timing and roofline helpers shared by the benchmark scripts (GPU only)."""
from __future__ import annotations

import csv
import math
import os
import statistics
import sys
from typing import Callable

import torch

from kernels.pdl import pdl_off

# The (K, N) of the RMSNorm+Linear sites the benchmarks report: the QKV and the gate/up projections.
MODEL_SHAPES: dict[str, dict[str, tuple[int, int]]] = {
    "llama-7b": {"qkv": (4096, 3 * 4096), "gate_up": (4096, 2 * 11008)},
    "llama-13b": {"qkv": (5120, 3 * 5120), "gate_up": (5120, 2 * 13824)},
    "mistral-7b": {"qkv": (4096, 4096 + 2 * 1024), "gate_up": (4096, 2 * 14336)},
    "qwen3-0.6b": {"qkv": (1024, 16 * 128 + 2 * 8 * 128), "gate_up": (1024, 2 * 3072)},
}


def require_cuda(script: str) -> torch.device:
    if not torch.cuda.is_available():
        sys.exit(f"{script}: needs a CUDA GPU (none detected); nothing was measured")
    return torch.device("cuda")


def gpu_name() -> str:
    return torch.cuda.get_device_name()


def time_us(fns: list[Callable[[], object]], repeats: int = 30, spread: bool = False):
    """Median microseconds of one call, timed as CUDA-graph replays that cycle through `fns`.

    Each fn works on its own copy of the inputs, enough copies that together they overflow L2, so a
    weight that fits in L2 is not flattered; replaying a graph keeps launch gaps out of the figure. Without
    PDL, as the tuner times (kernels/pdl.py).
    """
    with pdl_off():
        return _time_us(fns, repeats, spread)


def _time_us(fns: list[Callable[[], object]], repeats: int, spread: bool):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fns:  # warm-up: compile, autotune and allocate outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    graph.replay()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / len(fns))
    med = statistics.median(samples)
    if spread:
        q = statistics.quantiles(samples, n=10)
        return med, (q[-1] - q[0]) / med
    return med


def copies_to_overflow_l2(bytes_per_copy: int) -> int:
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    return max(2, min(32, math.ceil(3 * l2 / max(bytes_per_copy, 1))))


def copy_bandwidth_gbps() -> float:
    """Device-to-device copy bandwidth in GB/s, read + write counted.

    Eager copies of 4 GiB timed with events: a CUDA graph of one huge copy measured ~40% low on an H200.
    """
    src = torch.randn(2 * 2**30, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    end.synchronize()
    return 2 * src.numel() * src.element_size() * 10 / (start.elapsed_time(end) * 1e6)


def measure_ceilings() -> tuple[float, float]:
    """(copy bandwidth in GB/s counting read + write, bf16 matmul TFLOP/s), measured on random data."""
    # The matmul goes first: it also lifts the clocks from idle before the copy is timed.
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(20):
        a @ b
    mm_us = time_us([lambda: a @ b], repeats=10)
    return copy_bandwidth_gbps(), 2 * 8192**3 / mm_us / 1e6


class CsvWriter:
    """Appends rows as they are measured, so a run cut short still leaves its numbers."""

    def __init__(self, path: str, columns: list[str]):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path, self.columns = path, columns
        with open(path, "w", newline="") as f:
            csv.DictWriter(f, columns).writeheader()

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(row)

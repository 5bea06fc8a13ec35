"""How a candidate is timed: the Timer interface and the CUDA-event timer used on the GPU.

Timers are injected into the objective, so the whole tuning pipeline runs on the CPU with a
deterministic test double (tests/doubles.py FakeTimer) and on the GPU with CudaEventTimer.

CudaEventTimer keeps the weight cold: the objective hands it several input sets ("rotating
buffers") whose total size exceeds the L2 cache several times, and consecutive launches use
consecutive sets. Every workload is captured as a CUDA graph of several launches and timed per
replay, so launch overhead never poses as kernel time; a workload that cannot be captured is timed
eagerly. (An earlier rule, "graphs only below 200 us by an eager estimate", let a CPU hiccup flip a
28 us kernel to eager timing of its Python wrapper, ~90-180 us, on an H200: docs/PERF_NOTES.md.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch

from kernels.pdl import pdl_off


@dataclass(frozen=True)
class Workload:
    """One thing to time: `launch(i)` runs the kernel (or the baseline when config is None) on input set i."""
    problem: Any        # the space's problem and config (search_spaces/base.py)
    config: Any | None
    launch: Callable[[int], Any]
    n_buffers: int


@dataclass(frozen=True)
class Timing:
    median_us: float
    spread_us: float  # interquartile range of the samples
    samples_us: tuple[float, ...]

    @classmethod
    def from_samples(cls, samples_us: list[float]) -> "Timing":
        q25, q50, q75 = np.percentile(samples_us, [25, 50, 75])
        return cls(float(q50), float(q75 - q25), tuple(float(s) for s in samples_us))


class Timer(Protocol):
    def measure(self, workload: Workload, repeats: int) -> Timing: ...


class CudaEventTimer:
    def __init__(self, warmup: int = 3, replay_target_us: float = 1000.0, max_launches_per_graph: int = 64):
        self.warmup = warmup
        self.replay_target_us = replay_target_us
        self.max_launches_per_graph = max_launches_per_graph

    def measure(self, workload: Workload, repeats: int) -> Timing:
        if repeats < 1:
            raise ValueError(f"repeats: expected >= 1, got {repeats}")
        with pdl_off():  # kernels/pdl.py: back-to-back launches of one kernel would flatter it
            return self._measure(workload, repeats)

    def _measure(self, workload: Workload, repeats: int) -> Timing:
        launch, n = workload.launch, workload.n_buffers
        # Warm up on a side stream, as graph capture requires for libraries that allocate lazily (cuBLAS).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for i in range(max(self.warmup, n)):
                launch(i % n)
        torch.cuda.current_stream().wait_stream(side)
        # The eager estimate only sizes the graph (an overestimate just means fewer launches per replay).
        estimate = float(np.median(self._eager(launch, n, repeats=3)))
        try:
            return Timing.from_samples(self._graph(launch, n, estimate, repeats))
        except RuntimeError:
            # Some workloads cannot be captured (a host sync inside); they are timed eagerly instead.
            torch.cuda.synchronize()
        return Timing.from_samples(self._eager(launch, n, repeats))

    @staticmethod
    def _eager(launch: Callable[[int], Any], n: int, repeats: int) -> list[float]:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for r, (start, end) in enumerate(events):
            start.record()
            launch(r % n)
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) * 1e3 for start, end in events]

    def _graph(self, launch: Callable[[int], Any], n: int, estimate_us: float, repeats: int) -> list[float]:
        per_replay = math.ceil(self.replay_target_us / max(estimate_us, 1e-3))
        per_replay = max(n, min(self.max_launches_per_graph, per_replay))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(per_replay):
                launch(i % n)
        graph.replay()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for start, end in events:
            start.record()
            graph.replay()
            end.record()
        torch.cuda.synchronize()
        del graph
        return [start.elapsed_time(end) * 1e3 / per_replay for start, end in events]

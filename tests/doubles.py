"""Test doubles for running the whole tuning pipeline without a GPU clock.

FakeTimer's "latency" is a deterministic function of the config and the problem (a rough roofline with a
preferred tile; for another space's problem, such as the plugin example's, one that prefers small axis values), so
searches, storage, resume, workers and export can be checked on the CPU with known answers; it
never touches the kernel. FakeHardware is the Hardware (autotune/hardware.py) the CLI tests pass in: `count`
pretend H100s, timed by FakeTimer, whose correctness checks run the real kernel on the one real GPU if there is
one, else in Triton's CPU interpreter.
"""
from __future__ import annotations

import math

import torch
import triton

from autotune.device import GpuInfo
from autotune.timer import Timer, Timing, Workload
from search_spaces.base import Problem

FAKE_GPU_NAME = "NVIDIA H100 80GB HBM3 (FakeTimer test double)"


def fake_gpu() -> GpuInfo:
    return GpuInfo(name=FAKE_GPU_NAME, short_name="h100", sm_count=132, memory_bytes=80 << 30, driver="fake",
                   torch=torch.__version__, triton=triton.__version__, l2_bytes=1 << 16)


class FakeTimer:
    """Deterministic latency: best at BLOCK_N=64, BLOCK_K=128, 4 warps, 4 stages, SPLIT_K=2; baseline 1.3x the best.
    Another space's config: best with the smallest value of each axis (`plugin_penalty`)."""

    def measure(self, workload: Workload, repeats: int) -> Timing:
        p, c = workload.problem, workload.config
        if not isinstance(p, Problem):
            floor_us = 5.0 + math.prod(p.dims.values()) / 1e7
            median = 1.3 * floor_us if c is None else floor_us * (1 + 0.02 * plugin_penalty(c.to_dict()))
            return Timing(median, 0.01 * median, (median,) * repeats)
        floor_us = 5.0 + 2 * p.M * p.N * p.K / 1e7
        if c is None:
            median = 1.3 * floor_us
        else:
            penalty = (abs(math.log2(c.BLOCK_N / 64)) + abs(math.log2(c.BLOCK_K / 128))
                       + abs(math.log2(c.num_warps / 4))
                       + abs(c.num_stages - 4) * 0.5 + abs(math.log2(c.SPLIT_K / 2)) + (c.GROUP_M == 1) * 0.25
                       + math.log2(c.BLOCK_M / 16) * 0.1)
            median = floor_us * (1 + 0.1 * penalty)
        return Timing(median, 0.01 * median, (median,) * repeats)


def plugin_penalty(config: dict[str, int]) -> float:
    return sum(math.log2(v + 1) for v in config.values())


class FakeHardware:
    """`count` pretend H100s; a plain object of module-level code, so it pickles into spawned workers. By default
    nothing compiles ahead (no process pool to start per test); `compile_processes` starts that many per worker."""

    def __init__(self, count: int = 1, compile_processes: int = 0):
        self._count = count
        self._compile_processes = compile_processes

    def count(self) -> int:
        return self._count

    def detect(self, index: int) -> GpuInfo:
        return fake_gpu()

    def device(self, index: int) -> torch.device:
        # Every pretend GPU shares the one real device, if any; without one the kernel runs in the interpreter.
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")

    def timer(self) -> Timer:
        return FakeTimer()

    def compile_processes(self, workers: int) -> int:
        return self._compile_processes

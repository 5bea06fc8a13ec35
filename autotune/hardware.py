"""What a tune runs on, passed in rather than looked up: how many GPUs there are, what each one is, the torch device
a worker launches on, the clock that times candidates and how many processes compile ahead.

`CudaHardware` is the real one (the CLI's default); tests pass a double (tests/doubles.py) to run the whole
pipeline without a GPU clock. An implementation must be picklable: it travels in each worker's Job into a
spawned process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import torch

from autotune.device import GpuInfo, detect_gpu
from autotune.timer import CudaEventTimer, Timer


class Hardware(Protocol):
    def count(self) -> int:
        """Visible GPUs; 0 when there is none."""

    def detect(self, index: int) -> GpuInfo:
        """Describe GPU `index`; RuntimeError with one clear line when there is none."""

    def device(self, index: int) -> torch.device:
        """The torch device a worker tuning GPU `index` launches on."""

    def timer(self) -> Timer:
        """A fresh clock for one worker."""

    def compile_processes(self, workers: int) -> int:
        """Compile processes per worker when `workers` workers tune at once (0: compile on first launch)."""


@dataclass(frozen=True)
class CudaHardware:
    """The visible CUDA devices, timed with CUDA events."""

    def count(self) -> int:
        return torch.cuda.device_count()

    def detect(self, index: int) -> GpuInfo:
        return detect_gpu(index)

    def device(self, index: int) -> torch.device:
        return torch.device("cuda", index)

    def timer(self) -> Timer:
        return CudaEventTimer()

    def compile_processes(self, workers: int) -> int:
        # The CPU cores shared among the GPUs, one left to each timing process.
        return max(1, min(16, (os.cpu_count() or 2) // workers - 1))

"""Compile candidates in worker processes ahead of timing.

A worker imports the kernel and launches each candidate once on a small problem with the same
specializations as the tuned one. That fills Triton's on-disk cache, so when the timing process
launches the candidate it only loads the binary: the GPU is not left idle while the compiler runs.
Compile errors and out-of-resources surface here first and come back as the reason string.
With processes=0 nothing is precompiled (the timing process compiles on first launch).
"""
from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import Future, ProcessPoolExecutor

import torch

from kernels.config import Config
from kernels.pdl import pdl_off
from search_spaces import Problem, get_space

_device: torch.device | None = None


def _init_worker(device: str) -> None:
    global _device
    # Ctrl-C is the tuner's to handle (it stores what finished, then closes the pool); a compile worker
    # dying of it would only turn the interruption into a broken-pool error.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _device = torch.device(device)
    if _device.type == "cuda":
        # set_device refuses a bare "cuda" (torch 2.11); the pool is made for one device, 0 if unnamed.
        torch.cuda.set_device(_device.index or 0)


def precompile(kernel: str, problem: Problem, config: dict) -> str | None:
    """Compile one candidate by launching it on a small problem; the failure reason, or None."""
    from autotune.objective import short_error

    space = get_space(kernel)
    small = space.compile_problem(problem)
    try:
        inputs = space.make_inputs(small, _device or torch.device("cpu"), copies=1)[0]
        with pdl_off():  # as the timer launches it (launch_pdl is part of the compiled binary's key)
            space.launcher(Config.from_dict(config))(inputs)
        if _device is not None and _device.type == "cuda":
            torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - the reason is the result
        return short_error(e)
    return None


class CompilePool:
    def __init__(self, processes: int, device: torch.device):
        if processes < 0:
            raise ValueError(f"processes: expected >= 0, got {processes}")
        self._executor = None
        if processes:
            # spawn: a forked child would inherit the parent's CUDA context, which CUDA forbids.
            self._executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker, initargs=(str(device),))

    def submit(self, kernel: str, problem: Problem, config: Config) -> Future:
        if self._executor is None:
            done: Future = Future()
            done.set_result(None)
            return done
        return self._executor.submit(precompile, kernel, problem, config.to_dict())

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "CompilePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

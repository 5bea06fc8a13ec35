"""Compile candidates in worker processes ahead of timing.

A worker imports the kernel and launches each candidate once on a small problem with the same
specializations as the tuned one. That fills Triton's on-disk cache, so when the timing process
launches the candidate it only loads the binary: the GPU is not left idle while the compiler runs.
Compile errors and out-of-resources surface here first and come back as the reason string.
With processes=0 nothing is precompiled (the timing process compiles on first launch).

A worker runs in a session of its own, so a terminal's Ctrl-C (SIGINT to the whole foreground process group) reaches
neither it nor the compiler processes Triton starts (ptxas): one killed mid-compile made Triton print the kernel's
whole PTX and fail the candidate. The tuner takes the Ctrl-C between trials and closes the pool, which kills the
running compiles; a worker whose parent dies without closing it exits by itself.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import torch

from kernels.pdl import pdl_off
from search_spaces import get_space

_device: torch.device | None = None
# How often a worker checks that the process that started it is alive.
PARENT_POLL_S = 0.5


def _exit_with(parent: int) -> None:
    # A worker outlives a parent killed without closing the pool: it waits on the task queue, whose write end it
    # holds itself, so it never sees end-of-file.
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _init_worker(device: str, parent: int) -> None:
    global _device
    os.setsid()  # out of the terminal's process group: its Ctrl-C is the tuner's (see the module docstring)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    _device = torch.device(device)
    if _device.type == "cuda":
        # set_device refuses a bare "cuda" (torch 2.11); the pool is made for one device, 0 if unnamed.
        torch.cuda.set_device(_device.index or 0)


def precompile(kernel: str, problem: Any, config: dict) -> str | None:
    """Compile one candidate by launching it on a small problem; the failure reason, or None."""
    from autotune.objective import short_error

    space = get_space(kernel)
    small = space.compile_problem(problem)
    try:
        inputs = space.make_inputs(small, _device or torch.device("cpu"), copies=1)[0]
        with pdl_off():  # as the timer launches it (launch_pdl is part of the compiled binary's key)
            space.launcher(space.to_config(config))(inputs)
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
                                                 initializer=_init_worker, initargs=(str(device), os.getpid()))

    def submit(self, kernel: str, problem: Any, config: Any) -> Future:
        if self._executor is None:
            done: Future = Future()
            done.set_result(None)
            return done
        return self._executor.submit(precompile, kernel, problem, config.to_dict())

    def close(self) -> None:
        """Drop the queued candidates and kill the running compiles: nothing will time them now (a compile takes
        seconds, and a second Ctrl-C while exit waited for them would end in a traceback)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            for p in list(executor._processes.values()):  # no public way to stop them before Python 3.14
                p.terminate()
            # The executor sees its workers gone, fails what was queued and reaps them.
            executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "CompilePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

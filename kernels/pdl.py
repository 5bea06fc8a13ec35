"""Programmatic dependent launch (PDL), Hopper and newer.

A decode step is a chain of a few hundred short kernels, and between two of them the GPU idles while the
next kernel is launched and its programs are placed (~2.5 us each inside a CUDA graph on an H200,
docs/PERF_NOTES.md). A kernel launched with PDL is placed as soon as every program of the kernel before it
has allowed it (griddepcontrol.launch_dependents), and waits (griddepcontrol.wait) until that kernel has
finished and its writes are visible.

Three kinds of kernels:
- short kernels (norms, row statistics, rotary, reductions, SiLU, sampling) allow the next kernel at once, then
  wait (`pdl_wait`);
- weight-streaming GEMMs wait first (`pdl_wait_first`) and allow the next kernel only after their main loop
  (`pdl_launch_next`): the next GEMM's programs would otherwise hold SM slots for the whole of this one;
- decode attention (split and merge kernels) waits first and never allows the next kernel early: the split
  kernel runs in several waves of programs, and programs of the next kernel placed early sit in SM slots its
  later waves need. Measured on an H200, llama-7b, tuned decode over its baseline at B = 8, S = 2048: 1.037x
  with both placing early, 1.046x with only the merge holding back, 1.047x with only the split holding back,
  1.060x with both (docs/PERF_NOTES.md). A kernel that never calls launch_dependents allows the next one as its
  programs exit.

The rule that keeps this correct: a kernel launched with PDL waits before it touches global memory, reads
and writes alike (an earlier kernel may still be reading what it overwrites). Then a kernel several steps down
the chain is safe too: its predecessor could only finish after passing its own wait.

Timing is done without PDL (`pdl_off`): one kernel launched back to back would overlap each launch with the
previous one's tail, an overlap a cuBLAS baseline does not get, and inside a model the neighbours differ anyway.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

_off = 0  # how many pdl_off() blocks are open


@contextlib.contextmanager
def pdl_off() -> Iterator[None]:
    """Launch every kernel without PDL inside the block (the timers; A/B experiments)."""
    global _off
    _off += 1
    try:
        yield
    finally:
        _off -= 1


def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels on `device` launch with PDL: NVIDIA sm_90+, compiled (the interpreter has no PDL)."""
    if _off or device.type != "cuda" or triton.knobs.runtime.interpret:
        return False
    return _hopper_or_newer(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _hopper_or_newer(index: int) -> bool:
    # Read once per device: every kernel launch of a decode step asks.
    return torch.version.hip is None and torch.cuda.get_device_capability(index)[0] >= 9


def pdl_launch_args(device: torch.device) -> dict:
    """Keyword arguments for a launch of a kernel with a `USE_PDL` constexpr that calls `pdl_wait(USE_PDL)`."""
    return {"USE_PDL": True, "launch_pdl": True} if pdl_enabled(device) else {"USE_PDL": False}


@triton.jit
def pdl_wait(USE_PDL: tl.constexpr):
    """A short kernel: let the next kernel be placed at once, then wait for the previous kernel's writes."""
    if USE_PDL:
        gdc_launch_dependents()
        gdc_wait()


@triton.jit
def pdl_wait_first(USE_PDL: tl.constexpr):
    """A GEMM or attention kernel: wait for the previous kernel's writes; the next kernel is placed by
    `pdl_launch_next` after the main loop, or as this kernel's programs exit."""
    if USE_PDL:
        gdc_wait()


@triton.jit
def pdl_launch_next(USE_PDL: tl.constexpr):
    """A weight-streaming kernel, after its main loop: let the next kernel be placed."""
    if USE_PDL:
        gdc_launch_dependents()

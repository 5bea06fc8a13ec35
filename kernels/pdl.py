"""Programmatic dependent launch (PDL), Hopper and newer.

A decode step is a chain of a few hundred short kernels, and between two of them the GPU idles while the
next kernel is launched and its programs are placed (~2.5 us each inside a CUDA graph on an H200,
docs/PERF_NOTES.md). A kernel launched with PDL is placed as soon as every program of the kernel before it
has allowed it (griddepcontrol.launch_dependents), and waits (griddepcontrol.wait) until that kernel has
finished and its writes are visible.

Two kinds of kernels:
- short kernels (norms, rotary, attention, reductions, sampling) allow the next kernel at once, then wait
  (`pdl_wait`);
- weight-streaming GEMMs wait first (`pdl_gemm_wait`) and allow the next kernel only after their main loop
  (`pdl_launch_next`). Before waiting, a GEMM asks L2 for the start of its weights (`pdl_prefetch_l2`).
Together: while GEMM A finishes and the short kernels after it run, GEMM B is already placed and fetching its
weights, so DRAM keeps streaming through the short kernels. At most one GEMM is ahead of the running one.

The rule that keeps this correct: a kernel launched with PDL waits before it touches global memory, reads
and writes alike (an earlier kernel may still be reading what it overwrites); only the prefetch of data no
kernel writes (weights) comes first. Then a kernel several steps down the chain is safe too: its predecessor
could only finish after passing its own wait.

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
    """A short kernel: let the next kernel be placed at once, then wait for the previous kernel's writes.

    Placing the next kernel early is what lets a GEMM two or three short kernels down the chain start
    prefetching its weights (`pdl_prefetch_l2`) while the short kernels run."""
    if USE_PDL:
        gdc_launch_dependents()
        gdc_wait()


@triton.jit
def pdl_gemm_wait(USE_PDL: tl.constexpr):
    """A weight-streaming kernel: wait for the previous kernel's writes; it places the next kernel only at the
    end of its main loop (`pdl_launch_next`). Placed earlier, the next GEMM's prefetch would be evicted from
    L2 by this one's stream before it is read."""
    if USE_PDL:
        gdc_wait()


@triton.jit
def pdl_launch_next(USE_PDL: tl.constexpr):
    if USE_PDL:
        gdc_launch_dependents()


@triton.jit
def pdl_prefetch_l2(row_ptrs, k_start, K, PREFETCH_K: tl.constexpr, LINE: tl.constexpr):
    """Ask L2 for elements k_start .. k_start + PREFETCH_K (clipped to K) of each row (contiguous rows, LINE
    elements a 128-byte line). Only for data no kernel writes (weights): it may run before `pdl_gemm_wait`."""
    for k in tl.static_range(0, PREFETCH_K, LINE):
        tl.inline_asm_elementwise("prefetch.global.L2 [$1];", "=r,l", [row_ptrs + tl.minimum(k_start + k, K - 1)],
                                  dtype=tl.int32, is_pure=False, pack=1)


_LINE_BYTES = 128
# A weight-streaming kernel prefetches at most this share of L2 before it waits: what the short kernels before it
# leave time to fetch (a few us at ~4 TB/s), and little enough to still be in L2 when its main loop reads it.
PREFETCH_L2_SHARE = 0.25
_MAX_PREFETCH_LINES = 32  # the prefetch loop is unrolled


def weight_prefetch(weight: torch.Tensor, split_k: int) -> dict:
    """PREFETCH_K and LINE for a GEMM over `weight` [N, K] (K contiguous) in `split_k` parts: each program asks L2
    for the start of its rows, all programs together for PREFETCH_L2_SHARE of the L2. 0 without PDL."""
    elem = weight.element_size()
    line = _LINE_BYTES // elem
    if not pdl_enabled(weight.device) or weight.stride(1) != 1:
        return {"PREFETCH_K": 0, "LINE": line}
    budget = int(_l2_bytes(weight.device.index) * PREFETCH_L2_SHARE)
    lines = budget // (weight.shape[0] * split_k * _LINE_BYTES)
    return {"PREFETCH_K": min(lines, _MAX_PREFETCH_LINES, triton.cdiv(weight.shape[1], line)) * line, "LINE": line}


@functools.cache
def _l2_bytes(index: int | None) -> int:
    return torch.cuda.get_device_properties(index if index is not None else torch.cuda.current_device()).L2_cache_size

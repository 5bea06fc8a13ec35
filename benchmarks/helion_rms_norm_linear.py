"""The fused op of bench_peers_search.py written in Helion: y = rmsnorm(x + r) @ W.T and h = x + r, with the norm's
gain folded into W (as the runtime folds it), so the kernel has no gain to read.

Like ours with SUMSQ_IN_LOOP=1, the 1/RMS of a row is a scalar that commutes with the product: each program sums the
squares of the h tiles its K loop reads and scales the accumulator once after the loop. The programs of the first
column tile also write h. Importing this module needs `helion` (1.4.0 runs on torch 2.11; it needs `filecheck`).
"""
from __future__ import annotations

import logging

import helion
import helion.language as hl
import torch


def rms_norm_linear(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    m, k = x.size()
    n = w.size(0)
    y = torch.empty([m, n], dtype=x.dtype, device=x.device)
    h_out = torch.empty_like(x)
    for tile_m, tile_n in hl.tile([m, n]):
        acc = hl.zeros([tile_m, tile_n], dtype=torch.float32)
        sumsq = hl.zeros([tile_m], dtype=torch.float32)
        for tile_k in hl.tile(k):
            h = x[tile_m, tile_k] + r[tile_m, tile_k]
            if tile_n.id == 0:
                h_out[tile_m, tile_k] = h
            hf = h.to(torch.float32)
            sumsq = sumsq + torch.sum(hf * hf, dim=1)
            acc = torch.addmm(acc, h, w[tile_n, tile_k].T)
        # 1 / sqrt rather than rsqrt: the same on the GPU, and Triton's interpreter (the CPU test) has no rsqrt.
        y[tile_m, tile_n] = (acc * (1.0 / torch.sqrt(sumsq / k + eps))[:, None]).to(y.dtype)
    return y, h_out


def helion_kernel(budget_s: int | None, effort: str = "full") -> helion.Kernel:
    """The kernel, autotuned per shape on its first call (or `.bind(args).autotune(args)`) within `budget_s` seconds
    of wall time (None: Helion's own stopping rule for `effort`), never from an earlier run's cache."""
    return helion.kernel(rms_norm_linear, static_shapes=True, autotune_budget_seconds=budget_s,
                         autotune_effort=effort, force_autotune=True, autotune_progress_bar=False,
                         autotune_log_level=logging.WARNING)

"""The paired epilogues in the tuner: QKV and gate/up timed as the runtime runs them (kernels/paired.py).

A "gated" site ends in SiLU-and-mul, a "rotary" one rotates q and k and writes k and v into a KV cache. A config
with that form (Epilogue.launched: configs stay in the stacked product's terms, the table's currency) runs it in
the fused kernel's epilogue; one without (split-K, TMA, too narrow a column tile) runs the plain fused kernel and
then the runtime's separate SiLU-and-mul or rotary kernel, as nanovllm/layers/fused_norm_linear.py
does. The baseline is the runtime's separate path (`separate_norm_linear`, as for the plain product), then that
separate kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import ops
from kernels.config import Config
from kernels.epilogue import GATED, Epilogue
from kernels.paired import RotaryKV
from kernels.rms_norm_linear import fused_rms_norm_linear
from search_spaces.base import Problem

_MAX_POSITION = 4096
_ROPE_THETA = 10000.0
EPS = 1e-6  # fused_rms_norm_linear's default, which the candidates run with


def rope_table(head_dim: int, device: torch.device) -> torch.Tensor:
    """The float32 cos | sin table [max_position, head_dim] of a Neox-style rotary embedding."""
    inv_freq = _ROPE_THETA ** -(torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(_MAX_POSITION, device=device, dtype=torch.float32), inv_freq)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def rotary_inputs(problem: Problem, table: torch.Tensor, gen: torch.Generator) -> RotaryKV:
    """Positions and a KV cache for `problem`'s M tokens, rotated by `table` (`rope_table`; read-only, so input
    copies share it). The cache has exactly one slot per token, in a shuffled order: every element is written, so
    a missed write shows in the check."""
    D, kv, device = problem.epilogue.head_dim, problem.epilogue.kv_heads, table.device
    positions = torch.randint(0, _MAX_POSITION, (problem.M,), generator=gen, device=device)
    slots = torch.randperm(problem.M, generator=gen, device=device).to(torch.int32)
    cache = [torch.empty(problem.M, 1, kv, D, device=device, dtype=problem.torch_dtype) for _ in range(2)]
    return RotaryKV(positions, table, slots, *cache, num_q_heads=problem.epilogue.q_heads(problem.N))


def run_fused(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, epilogue: Epilogue, kv: RotaryKV | None,
              config: Config) -> torch.Tensor:
    """The runtime's path for `config`: silu(gate) * up, or the rotated q (k and v go to `kv`'s cache)."""
    form = epilogue.launched(config)
    if form is None:
        return _separate_epilogue(fused_rms_norm_linear(x, w, residual=r, config=config)[0], epilogue, kv)
    return fused_rms_norm_linear(x, w, residual=r, epilogue=epilogue, rotary=kv, config=form)[0]


def separate_norm_linear(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """What the runtime runs where it does not fuse (nanovllm/layers/fused_norm_linear.py): its add + RMSNorm kernel
    (kernels.ops, the Triton kernel on CUDA) with the unit `gain` left once the gain is folded into `w`, then cuBLAS.
    The candidates are timed against this, not against a weaker unfused path (`x + r` as a kernel of its own, then
    F.rms_norm: kernels.reference.baseline_rms_norm_linear), which would credit them a win the runtime never sees."""
    return F.linear(ops.rms_norm(x, gain, EPS, r)[0], w)


def run_separate(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, gain: torch.Tensor, epilogue: Epilogue,
                 kv: RotaryKV | None) -> torch.Tensor:
    """The baseline: the runtime's norm and cuBLAS GEMM, then its SiLU-and-mul or rotary + cache-write kernel."""
    return _separate_epilogue(separate_norm_linear(x, w, r, gain), epilogue, kv)


def _separate_epilogue(y: torch.Tensor, epilogue: Epilogue, kv: RotaryKV | None) -> torch.Tensor:
    if epilogue == GATED:
        return ops.silu_and_mul(y)
    D, hq, heads = kv.head_dim, kv.num_q_heads, kv.k_cache.shape[2]
    q, k, v = y.split([hq * D, heads * D, heads * D], dim=-1)
    return ops.apply_rotary_and_store_kvcache(q.view(-1, hq, D), k.view(-1, heads, D), v.view(-1, heads, D),
                                              kv.positions, kv.cos_sin_cache, kv.k_cache, kv.v_cache, kv.slot_mapping)

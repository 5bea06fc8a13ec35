"""The paired epilogues in the tuner: QKV and gate/up timed in the form the runtime runs them (kernels/paired.py).

A "gated" problem runs the fused kernel with SiLU-and-mul in its epilogue; a "rotary" one rotates q and k and
writes k and v into a KV cache. Their baseline is the separate path the runtime would otherwise take: the norm
and cuBLAS GEMM (as for the plain product), then the runtime's own SiLU-and-mul or rotary + cache-write kernel.
Configs stay in the stacked product's terms, the table's currency: gated_config and rotary_config map them onto
the form that runs.
"""
from __future__ import annotations

import torch

from kernels.config import Config
from kernels.paired import RotaryKV, gated_config, rotary_config
from kernels.reference import baseline_rms_norm_linear
from kernels.rms_norm_linear import fused_rms_norm_linear
from search_spaces.base import Problem

_MAX_POSITION = 4096
_ROPE_THETA = 10000.0


def rotary_inputs(problem: Problem, device: torch.device, gen: torch.Generator) -> RotaryKV:
    """Positions, the cos | sin table and a KV cache for `problem`'s M tokens.

    The split of the heads between q and k/v does not change the work (each weight row is read once, each output
    column written once: q to the output, k and v to the cache), so q and k/v get equal shares where the head
    count allows, else one KV head. The cache has exactly one slot per token, in a shuffled order: every element
    is written, so a missed write shows in the check."""
    D, heads = problem.head_dim, problem.N // problem.head_dim
    kv = heads // 3 if heads % 3 == 0 else 1
    positions = torch.randint(0, _MAX_POSITION, (problem.M,), generator=gen, device=device)
    inv_freq = _ROPE_THETA ** -(torch.arange(0, D, 2, device=device, dtype=torch.float32) / D)
    angles = torch.outer(torch.arange(_MAX_POSITION, device=device, dtype=torch.float32), inv_freq)
    table = torch.cat([angles.cos(), angles.sin()], dim=-1)
    slots = torch.randperm(problem.M, generator=gen, device=device).to(torch.int32)
    cache = [torch.empty(problem.M, 1, kv, D, device=device, dtype=problem.torch_dtype) for _ in range(2)]
    return RotaryKV(positions, table, slots, *cache, num_q_heads=heads - 2 * kv)


def run_fused(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, epilogue: str | RotaryKV,
              config: Config) -> torch.Tensor:
    """The fused kernel in the epilogue's form: silu(gate) * up, or the rotated q (k and v go to the cache)."""
    if epilogue == "gated":
        return fused_rms_norm_linear(x, w, residual=r, silu_and_mul=True, config=gated_config(config))[0]
    return fused_rms_norm_linear(x, w, residual=r, rotary=epilogue,
                                 config=rotary_config(config, epilogue.head_dim))[0]


def run_separate(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, epilogue: str | RotaryKV) -> torch.Tensor:
    """The baseline: norm, cuBLAS GEMM, then the runtime's SiLU-and-mul or rotary + cache-write kernel."""
    # Imported here: the runtime's package loads transformers, which tuning the plain forms never needs.
    from nanovllm import ops

    y = baseline_rms_norm_linear(x, w, residual=r)[0]
    if epilogue == "gated":
        return ops.silu_and_mul(y)
    D, hq, kv = epilogue.head_dim, epilogue.num_q_heads, epilogue.k_cache.shape[2]
    q, k, v = y.split([hq * D, kv * D, kv * D], dim=-1)
    return ops.apply_rotary_and_store_kvcache(q.view(-1, hq, D), k.view(-1, kv, D), v.view(-1, kv, D),
                                              epilogue.positions, epilogue.cos_sin_cache, epilogue.k_cache,
                                              epilogue.v_cache, epilogue.slot_mapping)

"""The search space of the norm-free tuned GEMM (kernels/linear.py), tuned as kernel "linear".

The same kernels, so the same axes, pruning and constraints as the fused RMSNorm+Linear space
(search_spaces/rms_norm_linear.py), except that there is no sum of squares to place (SUMSQ_IN_LOOP is
fixed to 0) and no residual: the inputs are x and the weight, and the baseline is cuBLAS through F.linear.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from kernels.config import Config
from kernels.linear import linear
from search_spaces.base import Problem
from search_spaces.rms_norm_linear import RmsNormLinearSpace


class LinearSpace(RmsNormLinearSpace):
    name = "linear"
    has_norm = False

    def axes(self, problem: Problem) -> dict[str, list[int]]:
        return {**super().axes(problem), "SUMSQ_IN_LOOP": [0]}

    def heuristics(self, problem: Problem, device: torch.device) -> list[Config]:
        # The fused space's picks with the sum of squares moved out of the loop (there is none), once each.
        picks = (c if not c.SUMSQ_IN_LOOP else Config(**{**c.to_dict(), "SUMSQ_IN_LOOP": 0})
                 for c in super().heuristics(problem, device))
        return list(dict.fromkeys(picks))

    def make_inputs(self, problem: Problem, device: torch.device, copies: int, seed: int = 0) -> list[Any]:
        gen = torch.Generator(device=device).manual_seed(seed)
        out = []
        for _ in range(copies):
            # Random, never zeros: a kernel that skips work must not pass by accident. Unit-scale outputs.
            x = torch.randn(problem.M, problem.K, generator=gen, device=device).to(problem.torch_dtype)
            w = torch.randn(problem.N, problem.K, generator=gen, device=device).div_(math.sqrt(problem.K))
            out.append((x, w.to(problem.torch_dtype)))
        return out

    def launcher(self, config: Config | None) -> Callable[[Any], torch.Tensor]:
        if config is None:
            return lambda inputs: F.linear(inputs[0], inputs[1])
        return lambda inputs: linear(inputs[0], inputs[1], config=config)

    def footprint_bytes(self, problem: Problem) -> int:
        # x, the weight, the output
        return (problem.M * problem.K + problem.N * problem.K + problem.M * problem.N) * problem.elem_bytes

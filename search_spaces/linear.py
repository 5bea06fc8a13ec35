"""The search space of the norm-free tuned GEMM (kernels/linear.py), tuned as kernel "linear".

The same kernels, so the same axes, pruning and constraints as the fused RMSNorm+Linear space
(search_spaces/rms_norm_linear.py), except that there is no sum of squares to place (SUMSQ_IN_LOOP is
fixed to 0) and no residual: the inputs are x and the weight, and the baseline is cuBLAS through F.linear.
"""
from __future__ import annotations

import dataclasses
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
        return list(dict.fromkeys(dataclasses.replace(c, SUMSQ_IN_LOOP=0) for c in super().heuristics(problem, device)))

    def make_inputs(self, problem: Problem, device: torch.device, copies: int, seed: int = 0) -> list[Any]:
        # The fused space's x and weight (same seed, same values); a plain linear has no residual.
        return [(x, w) for x, w, *_ in super().make_inputs(problem, device, copies, seed)]

    def launcher(self, config: Config | None) -> Callable[[Any], torch.Tensor]:
        if config is None:
            return lambda inputs: F.linear(inputs[0], inputs[1])
        return lambda inputs: linear(inputs[0], inputs[1], config=config)

    def footprint_bytes(self, problem: Problem) -> int:
        # x, the weight, the output
        return (problem.M * problem.K + problem.N * problem.K + problem.M * problem.N) * problem.elem_bytes

"""The objective of one study: is a config right, and how fast is it next to the baseline?

Inputs are built once per problem (random, never zeros), as enough independent sets that
cycling through them streams more than the L2 cache holds. A candidate is first checked against
the baseline's output on the same inputs; only a correct one is timed. Every failure (compile
error, out of resources, wrong result) comes back as a Result with its reason, never as an exception.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from autotune.timer import Timer, Timing, Workload
from kernels.config import device_smem_limit
from kernels.pdl import pdl_off
from search_spaces.base import SearchSpace

# (atol, rtol) against the baseline, per dtype: a few units in the last place of unit-scale outputs.
TOLERANCES = {"bfloat16": (3e-2, 3e-2), "float16": (1e-2, 1e-2), "float32": (1e-4, 1e-4)}
_L2_PASSES = 3
_MAX_BUFFERS = 64


@dataclass(frozen=True)
class Result:
    config: Any  # the space's config (SearchSpace.to_config): kernels.config.Config for the GEMM kernels
    correct: bool
    error: str | None = None
    timing: Timing | None = None
    tflops: float | None = None
    gbps: float | None = None
    speedup: float | None = None


def short_error(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:500]


class Evaluator:
    def __init__(self, space: SearchSpace, problem: Any, device: torch.device, timer: Timer,
                 l2_bytes: int, seed: int = 0):
        self.space, self.problem, self.device, self.timer = space, problem, device, timer
        self.smem_limit = device_smem_limit(device)
        self.n_buffers = max(1, min(_MAX_BUFFERS, math.ceil(_L2_PASSES * l2_bytes / space.footprint_bytes(problem))))
        self.inputs = space.make_inputs(problem, device, self.n_buffers, seed=seed)
        with pdl_off():
            self.expected = space.launcher(None)(self.inputs[0])
        self.expected_written = [t.clone() for t in space.written(self.inputs[0])]
        self.baseline: Timing | None = None

    def workload(self, config: Any | None) -> Workload:
        run = self.space.launcher(config)
        return Workload(self.problem, config, lambda i: run(self.inputs[i]), self.n_buffers)

    def time_baseline(self, repeats: int) -> Timing:
        self.baseline = self.timer.measure(self.workload(None), repeats)
        return self.baseline

    def check(self, config: Any) -> str | None:
        """Why the config cannot be used (infeasible, fails to compile or run, wrong result), or None."""
        reason = self.space.violation(config, self.problem, self.smem_limit)
        if reason is not None:
            return reason
        written = self.space.written(self.inputs[0])
        for t in written:
            t.fill_(float("nan"))  # what the config leaves unwritten then fails the comparison
        try:
            # Without PDL, as the compile pool built it and the timer runs it: a launch with PDL is another binary
            # (launch_pdl is part of its key), which this process would compile itself, once per candidate.
            with pdl_off():
                out = self.space.launcher(config)(self.inputs[0])
        except Exception as e:  # noqa: BLE001 - compile errors and out-of-resources are results here
            return short_error(e)
        error = self._mismatch("result", out, self.expected)
        for got, want in zip(written, self.expected_written):
            error = error or self._mismatch("written tensor", got, want)
        return error

    def _mismatch(self, what: str, got: torch.Tensor, want: torch.Tensor) -> str | None:
        atol, rtol = TOLERANCES[self.problem.dtype]
        diff = (got.float() - want.float()).abs()
        bound = atol + rtol * want.float().abs()
        if not bool(torch.isfinite(got).all()) or bool((diff > bound).any()):
            worst = float(diff.nan_to_num(float("inf")).max())
            return f"wrong {what}: max abs error {worst:.3g} vs the baseline (atol={atol}, rtol={rtol})"
        return None

    def evaluate(self, config: Any, repeats: int) -> Result:
        error = self.check(config)
        if error is not None:
            return Result(config, correct=False, error=error)
        try:
            timing = self.timer.measure(self.workload(config), repeats)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory for rotating buffers of a huge split-K
            return Result(config, correct=False, error=short_error(e))
        return self.result(config, timing)

    def result(self, config: Any, timing: Timing, baseline: Timing | None = None) -> Result:
        baseline = baseline or self.baseline
        seconds = timing.median_us * 1e-6
        return Result(config, correct=True, timing=timing,
                      tflops=self.space.flops(self.problem) / seconds / 1e12,
                      gbps=self.space.footprint_bytes(self.problem) / seconds / 1e9,
                      speedup=baseline.median_us / timing.median_us if baseline else None)

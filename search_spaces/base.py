"""What a tunable kernel tells the tuner: its axes, its constraints, its warm starts and how to run it.

A new kernel adds a SearchSpace subclass and registers it (search_spaces.register); the search
code only ever talks to this interface.
"""
from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch

from kernels.config import DTYPES, Config
from kernels.epilogue import PLAIN, Epilogue

@dataclass(frozen=True)
class Problem:
    """One tuned problem: x (M, K) times weight (N, K).T in `dtype` (a key of kernels.config.DTYPES), followed by
    `epilogue`, what the runtime runs after this product (kernels/epilogue.py); a gated or rotary problem is timed
    as the runtime runs it (search_spaces/epilogues.py)."""
    M: int
    K: int
    N: int
    dtype: str = "bfloat16"
    epilogue: Epilogue = PLAIN

    def __post_init__(self):
        for name in ("M", "K", "N"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Problem.{name}={v!r}: expected a positive int")
        if self.dtype not in DTYPES:
            raise ValueError(f"Problem.dtype={self.dtype!r}: expected one of {sorted(DTYPES)}")
        if not isinstance(self.epilogue, Epilogue):
            raise ValueError(f"Problem.epilogue={self.epilogue!r}: expected a kernels.epilogue.Epilogue")
        try:
            self.epilogue.check_rows(self.N)
        except ValueError as e:
            raise ValueError(f"Problem.{e}") from None

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def elem_bytes(self) -> int:
        return DTYPES[self.dtype].itemsize


class SearchSpace(ABC):
    name: str

    @abstractmethod
    def axes(self, problem: Problem) -> dict[str, list[int]]:
        """The values of each parameter for this problem; their product is the grid."""

    @abstractmethod
    def violation(self, config: Config, problem: Problem, smem_limit: int | None) -> str | None:
        """Why this config cannot run (checked before anything compiles), or None."""

    @abstractmethod
    def heuristics(self, problem: Problem, device: torch.device) -> list[Config]:
        """Hand-picked configs to try first (warm start); may fall outside the axes."""

    def runs_as(self, config: Config, problem: Problem) -> Config:
        """The config as it runs on `problem`: two configs that run the same kernel are one trial (the tuner skips
        the second as a duplicate). The config itself by default."""
        return config

    def written(self, inputs: Any) -> list[torch.Tensor]:
        """Tensors a launch on `inputs` writes besides its output (checked like the output); none by default."""
        return []

    @abstractmethod
    def make_inputs(self, problem: Problem, device: torch.device, copies: int, seed: int = 0) -> list[Any]:
        """`copies` independent random input sets (rotating buffers defeat L2 reuse between launches)."""

    @abstractmethod
    def launcher(self, config: Config | None) -> Callable[[Any], torch.Tensor]:
        """A callable running the kernel with `config` on one input set; None means the baseline."""

    @abstractmethod
    def footprint_bytes(self, problem: Problem) -> int:
        """Bytes one launch must move at least (inputs read + output written)."""

    def flops(self, problem: Problem) -> int:
        return 2 * problem.M * problem.N * problem.K

    def to_config(self, params: dict[str, int]) -> Config:
        return Config.from_dict(params)

    def feasible(self, problem: Problem, smem_limit: int | None, at_most: int | None = None) -> list[Config]:
        """Every config of the grid that passes the constraints, one per kernel that runs; only the first `at_most`
        of them where that is all the caller needs (checking the whole grid takes half a second)."""
        axes = self.axes(problem)
        configs = (self.to_config(dict(zip(axes, values))) for values in itertools.product(*axes.values()))
        unique: dict[Config, Config] = {}
        for c in configs:  # one per kernel that runs (`runs_as`)
            if self.violation(c, problem, smem_limit) is None:
                unique.setdefault(self.runs_as(c, problem), c)
                if at_most is not None and len(unique) >= at_most:
                    break
        return list(unique.values())

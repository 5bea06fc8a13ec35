"""What a tunable kernel tells the tuner: its axes, its constraints, its warm starts and how to run it.

A new kernel adds a SearchSpace subclass and registers it (search_spaces.register); the search
code only ever talks to this interface.
"""
from __future__ import annotations

import itertools
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch

from kernels.config import Config

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
EPILOGUES = ("", "gated", "rotary")
# Problem.form as study names and lookup tables record it ("" for the plain product).
FORM_PATTERN = re.compile(r"(gated|rotary=[1-9][0-9]*/[1-9][0-9]*)?")


@dataclass(frozen=True)
class Problem:
    """One tuned problem: x (M, K) times weight (N, K).T in `dtype` (a key of DTYPES).

    `epilogue` is what the runtime runs after this product (kernels/paired.py): "gated" (gate/up, SiLU-and-mul) or
    "rotary" (QKV: q and k rotated, k and v written to the KV cache; its heads of `head_dim`, `kv_heads` of them
    for k and for v, the rest q). Such a problem is timed as the runtime runs it (search_spaces/epilogues.py).
    "" is the plain product."""
    M: int
    K: int
    N: int
    dtype: str = "bfloat16"
    epilogue: str = ""
    head_dim: int = 0
    kv_heads: int = 0

    def __post_init__(self):
        for name in ("M", "K", "N"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Problem.{name}={v!r}: expected a positive int")
        if self.dtype not in DTYPES:
            raise ValueError(f"Problem.dtype={self.dtype!r}: expected one of {sorted(DTYPES)}")
        if self.epilogue not in EPILOGUES:
            raise ValueError(f"Problem.epilogue={self.epilogue!r}: expected one of {EPILOGUES}")
        rotary = self.epilogue == "rotary"
        if rotary != (self.head_dim > 0) or self.head_dim % 2 or rotary != (self.kv_heads > 0):
            raise ValueError(f"Problem.head_dim={self.head_dim!r}, kv_heads={self.kv_heads!r}: expected an even "
                             "head_dim > 0 and kv_heads > 0 exactly when epilogue='rotary'")
        q_heads = self.N // self.head_dim - 2 * self.kv_heads if rotary else 0
        if rotary and (self.N % self.head_dim or q_heads < 1 or q_heads % self.kv_heads):
            raise ValueError(f"Problem.N={self.N}: expected [q; k; v] heads of head_dim={self.head_dim}, "
                             f"kv_heads={self.kv_heads} for k and for v and a multiple of that for q")
        if self.epilogue == "gated" and self.N % 2:
            raise ValueError(f"Problem.N={self.N}: a gated [gate; up] site stacks two halves, expected an even N")

    @property
    def form(self) -> str:
        """The epilogue as study names and lookup tables record it: "", "gated" or "rotary=<head_dim>/<kv_heads>"."""
        return f"rotary={self.head_dim}/{self.kv_heads}" if self.epilogue == "rotary" else self.epilogue

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

    def feasible(self, problem: Problem, smem_limit: int | None) -> list[Config]:
        """Every config of the grid that passes the constraints, one per kernel that runs."""
        axes = self.axes(problem)
        configs = (self.to_config(dict(zip(axes, values))) for values in itertools.product(*axes.values()))
        unique: dict[Config, Config] = {}
        for c in configs:  # one per kernel that runs (`runs_as`)
            if self.violation(c, problem, smem_limit) is None:
                unique.setdefault(self.runs_as(c, problem), c)
        return list(unique.values())

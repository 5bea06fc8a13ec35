"""What a tunable kernel tells the tuner: its problems, its axes, its constraints, its warm starts and how to run it.

A new kernel adds a SearchSpace subclass and registers it (search_spaces.register), or lives in a module of its own
and is loaded by `nvc tune --kernel module:Class` (search_spaces/plugin.py, docs/PLUGINS.md); the search code only
ever talks to this interface.

What the generic machinery (study names, the database, the lookup table) needs of a problem is small: `dims`, its
named integer sizes in a fixed order; `dtype`, a key of kernels.config.DTYPES; `form`, a variant string ("" for
none); and of the space, `bucket_dims`, the dims the table buckets over (the rest, with dtype and form, key an
entry). A config is any hashable value with `to_dict()` -> {axis: int}: the GEMM spaces' Config, a plugin's Params.
"""
from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Protocol

import torch

from kernels.config import DTYPES
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

    @property
    def dims(self) -> dict[str, int]:
        return {"M": self.M, "K": self.K, "N": self.N}

    @property
    def form(self) -> str:
        return self.epilogue.form


class TunedProblem(Protocol):
    """What the tuner, the database and the table read of any space's problem (a frozen dataclass, so that it
    hashes and pickles into worker processes)."""

    @property
    def dims(self) -> dict[str, int]: ...

    @property
    def dtype(self) -> str: ...

    @property
    def form(self) -> str: ...


class Params(Mapping):
    """A plugin's config: its axes' values, read like a dict (`config["BLOCK"]`); hashable, so that the tuner can
    tell two configs apart and key by them."""

    def __init__(self, values: Mapping[str, int]):
        self._values = dict(values)

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(frozenset(self._values.items()))

    def __repr__(self) -> str:
        return f"Params({self._values})"

    def to_dict(self) -> dict[str, int]:
        return dict(self._values)


class SearchSpace(ABC):
    name: str
    # The dims the lookup table buckets over, looked up by the smallest tuned value >= the problem's, else the
    # largest, one dim after the other (tuning_table/format.py, LookupTable.lookup).
    bucket_dims: tuple[str, ...]
    # Whether every decode step runs this kernel (attention): a run's budget reaches those right after the GEMMs'
    # decode sizes (autotune/workers.py, by_value).
    decode_step: bool = False

    @abstractmethod
    def axes(self, problem: Any) -> dict[str, list[int]]:
        """The values of each parameter for this problem; their product is the grid."""

    @abstractmethod
    def violation(self, config: Any, problem: Any, smem_limit: int | None) -> str | None:
        """Why this config cannot run (checked before anything compiles), or None."""

    @abstractmethod
    def heuristics(self, problem: Any, device: torch.device) -> list[Any]:
        """Hand-picked configs to try first (warm start); may fall outside the axes."""

    def runs_as(self, config: Any, problem: Any) -> Any:
        """The config as it runs on `problem`: two configs that run the same kernel are one trial (the tuner skips
        the second as a duplicate). The config itself by default."""
        return config

    def written(self, inputs: Any) -> list[torch.Tensor]:
        """Tensors a launch on `inputs` writes besides its output (checked like the output); none by default."""
        return []

    @abstractmethod
    def make_inputs(self, problem: Any, device: torch.device, copies: int, seed: int = 0) -> list[Any]:
        """`copies` independent random input sets (rotating buffers defeat L2 reuse between launches)."""

    @abstractmethod
    def launcher(self, config: Any | None) -> Callable[[Any], torch.Tensor]:
        """A callable running the kernel with `config` on one input set; None means the baseline."""

    @abstractmethod
    def footprint_bytes(self, problem: Any) -> int:
        """Bytes one launch must move at least (inputs read + output written)."""

    def flops(self, problem: Any) -> int:
        """Floating-point operations of one launch, for the TFLOP/s shown; 0 where that means nothing."""
        return 0

    def to_config(self, params: dict[str, int]) -> Any:
        """The config of a dict of axis values (and back: `config.to_dict()`)."""
        return Params(params)

    def compile_problem(self, problem: Any) -> Any:
        """A small problem that compiles to the same binaries, for the compile pool; the problem itself by default."""
        return problem

    def problems(self, shapes: str, dtype: str) -> list[Any]:
        """The problems of `nvc tune --kernel <this space> --shapes SHAPES --dtype DTYPE`: a plugin reads its own
        --shapes (a ValueError naming --shapes for anything else). The GEMM spaces' come from search_spaces/shapes.py."""
        raise ValueError(f"--shapes: kernel {self.name} does not say how it reads --shapes")

    @abstractmethod
    def make_problem(self, dims: dict[str, int], dtype: str, form: str = "") -> Any:
        """The problem of a stored (dims, dtype, form), as `problem.dims`, `.dtype` and `.form` give them back."""

    def feasible(self, problem: Any, smem_limit: int | None, at_most: int | None = None) -> list[Any]:
        """Every config of the grid that passes the constraints, one per kernel that runs; only the first `at_most`
        of them where that is all the caller needs (checking the whole grid takes half a second)."""
        axes = self.axes(problem)
        configs = (self.to_config(dict(zip(axes, values))) for values in itertools.product(*axes.values()))
        unique: dict[Any, Any] = {}
        for c in configs:  # one per kernel that runs (`runs_as`)
            if self.violation(c, problem, smem_limit) is None:
                unique.setdefault(self.runs_as(c, problem), c)
                if at_most is not None and len(unique) >= at_most:
                    break
        return list(unique.values())

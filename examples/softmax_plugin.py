"""A kernel of your own, tuned by nano-vllm-coconut without a change to it: a row softmax and its search space.

Nothing in the project imports this module; the tuner loads it by name (docs/PLUGINS.md walks through it):

    PYTHONPATH=examples nvc tune --gpu h200 --kernel softmax_plugin:SoftmaxSpace --shapes 1x32000,64x32000,4096x32000
    PYTHONPATH=examples nvc export-table --out tables/h200.json --merge
    PYTHONPATH=examples nvc show --table tables/h200.json

and at run time `softmax(x, table)` launches the config the table holds for x's rows and columns
(`tuning_table.LookupTable.lookup`: the smallest tuned row count >= x's, else the largest), or DEFAULT where the table
has none.

The kernel: each program normalizes ROWS rows, one after the other, reading each row twice in BLOCK-wide pieces (an
online maximum and sum, then the output), so a row of any length fits; BLOCK, ROWS, num_warps and num_stages are
what the search varies. The baseline is torch.softmax in float32.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch
import triton
import triton.language as tl

from kernels.config import DTYPES
from search_spaces.base import Params, SearchSpace
from tuning_table import LookupTable

# The name the tuner, the database and the table know this space by: the module:Class it was loaded as.
KERNEL = f"{__name__}:SoftmaxSpace"
DEFAULT = Params(dict(BLOCK=1024, ROWS=1, num_warps=4, num_stages=2))
_BLOCKS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_SHAPE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
_FAR_BELOW = -1e30  # where a row ends: finite, so that a lane past the end never computes inf - inf


@triton.jit
def _softmax_kernel(x_ptr, y_ptr, n_rows, n_cols, stride_x, stride_y, BLOCK: tl.constexpr, ROWS: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    for r in range(ROWS):
        row = tl.program_id(0) * ROWS + r
        if row < n_rows:
            x_row = x_ptr + row * stride_x
            peak = tl.full([BLOCK], _FAR_BELOW, tl.float32)
            total = tl.zeros([BLOCK], tl.float32)
            for start in range(0, n_cols, BLOCK):
                mask = start + offs < n_cols
                x = tl.load(x_row + start + offs, mask=mask, other=_FAR_BELOW).to(tl.float32)
                new_peak = tl.maximum(peak, x)
                total = total * tl.exp(peak - new_peak) + tl.where(mask, tl.exp(x - new_peak), 0.0)
                peak = new_peak
            row_peak = tl.max(peak, 0)
            row_total = tl.sum(total * tl.exp(peak - row_peak), 0)
            y_row = y_ptr + row * stride_y
            for start in range(0, n_cols, BLOCK):
                mask = start + offs < n_cols
                x = tl.load(x_row + start + offs, mask=mask, other=_FAR_BELOW).to(tl.float32)
                y = tl.exp(x - row_peak) / row_total
                tl.store(y_row + start + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def softmax_with(x: torch.Tensor, config: Mapping[str, int]) -> torch.Tensor:
    """softmax(x, dim=-1) of a 2-D x, launched with `config` (BLOCK, ROWS, num_warps, num_stages)."""
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x: expected a 2-D tensor with contiguous rows, got shape {tuple(x.shape)}")
    rows, cols = x.shape
    y = torch.empty_like(x)
    _softmax_kernel[(triton.cdiv(rows, config["ROWS"]),)](
        x, y, rows, cols, x.stride(0), y.stride(0), BLOCK=config["BLOCK"], ROWS=config["ROWS"],
        num_warps=config["num_warps"], num_stages=config["num_stages"])
    return y


def softmax(x: torch.Tensor, table: LookupTable | None = None) -> torch.Tensor:
    """The runtime side: softmax(x, dim=-1) with the table's config for x's (rows, cols, dtype), else DEFAULT."""
    rows, cols = x.shape
    bucket = table.lookup(KERNEL, {"rows": rows, "cols": cols}, x.dtype) if table is not None else None
    return softmax_with(x, bucket.config if bucket is not None else DEFAULT)


@dataclass(frozen=True)
class SoftmaxProblem:
    """softmax over `cols` columns of `rows` rows in `dtype` (a key of kernels.config.DTYPES)."""
    rows: int
    cols: int
    dtype: str = "float16"

    @property
    def dims(self) -> dict[str, int]:
        return {"rows": self.rows, "cols": self.cols}

    @property
    def form(self) -> str:
        return ""


class SoftmaxSpace(SearchSpace):
    # The table buckets over the rows (the tokens of a step), as the GEMM kernels' over M; cols key an entry.
    bucket_dims = ("rows",)

    def problems(self, shapes: str, dtype: str) -> list[SoftmaxProblem]:
        """`--shapes ROWSxCOLS[,ROWSxCOLS...]`, e.g. 1x32000,64x32000: one study each."""
        problems = []
        for item in shapes.split(","):
            match = _SHAPE.match(item)
            if match is None or min(int(match.group(1)), int(match.group(2))) < 1:
                raise ValueError(f"--shapes: {item.strip()!r}: expected ROWSxCOLS with both >= 1 (e.g. 64x32000)")
            problems.append(SoftmaxProblem(int(match.group(1)), int(match.group(2)), dtype))
        return list(dict.fromkeys(problems))

    def make_problem(self, dims: dict[str, int], dtype: str, form: str = "") -> SoftmaxProblem:
        return SoftmaxProblem(dims["rows"], dims["cols"], dtype)

    def axes(self, problem: SoftmaxProblem) -> dict[str, list[int]]:
        # The whole row in one piece, or a half, a quarter or an eighth of it per step of the loop.
        widest = triton.next_power_of_2(min(problem.cols, _BLOCKS[-1]))
        return {"BLOCK": [b for b in _BLOCKS if b <= max(widest, _BLOCKS[0])][-4:],
                "ROWS": [r for r in (1, 2, 4) if r <= problem.rows],
                "num_warps": [1, 2, 4, 8],
                "num_stages": [1, 2, 3]}

    def violation(self, config: Params, problem: SoftmaxProblem, smem_limit: int | None) -> str | None:
        if config["BLOCK"] < 32 * config["num_warps"]:
            return (f"num_warps={config['num_warps']}: fewer than one element per thread of a "
                    f"{config['BLOCK']}-wide block")
        return None

    def heuristics(self, problem: SoftmaxProblem, device: torch.device) -> list[Params]:
        return [DEFAULT]

    def make_inputs(self, problem: SoftmaxProblem, device: torch.device, copies: int, seed: int = 0) -> list[Any]:
        gen = torch.Generator(device=device).manual_seed(seed)
        return [(3 * torch.randn(problem.rows, problem.cols, generator=gen, device=device)).to(DTYPES[problem.dtype])
                for _ in range(copies)]

    def launcher(self, config: Params | None) -> Callable[[torch.Tensor], torch.Tensor]:
        if config is None:
            return lambda x: torch.softmax(x.float(), dim=-1).to(x.dtype)
        return lambda x: softmax_with(x, config)

    def footprint_bytes(self, problem: SoftmaxProblem) -> int:
        return 2 * problem.rows * problem.cols * DTYPES[problem.dtype].itemsize  # x read (once from memory), y written

    def compile_problem(self, problem: SoftmaxProblem) -> SoftmaxProblem:
        # Triton specializes an int argument on == 1 and % 16 only: a few rows compile the same binary.
        return dataclasses.replace(problem, rows=min(problem.rows, 16 + problem.rows % 16))

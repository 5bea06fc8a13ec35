"""The learned fallback: a config predicted from tuned results, for a shape no table bucket covers.

The rule is nearest neighbour over tuned buckets. Every bucket of a table is a point: its kernel, M, K, N, the
epilogue its result was timed in, and the config that won there. A query (kernel, M, K, N, epilogue) takes the
config of the nearest point of the same kernel, by the distance

    |log2 M - log2 M'| + W_K |log2 K - log2 K'| + W_N |log2 N - log2 N'| + W_EPILOGUE [kind != kind'],

skipping configs this device cannot run (`feasible`: shared memory, TMA and its 16-byte row alignment, split-K
against K, the epilogue's form, as tuning_table/select.py checks them). A tile from a point of fewer rows than M
that would stream the weight once per row block gets GROUP_M 8 (its row blocks share the weight tile through L2).
M weighs most: the tiles follow the number of rows (a 16-row tile at decode, 128 x 256 on the persistent TMA loop at
prefill) far more than the weight's shape; N more than K, as N sets how many column tiles stream the weight.
No point within `M_RADIUS` octaves of M means nothing similar was tuned: `predict` returns None and the caller runs
`kernels.config.default_config`. The points are the table in use and every shipped table (`shipped_rule`); where
some come from the running card's table, only those are used.

What one GPU's data can and cannot learn: the shipped points are all one H200's (132 SMs, 227 KiB of shared memory
per block, ~4.8 TB/s). The device enters only as feasibility: a config that needs more shared memory than this card
has, or TMA where it has none, is skipped for the next point. How the best tiles move with the SM count, the shared
memory or the bandwidth is not learned, and cannot be from one card: on an A100 or L4 the rule proposes the H200's
winners that fit. A table tuned on the card itself (even covering other shapes) is preferred as soon as it exists.
The weights were chosen, not fitted, by holding out each preset of the shipped table (how often the prediction is
the tuned config; benchmarks/bench_heuristic.py times it, docs/PERF_NOTES.md): four models' worth of shapes would
not support more than a distance.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

import torch

from kernels.config import Config, device_has_tma, device_smem_limit, tma_rows_aligned
from kernels.epilogue import PLAIN, Epilogue
from kernels.prepare import check_launch
from tuning_table.format import LookupTable, load_table
from tuning_table.gpus import gpu_short_name

W_K = 0.25
W_N = 1.0
W_EPILOGUE = 0.5
# Within a factor of 2 in M: buckets are powers of two, decode sizes (M <= 32) are tuned for every shape but prefill
# sizes for few, and a decode winner (16- or 32-row tiles) is no guide at prefill.
M_RADIUS = 1.0


@dataclass(frozen=True)
class Point:
    """One tuned bucket: the config that won at (kernel, M, K, N) in the epilogue kind it was timed in, on `gpu`."""
    gpu: str
    kernel: str
    M: int
    K: int
    N: int
    epilogue: str
    config: Config


def table_points(table: LookupTable) -> list[Point]:
    """Every bucket of `table` that won as a point."""
    # A bucket whose config did not beat the separate path beyond its noise is no example of what to run fused.
    return [Point(table.gpu, kernel, b.M, K, N, b.epilogue.kind, b.config)
            for (kernel, K, N, _dtype), buckets in table.entries.items() for b in buckets
            if b.speedup_beyond_noise >= 1.0]


class Rule:
    """Nearest-neighbour prediction over `points` (module docstring)."""

    def __init__(self, points: Iterable[Point]):
        self.points = tuple(points)

    def holding_out(self, shapes: Iterable[tuple[str, int, int]]) -> Rule:
        """The rule without any point of the (kernel, K, N) `shapes`: what it predicts for them was never seen."""
        out = set(shapes)
        return Rule(p for p in self.points if (p.kernel, p.K, p.N) not in out)

    def ranked(self, kernel: str, M: int, K: int, N: int, epilogue: Epilogue = PLAIN,
               gpu: str | None = None) -> list[tuple[float, Point]]:
        """(distance, point) of the points of `kernel` within M_RADIUS of M, nearest first; only `gpu`'s where it
        has any. A kernel no table has (a plugin's, which tables key by dims, not K and N) has none."""
        for name, v in (("M", M), ("K", K), ("N", N)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: expected an int >= 1")
        candidates = [p for p in self.points if p.kernel == kernel]
        if gpu is not None and any(p.gpu == gpu for p in candidates):
            candidates = [p for p in candidates if p.gpu == gpu]
        scored = []
        for p in candidates:
            dm = abs(math.log2(M / p.M))
            if dm > M_RADIUS:
                continue
            d = dm + W_K * abs(math.log2(K / p.K)) + W_N * abs(math.log2(N / p.N)) + \
                W_EPILOGUE * (p.epilogue != epilogue.kind)
            scored.append((d, p))
        # Ties go to the smaller M (a row tile that fits), then the smaller weight: deterministic, whatever the order.
        scored.sort(key=lambda s: (s[0], s[1].M, s[1].K, s[1].N))
        return scored

    def predict(self, kernel: str, M: int, K: int, N: int, epilogue: Epilogue, device: torch.device,
                elem_bytes: int = 2) -> Config | None:
        """The config of the nearest point this device can run for the shape; None where no point is near
        enough (the caller's default_config then)."""
        gpu = gpu_short_name(device)
        for _, p in self.ranked(kernel, M, K, N, epilogue, gpu):
            config = p.config
            if p.M < M and config.BLOCK_M < M and config.GROUP_M == 1:
                # A tile tuned for fewer rows: its row blocks of one column block launched together, so the second
                # reads the weight tile from L2 instead of memory (the tuner grows its leaders the same way).
                config = dataclasses.replace(config, GROUP_M=8)
            if feasible(config, kernel, K, N, epilogue, device, elem_bytes):
                return config
        return None


def feasible(config: Config, kernel: str, K: int, N: int, epilogue: Epilogue, device: torch.device,
             elem_bytes: int) -> bool:
    """Whether tuning_table/select.py would launch `config` here: its checks, in the form the site runs it."""
    if config.TMA and not (device_has_tma(device) and tma_rows_aligned(K, N, elem_bytes)):
        return False
    formed = epilogue.launched(config) if epilogue.paired else None
    try:
        check_launch(formed or config, K, elem_bytes, device_smem_limit(device), kernel == "rms_norm_linear",
                     epilogue if formed is not None else PLAIN)
    except ValueError:
        return False
    return True


def folder_points(folder: Path) -> list[Point]:
    """The points of every table (*.json) in `folder`; none where there is no folder. A file that is not a valid
    table is a ValueError naming it (tuning_table/format.py)."""
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return [p for path in paths for p in table_points(load_table(path))]


@functools.cache
def shipped_points() -> tuple[Point, ...]:
    """The points of every table shipped in the package (tuning_table/tables/*.json)."""
    return tuple(folder_points(Path(str(resources.files("tuning_table").joinpath("tables")))))


def shipped_rule(table: LookupTable | None = None) -> Rule:
    """The rule over the shipped tables' points and, first where its card runs, the table in use."""
    return Rule((table_points(table) if table is not None else []) + list(shipped_points()))

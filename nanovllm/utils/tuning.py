"""Which config each fused RMSNorm+Linear call runs, resolved once at load from the GPU's tuned lookup table.

Table discovery, first match wins:
1. the `tuning_table` argument: a path, or False for none (the heuristic default configs);
2. the NANOVLLM_TUNING_TABLE environment variable (a path);
3. tables/<gpu>.json shipped in this repository, <gpu> being the detected card's short name
   (autotune.device.normalize_gpu_name: h100, h200, ...). On a CPU there is no card and no table.

Which M run fused: with a table, every M whose bucket the tuner measured faster than the separate RMSNorm +
cuBLAS GEMM (speedup >= 1), prefill included, up to the shape's largest tuned bucket or FUSED_MAX_M, whichever
is larger: past that nothing was measured (a decode-only table's split-K config would need a workspace of
M x N floats per split at prefill sizes), so the separate path runs. Without one (or for a shape the table lacks),
up to FUSED_MAX_M rows (decode batches), where the default config reads the weight once near the copy bandwidth
and beats the separate path (1.07-1.33x at M <= 16 on an H200,
benchmarks/bench_results/throughput_vs_batch_default_v3.csv).
Not above: at 17-64 rows the default also won in isolation (1.0-1.12x), but end to end at batch 32 it cost
mistral-7b and llama-13b 3-7% of a decode step (scripts/exp_decode_ablation.py, docs/PERF_NOTES.md); the separate
path runs there, on the folded weights.

The final norm + lm_head stays unfused, decided from the H200 tune of llama-7b (docs/PERF_NOTES.md): the
fused lm_head site is 1.10x its baseline at M <= 64 (62.6 vs 68.9 us at M=1), about 6 us of a 4.9 ms decode
step (0.13%), while models with tied embeddings (Qwen3) would need a second vocabulary-sized weight for the
folded gain.

Bucket rule (the table's, autotune/table.py): a call with M rows runs the config of the smallest tuned
bucket >= M, else of the largest bucket; where that bucket's measured speedup is below 1 (the tuner found the
separate RMSNorm + cuBLAS faster), the separate path runs. Shapes (K, N) that the table lacks run
kernels.config.default_config.
The plain linears o_proj and down_proj (resolve_linear_configs) run the norm-free tuned GEMM (kernels/linear.py)
by the same bucket rule from the table's "linear" entries, up to LINEAR_MAX_M rows; a shape those entries lack
(or no table) runs F.linear: no default config, as nothing measured it against cuBLAS on that card.
Every M the runtime can run is resolved here into a list indexed by M, so a forward pass (and the CUDA graphs
captured from it) only indexes a list.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
import triton

from autotune.device import normalize_gpu_name
from autotune.table import LookupTable, load_table
from kernels.config import Config, default_config, device_has_tma, device_smem_limit

TUNING_TABLE_ENV = "NANOVLLM_TUNING_TABLE"
TABLES_DIR = Path(__file__).resolve().parents[2] / "tables"
FUSED_MAX_M = 16
# Plain-linear buckets past 16 rows lost end to end though they won in the kernel's own timing: llama-7b's M = 32
# bucket (1.05x alone) cost 0.41 ms a decode step at batch 32 (scripts/exp_decode_ablation.py, docs/PERF_NOTES.md).
LINEAR_MAX_M = 16
logger = logging.getLogger(__name__)


def find_table(tuning_table: str | os.PathLike | bool | None, device: torch.device) -> Path | None:
    """The table file to use (see the module docstring), or None for the heuristic default configs."""
    if tuning_table is False:
        return None
    if tuning_table is not None:
        return Path(tuning_table)
    if os.environ.get(TUNING_TABLE_ENV):
        return Path(os.environ[TUNING_TABLE_ENV])
    if device.type != "cuda":
        return None
    gpu = gpu_short_name(device)
    path = TABLES_DIR / f"{gpu}.json" if gpu else None
    if path is None or not path.is_file():
        where = path or f"in {TABLES_DIR} for a card autotune.device does not know"
        warnings.warn(f"no tuning table {where} and {TUNING_TABLE_ENV} unset: the fused RMSNorm+Linear kernel "
                      "runs its heuristic default configs", stacklevel=2)
        return None
    return path


def gpu_short_name(device: torch.device) -> str | None:
    """h100, h200, ... for a CUDA device this project knows; None otherwise."""
    if device.type != "cuda":
        return None
    try:
        return normalize_gpu_name(torch.cuda.get_device_name(device))
    except ValueError:
        return None


def load_checked(path: Path, device: torch.device) -> LookupTable:
    """load_table, plus one warning when the table was tuned on another GPU or under other torch/Triton."""
    table = load_table(path)
    running = {"torch": torch.__version__, "triton": triton.__version__}
    if device.type == "cuda":
        running["gpu"] = gpu_short_name(device) or torch.cuda.get_device_name(device)
    differ = [f"{what} {getattr(table, what)} (running {now})" for what, now in running.items()
              if getattr(table, what) != now]
    if differ:
        warnings.warn(f"tuning table {path} was tuned for {', '.join(differ)}: its configs are used, but may not "
                      "be the fastest here", stacklevel=2)
    return table


def configs_by_m(table: LookupTable | None, K: int, N: int, dtype: torch.dtype, device: torch.device,
                 max_m: int, kernel: str = "rms_norm_linear") -> list[Config | None]:
    """configs[M] for M in 0..max_m: the table's bucket rule, else the default heuristic; None: the separate path
    (for kernel "linear", whose callers only ask for shapes the table covers: F.linear)."""
    largest = table.largest_bucket(K, N, dtype, kernel) if table is not None else None
    if largest is not None:
        # Decode sizes past a fused table's last bucket run what the default would (measured to win there); the
        # plain linear has no such evidence against cuBLAS, so it stops at its last tuned bucket (or LINEAR_MAX_M).
        limit = max(largest, FUSED_MAX_M) if kernel == "rms_norm_linear" else min(largest, LINEAR_MAX_M)
        configs = [table.lookup(K, N, m, dtype, kernel) if m <= limit and table.speedup(K, N, m, dtype, kernel) >= 1.0
                   else None for m in range(1, max_m + 1)]
    else:
        configs = [default_config(m, N, K, device, dtype.itemsize) for m in range(1, min(max_m, FUSED_MAX_M) + 1)]
    # M = 0 never reaches a layer; its entry keeps the list indexable by M.
    return [configs[0]] + configs + [None] * (max_m - len(configs))


def open_table(tuning_table: str | os.PathLike | bool | None,
               device: torch.device) -> tuple[Path | None, LookupTable | None]:
    """(path, table) by the discovery order of the module docstring; (None, None) for no table."""
    path = find_table(tuning_table, device)
    return path, (load_checked(path, device) if path is not None else None)


def _unrunnable(by_m: list[Config | None], K: int, dtype: torch.dtype, device: torch.device,
                norm: bool) -> dict[Config, str]:
    """The configs of `by_m` this device cannot run, with the reason."""
    smem, reasons = device_smem_limit(device), {}
    for config in set(by_m) - {None}:
        try:
            if config.TMA and not device_has_tma(device):
                raise ValueError(f"Config.TMA={config.TMA}: TMA needs an sm_90+ GPU")
            config.validate(K=K, elem_bytes=dtype.itemsize, smem_limit=smem, norm=norm)
        except ValueError as e:
            reasons[config] = str(e)
    return reasons


def resolve_configs(opened: tuple[Path | None, LookupTable | None], shapes: list[tuple[int, int]],
                    dtype: torch.dtype, device: torch.device, max_m: int) -> dict[tuple[int, int], list[Config | None]]:
    """(K, N) -> configs[M] for every fused site shape, from open_table's (path, table); logs the table used and
    warns about uncovered shapes. A TMA config on a GPU without TMA runs the default config instead."""
    path, table = opened
    configs = {}
    for K, N in shapes:
        by_m = configs_by_m(table, K, N, dtype, device, max_m)
        if not device_has_tma(device) and any(c is not None and c.TMA for c in by_m):
            warnings.warn(f"tuning table: its TMA configs for K={K}, N={N} need an sm_90+ GPU; this one runs the "
                          "heuristic default configs there", stacklevel=2)
            by_m = [default_config(max(m, 1), N, K, device, dtype.itemsize) if c is not None and c.TMA else c
                    for m, c in enumerate(by_m)]
        refused = _unrunnable(by_m, K, dtype, device, norm=True)
        if refused:
            raise ValueError(f"tuning table {path}: its config for K={K}, N={N} cannot run here "
                             f"({next(iter(refused.values()))})")
        configs[K, N] = by_m
    if table is None:
        logger.info("fused RMSNorm+Linear up to M=%d: no tuning table, heuristic default configs for all %d "
                    "shapes", min(max_m, FUSED_MAX_M), len(shapes))
        return configs
    missing = [(K, N) for K, N in shapes if table.lookup(K, N, 1, dtype) is None]
    logger.info("fused RMSNorm+Linear where the table's buckets beat the separate path: tuning table %s (%s, "
                "torch %s, triton %s) covers %d of the model's %d %s shapes", path, table.gpu, table.torch, table.triton,
                len(shapes) - len(missing), len(shapes), str(dtype).removeprefix("torch."))
    if missing:
        warnings.warn(f"tuning table {path} has no {str(dtype).removeprefix('torch.')} configs for (K, N) "
                      f"{missing}: those run the heuristic default configs", stacklevel=2)
    return configs


def resolve_linear_configs(opened: tuple[Path | None, LookupTable | None], shapes: list[tuple[int, int]],
                           dtype: torch.dtype, device: torch.device,
                           max_m: int) -> dict[tuple[int, int], list[Config | None] | None]:
    """(K, N) -> configs[M] of the norm-free GEMM for the plain linears (o_proj, down_proj), by the fused sites'
    bucket rule from the table's "linear" entries; None for a shape they lack: that layer runs F.linear, as it
    does at the buckets whose config this device cannot run (F.linear is always there to fall back on)."""
    path, table = opened
    configs: dict[tuple[int, int], list[Config | None] | None] = {}
    for K, N in shapes:
        if table is None or table.lookup(K, N, 1, dtype, "linear") is None:
            configs[K, N] = None
            continue
        by_m = configs_by_m(table, K, N, dtype, device, max_m, "linear")
        refused = _unrunnable(by_m, K, dtype, device, norm=False)
        for reason in refused.values():
            warnings.warn(f"tuning table {path}: its linear config for K={K}, N={N} cannot run here ({reason}); "
                          "F.linear runs there", stacklevel=2)
        configs[K, N] = [None if c in refused else c for c in by_m]
    used = sum(1 for by_m in configs.values() if by_m is not None and any(c is not None for c in by_m))
    logger.info("tuned GEMM for o_proj/down_proj where the table's \"linear\" buckets beat cuBLAS: %d of the model's "
                "%d %s shapes%s, F.linear elsewhere", used, len(shapes),
                str(dtype).removeprefix("torch."), f" by {path}" if path is not None else " (no tuning table)")
    return configs


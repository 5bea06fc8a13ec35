"""The selection rule: which kernel, config and epilogue a site runs at each M, from a lookup table.

`select_configs(table, kernel, K, N, dtype, epilogue, device, max_m)` is the one place the runtime's configs are
decided and checked; what it returns launches as it is (the kernels' `trusted=True`).

The fused RMSNorm + Linear sites (kernel "rms_norm_linear"): with a table, every M whose bucket (LookupTable.bucket)
the tuner measured at least `min_speedup` times faster than the separate RMSNorm + cuBLAS GEMM, with the tuned
config's spread counted against it (Bucket.speedup_beyond_noise), runs fused, prefill included, up to the shape's largest tuned bucket or `untuned_max_m`, whichever is larger: past that nothing was
measured (a decode-only table's split-K config would need a workspace of M x N floats per split at prefill sizes),
so the separate path runs. Without a table (or for a shape it lacks), up to `untuned_max_m` rows (decode batches),
with the learned rule's config (tuning_table/learned.py: the nearest tuned bucket of the table in use and the
shipped tables that this device can run), else, where nothing near was tuned, `default_config`, the hand
heuristic. There the default reads the weight once near the copy bandwidth and beats the separate path (1.07-1.33x
at M <= 16 on an H200, benchmarks/bench_results/throughput_vs_batch_default_v3.csv). Not above: at 17-64 rows the
default also won in isolation (1.0-1.12x), but end to end at batch 32 it cost mistral-7b and llama-13b 3-7% of a
decode step (scripts/exp_decode_ablation.py, docs/PERF_NOTES.md); the learned configs keep that limit until a
hold-out shows them winning further (benchmarks/bench_heuristic.py).
A gated or rotary site runs its epilogue in the kernel where the config has that form (Epilogue.launched), else
the plain fused kernel and then the separate SiLU-and-mul or rotary kernel. A TMA config on a GPU without TMA runs
the default config; any other config this device cannot run is an error naming the table.

The plain linears o_proj and down_proj (kernel "linear"): the norm-free tuned GEMM by the same bucket rule, up to
`linear_max_m` rows and the shape's largest tuned bucket; a shape the table lacks (or no table) runs F.linear, as
do buckets this device cannot run (with a warning): nothing measured a default config against cuBLAS there.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from kernels.config import Config, default_config, device_has_tma, device_smem_limit, tma_rows_aligned
from kernels.epilogue import PLAIN, Epilogue
from kernels.prepare import check_launch
from tuning_table.format import KERNELS, LookupTable
from tuning_table.learned import shipped_rule


@dataclass(frozen=True)
class FusionOptions:
    """The selection rule's settings (nanovllm's `LLM(..., fusion=FusionOptions(...))`)."""
    # Without a table, the fused sites run the default configs up to this many rows; with one, at least this far.
    untuned_max_m: int = 16
    # Plain-linear buckets past 16 rows lost end to end though they won in the kernel's own timing: llama-7b's
    # M = 32 bucket (1.05x alone) cost 0.41 ms a decode step at batch 32 (scripts/exp_decode_ablation.py).
    linear_max_m: int = 16
    # A bucket runs the tuned kernel where its measured speedup over the baseline, the config's spread counted
    # against it, is at least this.
    min_speedup: float = 1.0

    def __post_init__(self) -> None:
        for name in ("untuned_max_m", "linear_max_m"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"FusionOptions.{name}={v!r}: expected an int >= 0")
        if isinstance(self.min_speedup, bool) or not isinstance(self.min_speedup, (int, float)) or \
                not self.min_speedup > 0:
            raise ValueError(f"FusionOptions.min_speedup={self.min_speedup!r}: expected a positive number")


@dataclass(frozen=True)
class Launch:
    """What a site launches at one M: `kernel` with `config`, checked for the shape and device, in the launched
    form of `epilogue`, the part of the site's epilogue the kernel applies (PLAIN where the site's gated or rotary
    epilogue then runs as its own kernel)."""
    kernel: str
    config: Config
    epilogue: Epilogue


def select_configs(table: LookupTable | None, kernel: str, K: int, N: int, dtype: torch.dtype, epilogue: Epilogue,
                   device: torch.device, max_m: int, options: FusionOptions = FusionOptions(),
                   source: str = "tuning table") -> list[Launch | None]:
    """launches[M] for M in 0..max_m by the module docstring's rule; None: the separate path (the norm and F.linear,
    then the site's separate epilogue kernel), or F.linear for kernel "linear"."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel {kernel!r}: expected one of {KERNELS}")
    if kernel == "linear" and epilogue != PLAIN:
        raise ValueError(f"kernel 'linear' has no epilogue, got {epilogue}")
    epilogue.check_rows(N)
    elem = dtype.itemsize
    by_m = _tuned(table, kernel, K, N, dtype, max_m, options)
    if by_m is None and kernel == "rms_norm_linear":
        rule = shipped_rule(table)
        by_m = [(rule.predict(kernel, m, K, N, epilogue, device, elem) or default_config(m, N, K, device, elem))
                if m <= options.untuned_max_m else None for m in range(1, max_m + 1)]
    if by_m is None:
        return [None] * (max_m + 1)
    has_norm = kernel == "rms_norm_linear"
    if has_norm and not device_has_tma(device) and any(c is not None and c.TMA for c in by_m):
        warnings.warn(f"{source}: its TMA configs for K={K}, N={N} need an sm_90+ GPU; this one runs the heuristic "
                      "default configs there", stacklevel=2)
        by_m = [default_config(m, N, K, device, elem) if c is not None and c.TMA else c
                for m, c in enumerate(by_m, start=1)]
    smem, tma = device_smem_limit(device), device_has_tma(device)
    chosen: dict[Config, Launch | None] = {}
    for config in dict.fromkeys(c for c in by_m if c is not None):
        chosen[config] = _launch(kernel, config, K, N, elem, smem, tma, epilogue, source)
    launches = [chosen[c] if c is not None else None for c in by_m]
    return [launches[0]] + launches  # M = 0 never reaches a layer; its entry keeps the list indexable by M


def _tuned(table: LookupTable | None, kernel: str, K: int, N: int, dtype: torch.dtype, max_m: int,
           options: FusionOptions) -> list[Config | None] | None:
    """The table's config of every M in 1..max_m (None where the separate path runs), or None: no entry."""
    largest = table.largest_bucket(kernel, K, N, dtype) if table is not None else None
    if largest is None:
        return None
    # Decode sizes past a fused table's last bucket (up to untuned_max_m) run its largest bucket's config, as the
    # default would run fused there (measured to win); the plain linear has no such evidence against cuBLAS, so it
    # stops at its last tuned bucket.
    limit = max(largest, options.untuned_max_m) if kernel == "rms_norm_linear" else min(largest, options.linear_max_m)
    configs = []
    for m in range(1, max_m + 1):
        bucket = table.bucket(kernel, K, N, dtype, m) if m <= limit else None
        # A win inside the tuned config's own spread is not one: such buckets flipped between runs (mistral-7b's
        # down_proj read 0.993-1.001x), and a tie is better left to cuBLAS.
        won = bucket is not None and bucket.speedup_beyond_noise >= options.min_speedup
        configs.append(bucket.config if won else None)
    return configs


def _launch(kernel: str, config: Config, K: int, N: int, elem: int, smem: int | None, tma: bool,
            epilogue: Epilogue, source: str) -> Launch | None:
    """`config` as the site launches it (in the epilogue's form where it has one), checked once; an unrunnable one
    raises (fused) or warns (linear)."""
    has_norm = kernel == "rms_norm_linear"
    formed = epilogue.launched(config) if epilogue.paired else None
    launch = Launch(kernel, formed, epilogue) if formed is not None else Launch(kernel, config, PLAIN)
    try:
        if config.TMA and not tma:
            raise ValueError(f"Config.TMA={config.TMA}: TMA needs an sm_90+ GPU")
        if config.TMA and not tma_rows_aligned(K, N, elem):
            raise ValueError(f"Config.TMA={config.TMA}: rows of K={K} and N={N} elements are not 16-byte aligned")
        check_launch(launch.config, K, elem, smem, has_norm, launch.epilogue)
    except ValueError as e:
        if has_norm:
            raise ValueError(f"{source}: its config for K={K}, N={N} cannot run here ({e})") from None
        warnings.warn(f"{source}: its linear config for K={K}, N={N} cannot run here ({e}); F.linear runs there",
                      stacklevel=3)
        return None
    return launch

"""The search space of the fused RMSNorm+Linear kernel (kernels/rms_norm_linear.py).

The axes are pruned by the problem before anything is sampled, because most of the full product
is pointless for a given M: row tiles taller than the padded M only add wasted work, 16-row tiles
at prefill sizes re-read the weight M/16 times, split-K only pays when there are too few output
tiles to fill the GPU, and GROUP_M only matters with several row blocks.

At decode sizes (M <= 16) the space also holds what no hand heuristic here covers: GEMV-like row tiles of 1-8 rows
(kernels/gemm.py), narrow column tiles with one warp, deeper or no software pipelining, and the eviction hint on the
streamed weight (Config.EVICT). Helion's autotuner found its llama-7b QKV winner at M = 1 in that region.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch

from kernels.config import Config, default_config, device_has_tma, tma_rows_aligned
from kernels.epilogue import Epilogue
from kernels.paired import RotaryKV
from kernels.rms_norm_linear import fused_rms_norm_linear
from search_spaces.base import Problem, SearchSpace
from search_spaces.epilogues import rope_table, rotary_inputs, run_fused, run_separate, separate_norm_linear
from tuning_table.learned import shipped_rule

_BLOCK_M = (16, 32, 64, 128, 256)
_BLOCK_N = (32, 64, 128, 256)
_BLOCK_K = (32, 64, 128, 256)
_WARPS = (2, 4, 8)
_STAGES = (2, 3, 4, 5)
_SPLIT_K = (1, 2, 4, 8, 16)
# Accumulator elements per thread: fewer than this leaves warps idle, more spills registers.
_MIN_ACC_PER_THREAD, _MAX_ACC_PER_THREAD = 4, 256
# Decode only (M <= _GEMV_MAX_M): GEMV-like row tiles, 16-column tiles, one warp, an unpipelined loop (the eviction
# hint needs it) and a deep one.
_GEMV_BLOCK_M = (1, 2, 4, 8)
_GEMV_MAX_M = 16
_DECODE_BLOCK_N = (16,)
_DECODE_WARPS = (1,)
_DECODE_STAGES = (1, 6)
# A GEMV tile holds its weight tile(s) in registers: weight elements per thread (both tiles of a paired form).
# Compiled for sm_90 (triton 3.6): <= 128 never spilled; 256 spilled at 1x64x128 on one warp and 4x64x128 on two.
# Below 8 (one 16-byte load) threads idle.
_MIN_GEMV_W_PER_THREAD, _MAX_GEMV_W_PER_THREAD = 8, 128
_DECODE_MAX_M = 64
_SPLIT_K_MAX_M = 256
_PREFILL_MIN_M = 1024


def _pow2_ceil(v: int) -> int:
    return 1 << (v - 1).bit_length()


def _gemv_picks(problem: Problem) -> list[Config]:
    """Warm starts near Helion's llama-7b QKV winner at M = 1 (4 rows, 16 columns, BLOCK_K 128, one warp, 6 stages,
    evict-first weight loads), in this space's terms: rows of the padded M, the narrowest stacked column tile that
    still runs the site's epilogue form (gated halves it, rotary needs 32 columns a program), the same tile
    unpipelined with the eviction hint, wider and deeper neighbours, and a 16-row tl.dot tile on one warp."""
    bm = min(_pow2_ceil(problem.M), 8)
    bn = {"gated": 32, "rotary": 64}.get(problem.epilogue.kind, 16)
    warps = max(1, bn * 128 // (32 * _MAX_GEMV_W_PER_THREAD))
    return [Config(bm, bn, 128, warps, 6, 1), Config(bm, bn, 128, warps, 1, 1, EVICT=1),
            Config(bm, 2 * bn, 128, 2 * warps, 4, 1), Config(bm, bn, 256, 2 * warps, 4, 1),
            Config(16, bn, 128, 1, 6, 1)]


def _tuning_device_has_tma() -> bool:
    """The tuner times on the current device; without CUDA the interpreter runs TMA descriptors too."""
    return not torch.cuda.is_available() or device_has_tma(torch.device("cuda", torch.cuda.current_device()))


class RmsNormLinearSpace(SearchSpace):
    name = "rms_norm_linear"
    has_norm = True  # False: the norm-free GEMM (search_spaces/linear.py), whose configs need SUMSQ_IN_LOOP=0
    bucket_dims = ("M",)

    def to_config(self, params: dict[str, int]) -> Config:
        return Config.from_dict(params)

    def make_problem(self, dims: dict[str, int], dtype: str, form: str = "") -> Problem:
        return Problem(dims["M"], dims["K"], dims["N"], dtype, Epilogue.parse(form))

    def flops(self, problem: Problem) -> int:
        return 2 * problem.M * problem.N * problem.K

    def axes(self, problem: Problem) -> dict[str, list[int]]:
        M, K, N = problem.M, problem.K, problem.N
        min_bm = 64 if M >= _PREFILL_MIN_M else 16
        block_m = [v for v in _BLOCK_M if min_bm <= v <= max(16, _pow2_ceil(M))]
        decode = M <= _GEMV_MAX_M
        if decode:  # GEMV tiles of the padded M and of half of it (shorter ones re-read the weight more often)
            block_m = [v for v in _GEMV_BLOCK_M if v <= _pow2_ceil(M) <= 2 * v] + block_m
        block_k = [v for v in _BLOCK_K if v <= max(32, _pow2_ceil(K))]
        # Decode is weight-streaming: short K steps starve the loads; prefill wants smem for deeper pipelines.
        block_k = [v for v in block_k if v >= 64] if M <= _DECODE_MAX_M and K >= 64 else block_k
        block_k = [v for v in block_k if v <= 128] if M > _DECODE_MAX_M else block_k
        # Split-K beyond the K blocks of the shortest BLOCK_K is impossible for every config.
        split_k = [v for v in _SPLIT_K if v <= -(-K // block_k[0])] if M <= _SPLIT_K_MAX_M else [1]
        return {
            "BLOCK_M": block_m,
            "BLOCK_N": [v for v in (_DECODE_BLOCK_N if decode else ()) + _BLOCK_N if v <= max(32, _pow2_ceil(N))],
            "BLOCK_K": block_k,
            "num_warps": list((_DECODE_WARPS if decode else ()) + _WARPS),
            "num_stages": sorted((_DECODE_STAGES if decode else ()) + _STAGES),
            "GROUP_M": [1, 8] if M > block_m[0] else [1],
            "SPLIT_K": split_k,
            # Sum of squares inside the K loop (one launch) or from a row-statistics prologue kernel.
            "SUMSQ_IN_LOOP": [0, 1],
            # Pointer loads, or TMA descriptors with a program per tile or persistent programs (sm_90+).
            "TMA": [0, 1, 2],
            # evict_first on the streamed weight; only unpipelined loads carry it (see violation).
            "EVICT": [0, 1] if decode else [0],
        }

    def violation(self, config: Config, problem: Problem, smem_limit: int | None) -> str | None:
        try:
            config.validate(K=problem.K, elem_bytes=problem.elem_bytes, smem_limit=smem_limit, norm=self.has_norm)
        except ValueError as e:
            return str(e)
        if config.TMA:
            if not tma_rows_aligned(problem.K, problem.N, problem.elem_bytes):
                return f"TMA={config.TMA}: K={problem.K} and N={problem.N} rows must be multiples of 16 bytes"
            if not _tuning_device_has_tma():
                return f"TMA={config.TMA}: this GPU has no TMA (needs sm_90+)"
        if config.EVICT and config.num_stages > 1:
            return (f"EVICT={config.EVICT}: with num_stages={config.num_stages} the K loop's pipelined copies "
                    "(cp.async) carry no eviction hint; it needs num_stages=1")
        threads = 32 * config.num_warps
        if config.BLOCK_M < 16:  # the GEMV tile: its weight tile(s), not an accumulator, fill the registers
            w = config.BLOCK_N * config.BLOCK_K // threads
            if not _MIN_GEMV_W_PER_THREAD <= w <= _MAX_GEMV_W_PER_THREAD:
                return (f"num_warps={config.num_warps}: {w} weight elements per thread for a {config.BLOCK_N}x"
                        f"{config.BLOCK_K} weight tile of a GEMV tile; expected {_MIN_GEMV_W_PER_THREAD}.."
                        f"{_MAX_GEMV_W_PER_THREAD}")
            return None
        per_thread = config.BLOCK_M * config.BLOCK_N // threads
        if not _MIN_ACC_PER_THREAD <= per_thread <= _MAX_ACC_PER_THREAD:
            return (f"num_warps={config.num_warps}: {per_thread} accumulator elements per thread for a "
                    f"{config.BLOCK_M}x{config.BLOCK_N} tile; expected {_MIN_ACC_PER_THREAD}..{_MAX_ACC_PER_THREAD}")
        return None

    def heuristics(self, problem: Problem, device: torch.device) -> list[Config]:
        M, K, N = problem.M, problem.K, problem.N
        # First the learned rule's config (tuning_table/learned.py: the nearest bucket the shipped tables tuned).
        predicted = shipped_rule().predict(self.name, M, K, N, problem.epilogue, device, problem.elem_bytes)
        default = default_config(M, N, K, device, problem.elem_bytes)
        if M <= _DECODE_MAX_M:
            bm = min(max(16, _pow2_ceil(M)), 64)
            s = default.SPLIT_K
            picks = [Config(bm, 64, 128, 4, 4, 1, s), Config(bm, 128, 128, 4, 4, 1, s),
                     Config(bm, 64, 256, 4, 3, 1, s), Config(bm, 32, 256, 2, 4, 1, max(1, s // 2)),
                     Config(bm, 128, 64, 4, 5, 1, s * 2), Config(bm, 64, 128, 4, 4, 1, 1)]
        elif M < _PREFILL_MIN_M:
            picks = [Config(64, 128, 64, 4, 4, 8, 1), Config(32, 128, 128, 4, 3, 8, 1),
                     Config(64, 64, 128, 4, 4, 8, 1), Config(128, 128, 64, 8, 3, 8, 1)]
        else:
            picks = [Config(128, 128, 64, 8, 3, 8, 1), Config(128, 256, 64, 8, 3, 8, 1),
                     Config(256, 128, 64, 8, 3, 8, 1), Config(128, 128, 32, 4, 4, 8, 1),
                     Config(64, 128, 64, 4, 4, 8, 1)]
        # The other source of the sum of squares and the TMA main loop, for the two most likely tiles.
        others = [dataclasses.replace(c, SUMSQ_IN_LOOP=1 - c.SUMSQ_IN_LOOP) for c in picks[:2]]
        others += [dataclasses.replace(c, SPLIT_K=1, TMA=1 if M <= _DECODE_MAX_M else 2) for c in picks[:2]]
        # The GEMV-like tiles right after the prediction: a study settles (autotune/tuner.py, --patience) a few trials
        # after its best, so a region tried last would rarely be tried at all.
        gemv = _gemv_picks(problem) if M <= _GEMV_MAX_M else []
        return [*([predicted] if predicted is not None else []), *gemv, default, *picks, *others]

    def make_inputs(self, problem: Problem, device: torch.device, copies: int, seed: int = 0) -> list[Any]:
        # Generated where they are used: filling a lm_head weight on the CPU would take longer than tuning it.
        gen = torch.Generator(device=device).manual_seed(seed)
        rotary = problem.epilogue.kind == "rotary"
        table = rope_table(problem.epilogue.head_dim, device) if rotary else None
        # The baseline's norm gain: all ones, as the runtime leaves it once the gain is folded into the weight
        # (the candidates' weight stands for the folded one). Read-only, so the copies share it.
        gain = torch.ones(problem.K, device=device, dtype=problem.torch_dtype)
        out = []
        for _ in range(copies):
            # Random, never zeros: a kernel that skips work must not pass by accident. Unit-scale outputs.
            x = torch.randn(problem.M, problem.K, generator=gen, device=device).to(problem.torch_dtype)
            w = torch.randn(problem.N, problem.K, generator=gen, device=device).div_(math.sqrt(problem.K))
            # The runtime always adds the residual stream (every layer but the first): tune what it runs.
            r = torch.randn(problem.M, problem.K, generator=gen, device=device).to(problem.torch_dtype)
            # The epilogue travels with the inputs, and the rotary one's positions and KV cache.
            kv = rotary_inputs(problem, table, gen) if rotary else None
            out.append((x, w.to(problem.torch_dtype), r, gain, problem.epilogue, kv))
        return out

    def launcher(self, config: Config | None) -> Callable[[Any], torch.Tensor]:
        def run(inputs: tuple) -> torch.Tensor:
            x, w, r, gain, epilogue, kv = inputs
            if epilogue.paired:
                return run_separate(x, w, r, gain, epilogue, kv) if config is None else \
                    run_fused(x, w, r, epilogue, kv, config)
            if config is None:  # the runtime's separate path (search_spaces/epilogues.py)
                return separate_norm_linear(x, w, r, gain)
            return fused_rms_norm_linear(x, w, residual=r, config=config)[0]
        return run

    def runs_as(self, config: Config, problem: Problem) -> Config:
        # The rotary form halves BLOCK_N, and further until it divides head_dim/2: at head_dim 128, BLOCK_N 128 and
        # 256 both run 64 columns. Named by the smallest stacked BLOCK_N that runs it.
        form = problem.epilogue.launched(config) if problem.epilogue.kind == "rotary" else None
        return dataclasses.replace(config, BLOCK_N=2 * form.BLOCK_N) if form is not None else config

    def written(self, inputs: tuple) -> list[torch.Tensor]:
        rotary = inputs[-1]  # the plain linear's inputs end with the weight
        return [rotary.k_cache, rotary.v_cache] if isinstance(rotary, RotaryKV) else []

    def footprint_bytes(self, problem: Problem) -> int:
        # x, the residual and h = x + residual, the weight, the output (gated: half the columns; rotary: q, and k and
        # v into the cache)
        out = problem.M * problem.N // (2 if problem.epilogue.kind == "gated" else 1)
        return (3 * problem.M * problem.K + problem.N * problem.K + out) * problem.elem_bytes

    def compile_problem(self, problem: Problem) -> Problem:
        """A small problem that compiles to the same binaries: Triton specializes ints on ==1 and %16 only. The
        rotary form compiles its head counts in, so its N stays; the gated one runs N/2 columns."""
        def small(v: int, unit: int = 16) -> int:
            return v if v <= unit else unit + v % unit
        N = {"rotary": problem.N, "gated": small(problem.N, 32)}.get(problem.epilogue.kind, small(problem.N))
        return dataclasses.replace(problem, M=small(problem.M), N=N)

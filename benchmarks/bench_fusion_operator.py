"""Fused RMSNorm+Linear vs what users run today, on one card in one run.

  python benchmarks/bench_fusion_operator.py --benchmark throughput_vs_batch --output FILE.csv

Variants: `baseline` (x + residual, F.rms_norm, F.linear), `compile` (torch.compile max-autotune of the
baseline) and `fused` (our kernel, default config, gain folded into the weight). Every variant is timed
as CUDA-graph replays over enough copies of the inputs to overflow L2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import (MODEL_SHAPES, CsvWriter, copies_to_overflow_l2, gpu_name, measure_ceilings,  # noqa: E402
                               require_cuda, time_us)
from kernels.rms_norm_linear import baseline_rms_norm_linear, fold_norm_weight, fused_rms_norm_linear  # noqa: E402

BENCHMARKS = {
    # one prompt of S tokens through the layer: M = S
    "latency_vs_seqlen": [1, 16, 64, 128, 256, 512, 1024, 2048, 4096],
    # one decode step of B sequences: M = B
    "throughput_vs_batch": [1, 2, 4, 8, 16, 32, 64, 128, 256],
    "memory_efficiency": [1, 16, 64, 256, 4096],
}
COLUMNS = ["model", "layer", "M", "K", "N", "dtype", "variant", "latency_us", "spread", "speedup_vs_baseline",
           "tflops", "gbps", "pct_of_copy_bandwidth", "floor_us", "pct_of_floor", "peak_memory_mb",
           "tokens_per_s", "compile_s", "gpu"]
EPS = 1e-6


def make_variant(variant: str, copies: list[dict]):
    if variant == "baseline":
        return [lambda c=c: baseline_rms_norm_linear(c["x"], c["w"], norm_weight=c["g"], residual=c["r"], eps=EPS)
                for c in copies]
    if variant == "fused":
        return [lambda c=c: fused_rms_norm_linear(c["x"], c["w_folded"], residual=c["r"], eps=EPS) for c in copies]
    torch._dynamo.reset()  # one compile per shape; never let dynamo's recompile limit fall back to eager
    compiled = torch.compile(baseline_rms_norm_linear, mode="max-autotune-no-cudagraphs", dynamic=False)
    return [lambda c=c: compiled(c["x"], c["w"], norm_weight=c["g"], residual=c["r"], eps=EPS) for c in copies]


def peak_extra_mb(fn) -> float:
    """Memory the call allocates beyond its inputs (outputs and temporaries)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    del out
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def run(args) -> None:
    require_cuda("bench_fusion_operator")
    copy_gbps, mm_tflops = measure_ceilings()
    gpu = gpu_name()
    print(f"# {gpu}: copy {copy_gbps:.0f} GB/s, bf16 matmul {mm_tflops:.0f} TFLOP/s")
    writer = CsvWriter(args.output, COLUMNS)
    dtype = torch.bfloat16
    rows = []
    for model in args.models:
        for layer, (K, N) in MODEL_SHAPES[model].items():
            w = torch.randn(N, K, device="cuda", dtype=dtype) * K ** -0.5
            g = torch.rand(K, device="cuda", dtype=dtype) + 0.5
            w_folded = fold_norm_weight(w, g)
            for M in args.m or BENCHMARKS[args.benchmark]:
                bytes_moved = 2 * (N * K + 3 * M * K + M * N)  # W, x, residual, h out, out
                n_copies = copies_to_overflow_l2(bytes_moved)
                copies = [dict(x=torch.randn(M, K, device="cuda", dtype=dtype),
                               r=torch.randn(M, K, device="cuda", dtype=dtype),
                               w=w if i == 0 else w.clone(), g=g,
                               w_folded=w_folded if i == 0 else w_folded.clone()) for i in range(n_copies)]
                floor_us = max(bytes_moved / copy_gbps / 1e3, 2 * M * N * K / mm_tflops / 1e6)
                base_us = None
                for variant in args.variants:
                    if variant == "compile" and M not in args.compile_m:
                        continue
                    t0 = time.perf_counter()
                    fns = make_variant(variant, copies)
                    fns[0]()
                    compile_s = time.perf_counter() - t0 if variant == "compile" else 0.0
                    us, spread = time_us(fns, spread=True)
                    base_us = us if variant == "baseline" else base_us
                    gbps = bytes_moved / us / 1e3
                    row = dict(model=model, layer=layer, M=M, K=K, N=N, dtype="bf16", variant=variant,
                               latency_us=round(us, 2), spread=round(spread, 3),
                               speedup_vs_baseline=round(base_us / us, 3) if base_us else "",
                               tflops=round(2 * M * N * K / us / 1e6, 2), gbps=round(gbps, 1),
                               pct_of_copy_bandwidth=round(100 * gbps / copy_gbps, 1), floor_us=round(floor_us, 2),
                               pct_of_floor=round(100 * floor_us / us, 1), peak_memory_mb=round(peak_extra_mb(fns[0]), 2),
                               tokens_per_s=round(M / us * 1e6), compile_s=round(compile_s, 1), gpu=gpu)
                    writer.write(row)
                    rows.append(row)
                    print(f"{model:11s} {layer:8s} M={M:5d} {variant:9s} {us:9.1f} us  "
                          f"x{row['speedup_vs_baseline'] or 1:<6} {row['pct_of_floor']:5.1f}% of floor", flush=True)
                del copies
    print(f"# wrote {len(rows)} rows to {args.output}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", choices=sorted(BENCHMARKS), required=True)
    p.add_argument("--output", required=True, help="CSV file to write")
    p.add_argument("--models", nargs="+", choices=sorted(MODEL_SHAPES), default=list(MODEL_SHAPES))
    p.add_argument("--variants", nargs="+", choices=["baseline", "compile", "fused"],
                   default=["baseline", "compile", "fused"])
    p.add_argument("--m", type=int, nargs="+", help="M values (default: the benchmark's own)")
    p.add_argument("--compile_m", type=int, nargs="+", default=[1, 16, 64, 256, 4096],
                   help="M values at which the slow-to-build torch.compile variant is measured")
    args = p.parse_args()
    if "baseline" in args.variants and args.variants[0] != "baseline":
        args.variants.remove("baseline")
        args.variants.insert(0, "baseline")
    run(args)


if __name__ == "__main__":
    main()

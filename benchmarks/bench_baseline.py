"""End-to-end latency and throughput of LLM() per model, batch size, prompt length and variant (GPU only).

Variants: baseline = separate RMSNorm and GEMM (fused_norm_linear=False); fused = the fused RMSNorm+Linear
kernel with its heuristic default configs (tuning_table=False); tuned = the fused kernel with the GPU's lookup
table (--tuning_table, else NANOVLLM_TUNING_TABLE, else tables/<gpu>.json; the CSV names the table used);
compiled = the baseline path under torch.compile, its decode graphs captured from the compiled forward (what a
user gets by compiling instead of tuning; benchmarks/engine_runs.py).

The default batch sizes include some between the CUDA-graph and tuned buckets (2, 12, 24, 48: those run the
graph and the table's configs of the next bucket up). Each grid point runs B prompts of S random tokens (fresh
ones every run, so no prefix-cache hits) with greedy decoding of T tokens, ignore_eos. One prefill step holds all
B x S tokens. Per point, the median of --repeats runs after one warm-up run, every run kept (the *_samples
columns, in the order they ran):
- ttft_ms: the prefill step (B x S tokens), which also samples the first token;
- tpot_ms: one decode step (the T - 1 steps after the prefill, CUDA graphs as LLM() runs them);
- latency_ms: the whole request, ttft + (T - 1) x tpot;
- throughput_tokens_per_sec: decode tokens per second, B x (T - 1) / decode time = B / tpot;
- peak_memory_mb: torch.cuda.max_memory_allocated during the run: the weights, the KV cache (sized for the
  largest point the engine runs, so the same for those points of a variant) and the point's activations.
One engine is built per variant for the whole grid. When the variants' engines fit on the card together, each
point's repeats alternate between them, the order turning by one variant each repeat (baseline, tuned; tuned,
baseline; ...), so neither a drift of the GPU over the minutes a grid takes nor the position within a repeat
favours a variant (run one after the other, two engines of identical kernels differed by up to 4%:
docs/PERF_NOTES.md); a variant's peak then leaves out the other engines' weights and caches. Where the engines fit
only without the grid's largest points (llama-13b up to B = 32, S = 2048 on an H200), those points run with the
variants one after the other, each engine sized for them alone. A point that does not fit the card gets
status=oom.

    python benchmarks/bench_baseline.py --model llama-7b --batch_size 1 4 8 --seq_len 128 --variant all
    python benchmarks/bench_baseline.py --model llama-7b mistral-7b llama-13b qwen3-0.6b --variant baseline tuned
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CsvWriter, gpu_name, require_cuda  # noqa: E402
from benchmarks.engine_runs import (build, engine_kwargs, footprint, measure, run_once, summarize,  # noqa: E402
                                   write_profile)
from nanovllm import LLM  # noqa: E402
from nanovllm.utils.context import reset_context  # noqa: E402
from nanovllm.utils.random_checkpoint import cached_random_checkpoint  # noqa: E402
from tuning_table import find_table  # noqa: E402

MODELS = ("llama-7b", "llama-13b", "mistral-7b", "qwen3-0.6b")
VARIANTS = ("baseline", "fused", "tuned", "compiled")
GRID_BATCH = (1, 2, 4, 8, 12, 16, 24, 32, 48)
GRID_SEQ = (128, 256, 512, 1024, 2048)
COLUMNS = ["model_name", "variant", "batch_size", "seq_len", "output_len", "latency_ms", "ttft_ms", "tpot_ms",
           "throughput_tokens_per_sec", "peak_memory_mb", "status", "gpu", "tuning_table", "ttft_ms_samples",
           "tpot_ms_samples"]
RESULTS = Path(__file__).resolve().parent / "bench_results"
# Each failed try at building the variants' engines together loads the weights again; after these many tries
# (the grid, then without its largest points, then without the next) every point left runs variant by variant.
PAIR_ATTEMPTS = 3


def row_base(model_name: str, variant: str, args) -> dict:
    """The columns every row of a variant shares."""
    table = find_table(engine_kwargs(variant, args.tuning_table).get("tuning_table", False), torch.device("cuda"))
    return {"model_name": model_name, "variant": variant, "output_len": args.output_len, "gpu": gpu_name(),
            "tuning_table": str(table) if table else "none"}


def trace_path(args, model_name: str, variant: str, batch: int, seq_len: int) -> Path | None:
    return Path(args.profile) / f"{model_name}_{variant}_b{batch}_s{seq_len}.json" if args.profile else None


def report(writer: CsvWriter, base: dict, batch: int, seq_len: int, row: dict) -> None:
    writer.write({**base, "batch_size": batch, "seq_len": seq_len, **row})
    print(f"{base['model_name']} {base['variant']:8s} B={batch:3d} S={seq_len:5d}: ttft {row['ttft_ms']:8.2f} ms, "
          f"tpot {row['tpot_ms']:6.2f} ms, {row['throughput_tokens_per_sec']:8.1f} tok/s, "
          f"peak {row['peak_memory_mb']:.0f} MB", flush=True)


def free_gpu() -> None:
    """Memory of dropped engines back to the card; a step cut short by an OOM leaves its batch's tensors in the
    context."""
    reset_context()
    gc.collect()
    torch.cuda.empty_cache()


def run_variant(path: str, model_name: str, variant: str, points: list[tuple[int, int]], args,
                writer: CsvWriter) -> None:
    """Every point of the grid, smallest first; a point that runs out of memory is recorded and the engine rebuilt
    for the points left."""
    base = row_base(model_name, variant, args)
    pending = sorted(points, key=lambda p: (p[0] * p[1], p))
    while pending:
        llm = None
        try:
            llm = build(path, variant, pending, args.output_len, args.tuning_table)
            while pending:
                batch, seq_len = pending[0]
                trace = trace_path(args, model_name, variant, batch, seq_len)
                report(writer, base, batch, seq_len, measure(llm, batch, seq_len, args.output_len, args.repeats, trace))
                pending.pop(0)
        except torch.cuda.OutOfMemoryError:
            # Built for all pending points: the largest may be what did not fit; else the point that was running.
            batch, seq_len = pending.pop(-1 if llm is None else 0)
            writer.write({**base, "batch_size": batch, "seq_len": seq_len, "status": "oom"})
            print(f"{model_name} {variant:8s} B={batch:3d} S={seq_len:5d}: out of memory", flush=True)
        llm = None
        free_gpu()


def build_together(path: str, variants: list[str], points: list[tuple[int, int]], args) -> dict | None:
    """{variant: (engine, bytes it holds)} when every variant's engine fits on the card at once, else None."""
    engines: dict[str, tuple[LLM, int]] = {}
    llm = None
    try:
        for variant in variants:
            before = torch.cuda.memory_allocated()
            llm = build(path, variant, points, args.output_len, args.tuning_table)
            engines[variant] = llm, torch.cuda.memory_allocated() - before
            # The next engine needs about as much again, plus the largest point's activations.
            if len(engines) < len(variants) and torch.cuda.mem_get_info()[0] < 1.2 * engines[variant][1]:
                raise torch.cuda.OutOfMemoryError("the next engine would not fit")
    except torch.cuda.OutOfMemoryError:
        engines, llm = {}, None
        free_gpu()
        return None
    return engines


def run_interleaved(engines: dict[str, tuple[LLM, int]], model_name: str, points: list[tuple[int, int]], args,
                    writer: CsvWriter) -> list[tuple[int, int]]:
    """Every point, smallest first, each repeat running every variant in turn, the order turned by one each repeat.
    Returns the points left when one ran out of memory: the caller frees these engines and runs those points
    variant by variant."""
    bases = {v: row_base(model_name, v, args) for v in engines}
    pending = sorted(points, key=lambda p: (p[0] * p[1], p))
    while pending:
        batch, seq_len = pending[0]
        runs, peaks = {v: [] for v in engines}, dict.fromkeys(engines, 0)
        try:
            for llm, _ in engines.values():
                run_once(llm, batch, seq_len, args.output_len)  # compiles the kernels of this M
            order = list(engines)
            for repeat in range(args.repeats):
                for v in order[repeat % len(order):] + order[:repeat % len(order)]:
                    llm = engines[v][0]
                    torch.cuda.reset_peak_memory_stats()
                    runs[v].append(run_once(llm, batch, seq_len, args.output_len))
                    others = sum(held for o, (_, held) in engines.items() if o != v)
                    peaks[v] = max(peaks[v], torch.cuda.max_memory_allocated() - others)
        except torch.cuda.OutOfMemoryError:
            print(f"{model_name} B={batch:3d} S={seq_len:5d}: out of memory with every variant's engine loaded; "
                  "the rest of the grid runs variant by variant", flush=True)
            return pending
        for v, (llm, _) in engines.items():
            trace = trace_path(args, model_name, v, batch, seq_len)
            if trace is not None:
                write_profile(llm, batch, seq_len, args.output_len, trace)
            report(writer, bases[v], batch, seq_len, summarize(runs[v], batch, args.output_len, peaks[v] / 2**20))
        pending.pop(0)
    return []


def csv_name(model: str) -> str:
    """The CSV's model_name: a preset's name, or a checkpoint folder's."""
    return model if model in MODELS else os.path.basename(os.path.normpath(model))


def run_model(model: str, variants: list[str], points: list[tuple[int, int]], args, writer: CsvWriter) -> None:
    """The grid of one model. The variants alternate within each point where their engines, sized for the points
    up to it, fit on the card together; the largest points that do not fit that way run variant by variant."""
    path = cached_random_checkpoint(model) if model in MODELS else model
    name = csv_name(model)
    pending = sorted(points, key=lambda p: footprint(p, args.output_len))
    alone: list[tuple[int, int]] = []
    engines = None
    attempts = PAIR_ATTEMPTS
    while len(variants) > 1 and pending and attempts:
        attempts -= 1
        engines = build_together(path, variants, pending, args)
        if engines is not None:
            break
        largest = footprint(pending[-1], args.output_len)
        while pending and footprint(pending[-1], args.output_len) == largest:
            alone.insert(0, pending.pop())
    if engines is not None:
        alone = run_interleaved(engines, name, pending, args, writer) + alone
        engines = None  # frees them (and a step an OOM cut short) before the fallback builds its own
        free_gpu()
    else:
        alone = pending + alone
    for variant in variants if alone else []:
        run_variant(path, name, variant, alone, args, writer)


def speedups(df: pd.DataFrame) -> pd.DataFrame:
    """Decode tokens/s per point and variant, and each fused variant's ratio to the baseline."""
    wide = df[df["status"] == "ok"].pivot_table(index=["model_name", "batch_size", "seq_len"], columns="variant",
                                                values="throughput_tokens_per_sec")
    for variant in ("fused", "tuned", "compiled"):
        if variant in wide and "baseline" in wide:
            wide[f"{variant}/baseline"] = wide[variant] / wide["baseline"]
    return wide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, nargs="+", help=f"one or more of {', '.join(MODELS)} (a "
                        "random-weight checkpoint of that architecture, built once under $NANOVLLM_CACHE) or "
                        "checkpoint folders, run one after the other into one CSV")
    parser.add_argument("--batch_size", type=int, nargs="+", default=GRID_BATCH)
    parser.add_argument("--seq_len", type=int, nargs="+", default=GRID_SEQ, help="prompt tokens per sequence")
    parser.add_argument("--output_len", type=int, default=32, help="generated tokens per sequence (>= 2)")
    parser.add_argument("--variant", nargs="+", choices=VARIANTS + ("all",), default=["all"],
                        help="one or more of the variants, in the order given")
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per point (all kept, and the median)")
    parser.add_argument("--tuning_table", help="lookup table of the tuned variant (default: the GPU's, see LLM())")
    parser.add_argument("--output", default=str(RESULTS / "baseline_metrics.csv"))
    parser.add_argument("--profile", metavar="DIR", help="also write a torch.profiler chrome trace per point")
    args = parser.parse_args()
    if min(args.batch_size) < 1 or min(args.seq_len) < 1:
        parser.error("--batch_size and --seq_len must be >= 1")
    if args.output_len < 2 or args.repeats < 1:
        parser.error("--output_len must be >= 2 (one prefill token, then decode) and --repeats >= 1")
    for model in args.model:
        if model not in MODELS and not os.path.isfile(os.path.join(model, "config.json")):
            parser.error(f"--model {model!r}: expected one of {', '.join(MODELS)} or a folder with a config.json")
    names = [csv_name(m) for m in args.model]
    if len(set(names)) < len(names):
        parser.error(f"--model: {names} name a model twice; its rows (and traces) would be mixed up in one CSV")
    require_cuda("bench_baseline.py")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    writer = CsvWriter(args.output, COLUMNS)
    points = [(b, s) for b in args.batch_size for s in args.seq_len]
    variants = list(VARIANTS if "all" in args.variant else dict.fromkeys(args.variant))
    for model in args.model:
        run_model(model, variants, points, args, writer)
    print(f"wrote {args.output}")
    print(speedups(pd.read_csv(args.output)).to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()

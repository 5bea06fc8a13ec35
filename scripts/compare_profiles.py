"""Compare two GPU profiles kernel category by kernel category: GPU time, kernel count, and the difference.

Inputs: PyTorch-profiler chrome traces (JSON, as `bench_baseline.py --profile DIR` writes; .json.gz too), or
the CSV of `nsys stats --report cuda_gpu_kern_sum --format csv`. Every GPU kernel goes to the first category
whose pattern its name matches:
- GEMM: cuBLAS/CUTLASS GEMMs and the fused RMSNorm+Linear kernel (a GEMM whose epilogue applies the norm);
- norm: RMSNorm kernels, including the fused kernel's row-statistics prologue;
- attention: attention kernels;
- other: everything else (activation, rotary, KV-cache writes, sampling, copies).

Next to the category table (--output) it writes the same comparison kernel by kernel (<output>_kernels.csv,
sorted by the size of the difference) and prints the --top rows of it.

    python scripts/compare_profiles.py traces/llama-7b_baseline_b1_s128.json traces/llama-7b_tuned_b1_s128.json
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

import pandas as pd

CATEGORIES = (
    ("GEMM", r"gemm|cutlass|xmma|nvjet|cublas|matmul|rms_norm_linear|split_k_reduce"),
    ("norm", r"rms_?norm|layer_?norm|row_stats"),
    # kernels/attention_decode.py and attention_prefill.py name theirs _decode_split/_decode_merge/_prefill_kernel.
    ("attention", r"attention|attn|flash|fmha|_decode_split|_decode_merge|_prefill_kernel"),
)
# Kineto's categories of GPU work in a chrome trace.
GPU_EVENT_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}


def category(kernel_name: str) -> str:
    name = kernel_name.lower()
    return next((cat for cat, pattern in CATEGORIES if re.search(pattern, name)), "other")


def read_kernels(path: str) -> pd.DataFrame:
    """One row per kernel name: name, total GPU microseconds, number of launches."""
    if path.endswith(".csv"):
        df = pd.read_csv(path)
        missing = {"Name", "Total Time (ns)", "Instances"} - set(df.columns)
        if missing:
            raise ValueError(f"{path}: not an `nsys stats --report cuda_gpu_kern_sum` CSV (lacks {sorted(missing)})")
        return pd.DataFrame({"name": df["Name"], "us": df["Total Time (ns)"] / 1e3, "launches": df["Instances"]})
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as f:
            trace = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a chrome trace ({e})") from None
    events = trace.get("traceEvents") if isinstance(trace, dict) else None
    if not isinstance(events, list):
        raise ValueError(f"{path}: not a chrome trace (no 'traceEvents' list)")
    rows = [(e["name"], float(e["dur"])) for e in events
            if e.get("ph") == "X" and e.get("cat") in GPU_EVENT_CATEGORIES and "dur" in e]
    if not rows:
        raise ValueError(f"{path}: no GPU kernels in the trace (was it recorded with ProfilerActivity.CUDA?)")
    df = pd.DataFrame(rows, columns=["name", "us"])
    return df.groupby("name", as_index=False).agg(us=("us", "sum"), launches=("us", "size"))


def summarize(kernels: pd.DataFrame) -> pd.DataFrame:
    """GPU milliseconds and launches per category, in CATEGORIES order, with a total row."""
    kernels = kernels.assign(category=kernels["name"].map(category))
    order = [cat for cat, _ in CATEGORIES] + ["other"]
    per = kernels.groupby("category").agg(ms=("us", "sum"), launches=("launches", "sum"))
    per = per.reindex(order, fill_value=0)
    per["ms"] /= 1e3
    per.loc["total"] = per.sum()
    return per


def compare(baseline: pd.DataFrame, optimized: pd.DataFrame) -> pd.DataFrame:
    """Per category, from two `read_kernels` tables."""
    a, b = summarize(baseline), summarize(optimized)
    table = pd.DataFrame({
        "baseline_ms": a["ms"], "optimized_ms": b["ms"], "diff_ms": b["ms"] - a["ms"],
        "baseline_launches": a["launches"].astype(int), "optimized_launches": b["launches"].astype(int),
        "diff_launches": (b["launches"] - a["launches"]).astype(int),
    })
    table["speedup"] = table["baseline_ms"] / table["optimized_ms"].where(table["optimized_ms"] > 0)
    table.index.name = "category"
    return table


def compare_kernels(baseline: pd.DataFrame, optimized: pd.DataFrame) -> pd.DataFrame:
    """Per kernel name, from two `read_kernels` tables: GPU ms, launches and mean µs a launch on each side, and the
    difference; the kernels that moved most first. A kernel only one side ran has zeros on the other."""
    both = baseline.merge(optimized, on="name", how="outer", suffixes=("_a", "_b"))
    both = both.fillna(0).set_index("name")
    table = pd.DataFrame({
        "category": both.index.map(category),
        "baseline_ms": both["us_a"] / 1e3, "baseline_launches": both["launches_a"].astype(int),
        "optimized_ms": both["us_b"] / 1e3, "optimized_launches": both["launches_b"].astype(int),
    }, index=both.index)
    table["baseline_us_per_launch"] = both["us_a"] / both["launches_a"].where(both["launches_a"] > 0)
    table["optimized_us_per_launch"] = both["us_b"] / both["launches_b"].where(both["launches_b"] > 0)
    table["diff_ms"] = table["optimized_ms"] - table["baseline_ms"]
    table.index.name = "kernel"
    return table.iloc[table["diff_ms"].abs().argsort()[::-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", help="profile of the baseline run")
    parser.add_argument("optimized", help="profile of the optimized run")
    parser.add_argument("--output", default="profile_comparison.csv", help="CSV to write (default: %(default)s)")
    parser.add_argument("--top", type=int, default=10, help="kernels to print, largest difference first "
                        "(default: %(default)s)")
    args = parser.parse_args()
    if args.top < 0:
        parser.error(f"--top {args.top}: expected a count >= 0")
    try:
        a, b = read_kernels(args.baseline), read_kernels(args.optimized)
    except ValueError as e:
        parser.error(str(e))
    table, kernels = compare(a, b), compare_kernels(a, b)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    kernels_out = out.with_name(f"{out.stem}_kernels.csv")
    table.to_csv(out, float_format="%.4f")
    kernels.to_csv(kernels_out, float_format="%.4f")
    fmt = {"float_format": lambda v: f"{v:.3f}"}
    print(f"GPU time per kernel category: {args.baseline} -> {args.optimized}")
    print(table.to_string(**fmt))
    if args.top:
        shown = kernels.head(args.top).rename(index=lambda name: name[:60])
        print(f"\nThe {len(shown)} kernels whose GPU time changed most:")
        print(shown.to_string(**fmt))
    print(f"wrote {out} and {kernels_out}")


if __name__ == "__main__":
    main()

"""Which part of the tuned runtime makes a decode step faster or slower, on a CUDA GPU.

For each (batch, prompt length) point, builds one engine per setting and measures a decode step as
benchmarks/bench_baseline.py does (CUDA graphs, greedy, median of --repeats runs):
- baseline: separate RMSNorm and cuBLAS GEMMs (fused_norm_linear=False);
- tuned: the fused kernel and the plain-linear GEMM where the GPU's table says they won;
- tuned-no-linear: the same table without its "linear" entries (o_proj/down_proj on cuBLAS);
- tuned-no-pdl: tuned, every Triton kernel launched without programmatic dependent launch;
- tuned-fuse64: tuned, but shapes the table lacks run the fused default config up to 64 rows
  (FusionOptions(untuned_max_m=64); the default is 16).

    python scripts/exp_decode_ablation.py --model llama-7b --batch_size 16 32 --seq_len 128 --output abl.csv
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels.pdl  # noqa: E402
from benchmarks.engine_runs import build, measure  # noqa: E402
from nanovllm.utils.random_checkpoint import cached_random_checkpoint  # noqa: E402
from tuning_table import FusionOptions, find_table  # noqa: E402

SETTINGS = ("baseline", "tuned", "tuned-no-linear", "tuned-no-pdl", "tuned-fuse64")


def without_linear(table: Path) -> str:
    data = json.loads(table.read_text())
    data["kernels"].pop("linear", None)
    out = Path(tempfile.mkdtemp()) / table.name
    out.write_text(json.dumps(data))
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-7b")
    parser.add_argument("--batch_size", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--seq_len", type=int, nargs="+", default=[128])
    parser.add_argument("--output_len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--output", default="decode_ablation.csv")
    args = parser.parse_args()
    path = cached_random_checkpoint(args.model)
    table = find_table(None, torch.device("cuda"))
    if table is None:
        sys.exit("no tuning table for this GPU")
    tables = {"tuned": str(table), "tuned-no-linear": without_linear(table), "tuned-no-pdl": str(table),
              "tuned-fuse64": str(table)}
    points = [(b, s) for b in args.batch_size for s in args.seq_len]
    rows = []
    for setting in args.settings:
        variant = "baseline" if setting == "baseline" else "tuned"
        options = {"fusion": FusionOptions(untuned_max_m=64)} if setting == "tuned-fuse64" else {}
        with kernels.pdl.pdl_off() if setting == "tuned-no-pdl" else contextlib.nullcontext():
            llm = build(path, variant, points, args.output_len, tables.get(setting), **options)
            for batch, seq_len in points:
                row = measure(llm, batch, seq_len, args.output_len, args.repeats, None)
                rows.append({"setting": setting, "batch_size": batch, "seq_len": seq_len, "tpot_ms": row["tpot_ms"]})
                print(rows[-1], flush=True)
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    df = pd.DataFrame(rows)
    df.to_csv(args.output, index=False)
    print(df.pivot_table(index=["batch_size", "seq_len"], columns="setting", values="tpot_ms").round(3).to_string())


if __name__ == "__main__":
    main()

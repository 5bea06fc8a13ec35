"""Batch-1 decode with and without programmatic dependent launch (kernels/pdl.py), on a CUDA GPU.

Runs bench.py's batch-1 decode (a random-weight checkpoint of --shape, the GPU's tuning table as LLM() finds
it) in one fresh process per run, alternating PDL on and off so drift hits both alike; prints ms/token and
the share of the weight-read floor, and writes a CSV.

    python scripts/exp_pdl.py --shape llama-7b --runs 2 --output pdl.csv
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def one_run(shape: str, pdl: bool) -> dict:
    import kernels.pdl
    from benchmarks.common import copy_bandwidth_gbps
    from benchmarks.serving import decode_latency
    from nanovllm.utils.random_checkpoint import cached_random_checkpoint

    with contextlib.nullcontext() if pdl else kernels.pdl.pdl_off():
        result = decode_latency(cached_random_checkpoint(shape), repeats=1)
    step_s, floor_s = result.step_s[0], result.weight_bytes / (copy_bandwidth_gbps() * 1e9)
    return {"shape": shape, "pdl": pdl, "ms_per_token": step_s * 1e3, "floor_ms": floor_s * 1e3,
            "pct_of_floor": 100 * floor_s / step_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-7b")
    parser.add_argument("--runs", type=int, default=2, help="runs per setting")
    parser.add_argument("--output", default="exp_pdl.csv")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(one_run(args.shape, args.child == "on")))
        return
    rows = []
    for _ in range(args.runs):
        for setting in ("on", "off"):
            out = subprocess.run([sys.executable, __file__, "--shape", args.shape, "--child", setting], cwd=ROOT,
                                 capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode or not lines:
                sys.exit(f"run with PDL {setting} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
            rows.append(json.loads(lines[-1][len("RESULT "):]))
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(args.output, index=False)
    print(df.groupby("pdl")[["ms_per_token", "pct_of_floor"]].median().round(3).to_string())


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

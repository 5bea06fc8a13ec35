"""Sweep a small hand-picked set of configs over the benchmark shapes, to choose `default_config`'s rules.

  python scripts/calibrate_default.py --output calib.csv

Prints, per (model, layer, M), the fastest candidate, the default config's time and the baseline's.
This is not the autotuner (cli.py tune is): it only keeps the untuned default honest.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import MODEL_SHAPES, CsvWriter, copies_to_overflow_l2, gpu_name, require_cuda, time_us  # noqa: E402
from kernels.config import Config, default_config  # noqa: E402
from kernels.rms_norm_linear import baseline_rms_norm_linear, fused_rms_norm_linear  # noqa: E402

DECODE = [Config(16, bn, bk, num_warps=4, num_stages=s, GROUP_M=8, SPLIT_K=sk, SUMSQ_IN_LOOP=loop)
          for bn, bk, s, sk, loop in itertools.product([64, 128], [128, 256], [3, 4], [1, 2, 4], [0, 1])]
PREFILL = [Config(bm, bn, 64, num_warps=w, num_stages=s, GROUP_M=8)
           for bm, bn, w, s in itertools.product([64, 128], [128, 256], [4, 8], [3, 4])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True)
    p.add_argument("--m", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024, 4096])
    p.add_argument("--models", nargs="+", choices=sorted(MODEL_SHAPES), default=list(MODEL_SHAPES))
    args = p.parse_args()
    require_cuda("calibrate_default")
    dtype = torch.bfloat16
    writer = CsvWriter(args.output, ["model", "layer", "M", "K", "N", "config", "latency_us", "is_default", "gpu"])
    for model in args.models:
        for layer, (K, N) in MODEL_SHAPES[model].items():
            for M in args.m:
                n = copies_to_overflow_l2(2 * N * K)
                ins = [(torch.randn(M, K, device="cuda", dtype=dtype), torch.randn(N, K, device="cuda", dtype=dtype),
                        torch.randn(M, K, device="cuda", dtype=dtype)) for _ in range(n)]
                base = time_us([lambda a=a: baseline_rms_norm_linear(a[0], a[1], residual=a[2]) for a in ins])
                default = default_config(M, N, K, ins[0][0].device)
                results = []
                for cfg in {default, *(DECODE if M <= 64 else PREFILL)}:
                    try:
                        cfg.validate(K=K)
                        us = time_us([lambda a=a, c=cfg: fused_rms_norm_linear(a[0], a[1], residual=a[2], config=c)
                                      for a in ins], repeats=10)
                    except Exception as e:  # out of resources and the like: skip the candidate
                        print(f"skip {cfg}: {type(e).__name__}")
                        continue
                    results.append((us, cfg))
                    writer.write(dict(model=model, layer=layer, M=M, K=K, N=N, config=cfg.to_dict(),
                                      latency_us=round(us, 2), is_default=cfg == default, gpu=gpu_name()))
                results.sort(key=lambda r: r[0])
                d_us = next(us for us, c in results if c == default)
                print(f"{model:11s} {layer:8s} M={M:5d} base {base:8.1f} default {d_us:8.1f} "
                      f"best {results[0][0]:8.1f} {results[0][1]}", flush=True)
                del ins


if __name__ == "__main__":
    main()

"""Where the fused kernel's sum of squares should come from (Config.SUMSQ_IN_LOOP 0, 1, 2), on a CUDA GPU.

For decode-sized M and the RMSNorm+Linear sites of llama-7b and qwen3-0.6b (with the residual add, as in a
decoder layer), times each source with the same tile (the default config's) as the tuner does: CUDA-graph
replays, weights cold, without PDL. Prints microseconds per call and writes a CSV.

    python scripts/exp_sumsq.py --output sumsq.csv
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import copies_to_overflow_l2, require_cuda, time_us  # noqa: E402
from kernels.config import default_config  # noqa: E402
from kernels.rms_norm_linear import fused_rms_norm_linear  # noqa: E402

SITES = {"llama-7b qkv": (4096, 12288), "llama-7b gate_up": (4096, 22016), "qwen3-0.6b qkv": (1024, 4096),
         "qwen3-0.6b gate_up": (1024, 6144)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--output", default="exp_sumsq.csv")
    args = parser.parse_args()
    device = require_cuda("exp_sumsq.py")
    rows = []
    for site, (K, N) in SITES.items():
        copies = copies_to_overflow_l2(N * K * 2)
        weights = [torch.randn(N, K, device=device, dtype=torch.bfloat16) / K ** 0.5 for _ in range(copies)]
        for M in args.m:
            x, r = (torch.randn(M, K, device=device, dtype=torch.bfloat16) for _ in range(2))
            tile = default_config(M, N, K, device, 2)
            for mode in (0, 1, 2):
                config = dataclasses.replace(tile, SUMSQ_IN_LOOP=mode, TMA=0)
                ref = fused_rms_norm_linear(x, weights[0], residual=r, config=dataclasses.replace(config, SUMSQ_IN_LOOP=0))
                out = fused_rms_norm_linear(x, weights[0], residual=r, config=config)
                torch.testing.assert_close(out[0], ref[0], rtol=2e-2, atol=2e-2)
                fns = [lambda w=w: fused_rms_norm_linear(x, w, residual=r, config=config) for w in weights]
                rows.append({"site": site, "M": M, "K": K, "N": N, "config": str(config), "sumsq": mode,
                             "us": time_us(fns)})
                print(rows[-1], flush=True)
        del weights
    df = pd.DataFrame(rows)
    df.to_csv(args.output, index=False)
    print(df.pivot_table(index=["site", "M"], columns="sumsq", values="us").round(2).to_string())


if __name__ == "__main__":
    main()

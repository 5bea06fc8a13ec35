"""Experiment: could a tuned Triton GEMM beat cuBLAS on the plain linears of a decode step (o_proj, down_proj)?

Times F.linear against the pure-GEMM variant of scripts/exp_variants.py over a small config grid. SPLIT_K > 1
there accumulates with atomics into fp32 (no reduction pass), so those rows are a lower bound.
"""
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa

from benchmarks.common import copies_to_overflow_l2, copy_bandwidth_gbps, require_cuda, time_us  # noqa
from scripts.exp_variants import run  # noqa

SITES = {"llama-7b o_proj": (4096, 4096), "llama-7b down_proj": (11008, 4096)}


def main() -> None:
    require_cuda("exp_linear_sites.py")
    bw = copy_bandwidth_gbps()
    print(f"copy bandwidth: {bw:.0f} GB/s")
    for name, (K, N) in SITES.items():
        for M in (1, 4, 8, 16, 64):
            n = copies_to_overflow_l2(2 * N * K)
            ins = [(torch.randn(M, K, device="cuda", dtype=torch.bfloat16),
                    torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02,
                    torch.empty(M, N, device="cuda", dtype=torch.bfloat16), torch.rand(M, device="cuda") + 1,
                    torch.zeros(M, N, device="cuda")) for _ in range(n)]
            lin = time_us([lambda a=a: torch.nn.functional.linear(a[0], a[1]) for a in ins])
            best = {}
            for bn, bk, s, sk in itertools.product((32, 64, 128), (128, 256), (4, 6), (1, 2)):
                if K % (bk * sk):
                    continue
                try:
                    t = time_us(run(M, K, N, 0, 16 if M <= 16 else 64, bn, bk, 4, s, sk, ins), repeats=10)
                except Exception as e:  # out of shared memory etc.
                    print(f"  {name} M={M} {bn},{bk},{s},{sk}: {type(e).__name__}")
                    continue
                if t < best.get(sk, (1e9,))[0]:
                    best[sk] = (t, (bn, bk, s))
            floor = 2 * N * K / bw / 1e3
            row = " ".join(f"split{sk} {t:.1f} {c}" for sk, (t, c) in sorted(best.items()))
            print(f"{name:20s} M={M:3d} floor {floor:5.1f} cuBLAS {lin:6.1f} ({floor / lin:4.0%}) triton {row}",
                  flush=True)


if __name__ == "__main__":
    main()

"""Experiment: where does the fused kernel lose time? Variants of the K loop, timed against cuBLAS."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa
import triton  # noqa
import triton.language as tl  # noqa

from benchmarks.common import copies_to_overflow_l2, copy_bandwidth_gbps, time_us  # noqa
from kernels.rms_norm_linear import baseline_rms_norm_linear  # noqa


@triton.jit
def k_var(x_ptr, w_ptr, out_ptr, ss_ptr, ws_ptr, M, N, K, eps,
          MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
          SPLIT_K: tl.constexpr):
    # MODE 0: pure GEMM; 1: sumsq in loop; 2: sumsq in a prologue loop; 3: sumsq precomputed in ss_ptr
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    k_blocks = tl.cdiv(K, BLOCK_K)
    per = tl.cdiv(k_blocks, SPLIT_K)
    kb0 = pid_k * per
    kb1 = tl.minimum(kb0 + per, k_blocks)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    sumsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    gram = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    if MODE == 2:
        for kb in range(0, k_blocks):
            offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
            a = tl.load(x_ptr + offs_m[:, None] * K + offs_k[None, :], mask=mask_m[:, None], other=0.0).to(tl.float32)
            sumsq += tl.sum(a * a, axis=1)
    for kb in range(kb0, kb1):
        offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        a = tl.load(x_ptr + offs_m[:, None] * K + offs_k[None, :], mask=mask_m[:, None], other=0.0)
        if MODE == 1:
            a32 = a.to(tl.float32)
            sumsq += tl.sum(a32 * a32, axis=1)
        if MODE == 4:  # sum of squares on the tensor cores: the diagonal of A A^T
            gram = tl.dot(a, tl.trans(a), gram)
        b = tl.load(w_ptr + offs_k[:, None] + offs_n[None, :] * K)
        acc = tl.dot(a, b, acc)
    if MODE == 3:
        sumsq = tl.load(ss_ptr + offs_m, mask=mask_m, other=1.0)
    if MODE == 4:
        eye = tl.arange(0, BLOCK_M)[:, None] == tl.arange(0, BLOCK_M)[None, :]
        sumsq = tl.sum(tl.where(eye, gram, 0.0), axis=1)
    if SPLIT_K == 1:
        if MODE != 0:
            acc = acc * (1.0 / tl.sqrt(sumsq / K + eps))[:, None]
        tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(tl.bfloat16), mask=mask_m[:, None])
    else:
        tl.atomic_add(ws_ptr + offs_m[:, None] * N + offs_n[None, :], acc, mask=mask_m[:, None])


def run(M, K, N, mode, bm, bn, bk, w, s, sk, ins):
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn), sk)

    def f(x, wt, out, ss, ws):
        k_var[grid](x, wt, out, ss, ws, M, N, K, 1e-6, MODE=mode, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk,
                    num_warps=w, num_stages=s)
    return [lambda a=a: f(*a) for a in ins]


def main():
    K, N = 4096, 12288
    cfgs = {1: [(16, 64, 128, 4, 4, 1), (16, 128, 128, 4, 4, 1), (16, 64, 256, 4, 3, 1), (16, 64, 128, 4, 6, 1),
                (16, 32, 256, 4, 4, 1), (16, 128, 256, 8, 3, 1), (16, 64, 128, 4, 4, 2), (16, 128, 128, 4, 4, 4)],
            16: [(16, 64, 128, 4, 4, 1), (16, 128, 128, 4, 4, 1), (16, 64, 256, 4, 3, 1)],
            64: [(64, 64, 128, 4, 4, 1), (64, 128, 64, 4, 4, 1)],
            4096: [(128, 256, 64, 8, 3, 1)]}
    print(f"copy bandwidth: {copy_bandwidth_gbps():.0f} GB/s")
    for M, cl in cfgs.items():
        n = copies_to_overflow_l2(2 * N * K)
        ins = [(torch.randn(M, K, device="cuda", dtype=torch.bfloat16), torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02,
                torch.empty(M, N, device="cuda", dtype=torch.bfloat16), torch.rand(M, device="cuda") + 1,
                torch.zeros(M, N, device="cuda")) for _ in range(n)]
        base = time_us([lambda a=a: baseline_rms_norm_linear(a[0], a[1]) for a in ins])
        lin = time_us([lambda a=a: torch.nn.functional.linear(a[0], a[1]) for a in ins])
        print(f"M={M} baseline {base:.1f} linear {lin:.1f}")
        for c in cl:
            row = []
            for mode in (0, 1, 3, 4):
                try:
                    row.append(f"{time_us(run(M, K, N, mode, *c, ins), repeats=10):7.1f}")
                except Exception as e:
                    row.append(f"ERR {type(e).__name__}")
            print(f"  {c}: pure/inloop/precomp/gram = {' '.join(row)}", flush=True)


if __name__ == "__main__":
    main()

"""Paged attention kernels vs torch SDPA on the same K/V gathered into contiguous tensors (GPU only).

  python benchmarks/bench_ops.py --output FILE.csv

Llama-3-8B attention shapes (32 query heads, 8 KV heads, head_dim 128, bf16, block_size 16). Every
case is first checked against SDPA, then timed as CUDA-graph replays over enough copies of the
inputs to overflow L2. SDPA gets its K/V already gathered and contiguous (the gather is not timed),
so it is the bar of a dense, unpaged kernel. Decode also runs with one split, to show what split-KV buys.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import (CsvWriter, copies_to_overflow_l2, gpu_name, measure_ceilings,  # noqa: E402
                               require_cuda, time_us)
from kernels.attention_decode import paged_decode_attention_triton  # noqa: E402
from kernels.attention_prefill import paged_prefill_attention_triton  # noqa: E402

NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16
SCALE = HEAD_DIM ** -0.5
# (batch, context length) for decode; (batch, context length, new tokens) for prefill.
DECODE_CASES = [(1, 1024), (1, 8192), (8, 2048), (32, 2048), (64, 4096), (128, 1024), (256, 512)]
PREFILL_CASES = [(1, 512, 512), (1, 4096, 4096), (4, 2048, 2048), (8, 1024, 1024), (1, 8192, 512),
                 (4, 4096, 256)]
COLUMNS = ["op", "batch", "context_len", "q_len", "variant", "latency_us", "speedup_vs_sdpa", "tflops", "gbps",
           "pct_of_copy_bandwidth", "max_abs_err", "gpu"]


def make_inputs(batch: int, context_len: int, q_len: int) -> dict:
    """A paged cache in shuffled block order, and the same K/V gathered as [B, Hkv, L, D] for SDPA."""
    blocks_per_seq = context_len // BLOCK_SIZE
    num_blocks = batch * blocks_per_seq
    k_cache = torch.randn(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    v_cache = torch.randn_like(k_cache)
    block_tables = torch.randperm(num_blocks, device="cuda", dtype=torch.int32).view(batch, blocks_per_seq)
    gather = block_tables.long()

    def dense(cache):
        return cache[gather].view(batch, context_len, NUM_KV_HEADS, HEAD_DIM).transpose(1, 2).contiguous()

    q = torch.randn(batch * q_len, NUM_Q_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    return {
        "q": q, "k_cache": k_cache, "v_cache": v_cache, "block_tables": block_tables,
        "seq_lens": torch.full((batch,), context_len, device="cuda", dtype=torch.int32),
        "cu_seqlens_q": torch.arange(0, batch * q_len + 1, q_len, device="cuda", dtype=torch.int32),
        "q_dense": q.view(batch, q_len, NUM_Q_HEADS, HEAD_DIM).transpose(1, 2).contiguous(),
        "k_dense": dense(k_cache), "v_dense": dense(v_cache),
    }


def sdpa(c: dict, q_len: int) -> torch.Tensor:
    context_len = c["k_dense"].shape[2]
    mask = None
    if 1 < q_len < context_len:  # the new tokens sit at the end: causal with an offset
        rows = torch.arange(context_len - q_len, context_len, device="cuda")[:, None]
        mask = torch.arange(context_len, device="cuda")[None, :] <= rows
    out = F.scaled_dot_product_attention(c["q_dense"], c["k_dense"], c["v_dense"], attn_mask=mask,
                                         is_causal=q_len == context_len and q_len > 1, scale=SCALE, enable_gqa=True)
    return out.transpose(1, 2).reshape(-1, NUM_Q_HEADS, HEAD_DIM)


def ours(c: dict, op: str, num_splits: int | None = None) -> torch.Tensor:
    if op == "decode":
        return paged_decode_attention_triton(c["q"], c["k_cache"], c["v_cache"], c["block_tables"], c["seq_lens"],
                                             SCALE, num_splits=num_splits)
    return paged_prefill_attention_triton(c["q"], c["k_cache"], c["v_cache"], c["block_tables"], c["cu_seqlens_q"],
                                          c["seq_lens"], SCALE)


def attention_flops(batch: int, context_len: int, q_len: int) -> float:
    # Causal: query i of the q_len new tokens sees context_len - q_len + i + 1 keys; two matmuls of 2 flops.
    keys_seen = q_len * (context_len - q_len) + q_len * (q_len + 1) / 2
    return 4.0 * batch * NUM_Q_HEADS * HEAD_DIM * keys_seen


def run_case(op: str, batch: int, context_len: int, q_len: int, copy_gbps: float, writer: CsvWriter) -> None:
    kv_bytes = 2 * batch * context_len * NUM_KV_HEADS * HEAD_DIM * DTYPE.itemsize
    copies = [make_inputs(batch, context_len, q_len) for _ in range(copies_to_overflow_l2(2 * kv_bytes))]
    variants = {"sdpa": lambda c: sdpa(c, q_len), "triton": lambda c: ours(c, op)}
    if op == "decode":
        variants["triton_1_split"] = lambda c: ours(c, op, num_splits=1)
    expected = sdpa(copies[0], q_len).float()
    sdpa_us = None
    for name, fn in variants.items():
        err = (fn(copies[0]).float() - expected).abs().max().item()
        if err > 5e-2:
            sys.exit(f"bench_ops: {op} {name} B={batch} L={context_len} q={q_len} differs from SDPA by {err:.3g}")
        us = time_us([lambda c=c: fn(c) for c in copies])
        sdpa_us = sdpa_us or us
        gbps = kv_bytes / us / 1e3
        row = {"op": op, "batch": batch, "context_len": context_len, "q_len": q_len, "variant": name,
               "latency_us": round(us, 2), "speedup_vs_sdpa": round(sdpa_us / us, 3),
               "tflops": round(attention_flops(batch, context_len, q_len) / us / 1e6, 2),
               "gbps": round(gbps, 1), "pct_of_copy_bandwidth": round(100 * gbps / copy_gbps, 1),
               "max_abs_err": f"{err:.2g}", "gpu": gpu_name()}
        writer.write(row)
        print(f"{op:7} B={batch:<4} L={context_len:<5} q={q_len:<5} {name:15} {us:9.1f} us  "
              f"x{row['speedup_vs_sdpa']:<6} {row['tflops']:7.1f} TFLOP/s {row['gbps']:7.0f} GB/s  err {err:.2g}")
    del copies
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="CSV file to write")
    parser.add_argument("--only", choices=["decode", "prefill"], help="run one op only")
    args = parser.parse_args()
    require_cuda("bench_ops.py")
    torch.manual_seed(0)
    copy_gbps, _ = measure_ceilings()
    print(f"{gpu_name()}: copy bandwidth {copy_gbps:.0f} GB/s (read + write)")
    writer = CsvWriter(args.output, COLUMNS)
    if args.only != "prefill":
        for batch, context_len in DECODE_CASES:
            run_case("decode", batch, context_len, 1, copy_gbps, writer)
    if args.only != "decode":
        for batch, context_len, q_len in PREFILL_CASES:
            run_case("prefill", batch, context_len, q_len, copy_gbps, writer)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

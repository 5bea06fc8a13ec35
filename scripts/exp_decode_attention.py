"""Experiment: the paged decode-attention kernel's tile, warps, stages and split count at the models' shapes.

    python scripts/exp_decode_attention.py --output decode_attention_sweep.csv

Each case is a model's attention at a decode grid point (bf16, block_size 16, shuffled cache blocks). Every
variant is checked against the reference, then timed as CUDA-graph replays over enough cache copies to overflow
L2, without PDL (as every kernel timing here: alone, with no neighbour to overlap). The variants pass
`paged_decode_attention_triton` a DecodeTile (BLOCK_N, num_warps, num_stages) and num_splits: half, once and twice
the default. A tile that does not fit the card's shared memory is skipped. GB/s counts
the K/V bytes read.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from triton.runtime.errors import OutOfResources  # noqa: E402

from benchmarks.common import CsvWriter, copies_to_overflow_l2, gpu_name, require_cuda, time_us  # noqa: E402
from kernels import attention_decode as ad  # noqa: E402
from kernels.reference import paged_decode_attention_reference  # noqa: E402

BLOCK_SIZE, HEAD_DIM, DTYPE = 16, 128, torch.bfloat16
# (label, batch, context length, query heads, KV heads)
CASES = [("llama-7b", 8, 2048, 32, 32), ("llama-7b", 1, 2048, 32, 32), ("llama-7b", 32, 1024, 32, 32),
         ("mistral-7b", 8, 2048, 32, 8), ("qwen3-0.6b", 32, 1024, 16, 8)]
TILES = list(itertools.product((32, 64, 128), (4, 8), (2, 3)))  # BLOCK_N, num_warps, num_stages
COLUMNS = ["model", "batch", "context_len", "block_n", "num_warps", "num_stages", "num_splits", "latency_us",
           "gbps", "speedup_vs_current", "max_abs_err", "gpu"]


def make_inputs(batch: int, context_len: int, q_heads: int, kv_heads: int) -> dict:
    blocks = batch * context_len // BLOCK_SIZE
    k_cache = torch.randn(blocks, BLOCK_SIZE, kv_heads, HEAD_DIM, device="cuda", dtype=DTYPE)
    return {"q": torch.randn(batch, q_heads, HEAD_DIM, device="cuda", dtype=DTYPE), "k_cache": k_cache,
            "v_cache": torch.randn_like(k_cache),
            "block_tables": torch.randperm(blocks, device="cuda", dtype=torch.int32).view(batch, -1),
            "seq_lens": torch.full((batch,), context_len, device="cuda", dtype=torch.int32)}


def attend(c: dict, num_splits: int, tile: ad.DecodeTile) -> torch.Tensor:
    return ad.paged_decode_attention_triton(c["q"], c["k_cache"], c["v_cache"], c["block_tables"], c["seq_lens"],
                                            HEAD_DIM ** -0.5, num_splits=num_splits, tile=tile)


def run_case(model: str, batch: int, context_len: int, q_heads: int, kv_heads: int, writer: CsvWriter) -> None:
    kv_bytes = 2 * batch * context_len * kv_heads * HEAD_DIM * DTYPE.itemsize
    copies = [make_inputs(batch, context_len, q_heads, kv_heads) for _ in range(copies_to_overflow_l2(kv_bytes))]
    c0 = copies[0]
    expected = paged_decode_attention_reference(c0["q"], c0["k_cache"], c0["v_cache"], c0["block_tables"],
                                                c0["seq_lens"], HEAD_DIM ** -0.5).float()
    default_splits = ad.default_num_splits(batch, kv_heads, context_len, c0["q"].device)
    current = (ad.DEFAULT_TILE.BLOCK_N, ad.DEFAULT_TILE.num_warps, ad.DEFAULT_TILE.num_stages)
    rows = []
    for (block_n, warps, stages), splits in itertools.product(TILES, sorted({max(1, default_splits // 2),
                                                                            default_splits, 2 * default_splits})):
        tile = ad.DecodeTile(block_n, warps, stages)
        try:
            out = attend(c0, splits, tile).float()
            us = time_us([lambda c=c: attend(c, splits, tile) for c in copies])
        except OutOfResources:
            print(f"{model} {block_n}/{warps}/{stages}: does not fit in shared memory, skipped")
            continue
        err = (out - expected).abs().max().item()
        # bf16 rounding of outputs of ~0.1: a dropped or repeated tile is off by far more.
        if ((out - expected).abs() > 2e-3 + 1.6e-2 * expected.abs()).any():
            sys.exit(f"exp_decode_attention: {model} B={batch} {block_n}/{warps}/{stages} x{splits}: error {err:.3g}")
        rows.append({"model": model, "batch": batch, "context_len": context_len, "block_n": block_n,
                     "num_warps": warps, "num_stages": stages, "num_splits": splits, "latency_us": round(us, 2),
                     "gbps": round(kv_bytes / us / 1e3, 1), "max_abs_err": f"{err:.2g}", "gpu": gpu_name()})
    base = next(r["latency_us"] for r in rows
                if (r["block_n"], r["num_warps"], r["num_stages"]) == current and r["num_splits"] == default_splits)
    for r in sorted(rows, key=lambda r: r["latency_us"]):
        r["speedup_vs_current"] = round(base / r["latency_us"], 3)
        writer.write(r)
    best = min(rows, key=lambda r: r["latency_us"])
    print(f"{model:11} B={batch:<3} L={context_len:<5} current {base:7.1f} us ({kv_bytes / base / 1e3:5.0f} GB/s, "
          f"{default_splits} splits)  best {best['latency_us']:7.1f} us ({best['gbps']:5.0f} GB/s) "
          f"BLOCK_N={best['block_n']} warps={best['num_warps']} stages={best['num_stages']} "
          f"splits={best['num_splits']}")
    del copies
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="CSV file to write")
    args = parser.parse_args()
    require_cuda("exp_decode_attention.py")
    torch.manual_seed(0)
    writer = CsvWriter(args.output, COLUMNS)
    for case in CASES:
        run_case(*case, writer)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

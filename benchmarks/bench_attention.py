"""Decode attention with the tuning table's tile of each step against F.scaled_dot_product_attention (GPU only).

  python benchmarks/bench_attention.py --table tables/h200.json --output FILE.csv [--model llama-7b]

A model's attention (search_spaces/shapes.py PRESETS: its heads and head_dim; bf16, block size 16) at batch
1..256 x context 512..32768, every sequence `context` keys long, cut to the points of at most MAX_KV_TOKENS cached
tokens (search_spaces/attention.py): tuned buckets and points between them, which take the next bucket's tile
(tuning_table/attention.py). Three variants per point, each checked against SDPA first: "sdpa" on the KV gathered
into contiguous [B, KV heads, L, D] tensors (the gather is not timed: the bar of a dense, unpaged kernel), "default"
(the kernel's constants: 64-key tiles, 4 warps, 2 stages, splits from the shapes) and "tuned" (the table's tile and
splits for the point, as a decode step looks them up). Timed as CUDA-graph replays over enough copies to overflow
L2, median and spread (p90 - p10, a fraction of the median) of 30 replays. The last columns: the share of the copy
bandwidth (measured, read + write counted) that the KV read reaches, where it is at least 64 MB. Runs in about a
minute and a half on an H200.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import CsvWriter, copies_to_overflow_l2, gpu_name, measure_ceilings, require_cuda, time_us  # noqa: E402
from kernels.attention_decode import DEFAULT_TILE, paged_decode_attention_triton  # noqa: E402
from search_spaces.attention import BLOCK_SIZE, MAX_KV_TOKENS, attention_shapes  # noqa: E402
from tuning_table import load_table  # noqa: E402
from tuning_table.attention import AttentionTiles  # noqa: E402

BATCHES = (1, 2, 8, 32, 128, 256)
CONTEXTS = (512, 1024, 4096, 16384, 32768)
DTYPE = torch.bfloat16
# Where the KV read is at least this many bytes the share of the copy bandwidth is reported (smaller reads are
# latency-bound).
BANDWIDTH_MIN_BYTES = 64 * 2**20
COLUMNS = ["model", "batch", "context", "variant", "latency_us", "spread", "speedup_vs_sdpa", "kv_mb", "gbps",
           "pct_of_copy_bandwidth", "tile", "max_abs_err", "gpu"]


def make_inputs(batch: int, context: int, q_heads: int, kv_heads: int, head_dim: int) -> dict:
    """A paged cache in shuffled block order, and the same K/V gathered as [B, Hkv, L, D] for SDPA."""
    width = context // BLOCK_SIZE
    k_cache = torch.randn(batch * width, BLOCK_SIZE, kv_heads, head_dim, device="cuda", dtype=DTYPE)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(batch * width, device="cuda", dtype=torch.int32).view(batch, width)

    def dense(cache: torch.Tensor) -> torch.Tensor:
        return cache[tables.long()].view(batch, context, kv_heads, head_dim).transpose(1, 2).contiguous()

    # Scaled so that a few keys carry each softmax: a dropped key moves the output by its full size.
    q = 3 * torch.randn(batch, q_heads, head_dim, device="cuda", dtype=DTYPE)
    return {"q": q, "k_cache": k_cache, "v_cache": v_cache, "block_tables": tables,
            "seq_lens": torch.full((batch,), context, device="cuda", dtype=torch.int32),
            "k": dense(k_cache), "v": dense(v_cache)}


def sdpa(c: dict) -> torch.Tensor:
    q = c["q"][:, :, None]
    return F.scaled_dot_product_attention(q, c["k"], c["v"], scale=q.shape[-1] ** -0.5,
                                          enable_gqa=q.shape[1] != c["k"].shape[1])[:, :, 0]


def paged(c: dict, tile, num_splits: int | None) -> torch.Tensor:
    return paged_decode_attention_triton(c["q"], c["k_cache"], c["v_cache"], c["block_tables"], c["seq_lens"],
                                         c["q"].shape[-1] ** -0.5, num_splits=num_splits, tile=tile)


def run_point(model: str, shape, tiles: AttentionTiles, batch: int, context: int, copy_gbps: float,
              writer: CsvWriter) -> list[dict]:
    kv_bytes = 2 * batch * context * shape.kv_heads * shape.head_dim * DTYPE.itemsize
    copies = [make_inputs(batch, context, shape.q_heads, shape.kv_heads, shape.head_dim)
              for _ in range(copies_to_overflow_l2(2 * kv_bytes))]
    tuned_tile, tuned_splits = tiles.decode(batch, context)
    variants = {"sdpa": (sdpa, "-"), "default": (lambda c: paged(c, DEFAULT_TILE, None), "default"),
                "tuned": (lambda c: paged(c, tuned_tile, tuned_splits),
                          f"{tuned_tile.BLOCK_N}/w{tuned_tile.num_warps}/s{tuned_tile.num_stages}/x{tuned_splits}")}
    expected = sdpa(copies[0]).float()
    rows, sdpa_us = [], None
    for name, (fn, tile) in variants.items():
        err = (fn(copies[0]).float() - expected).abs().max().item()
        if err > 5e-2:
            sys.exit(f"bench_attention: {name} B={batch} L={context} differs from SDPA by {err:.3g}")
        us, spread = time_us([lambda c=c: fn(c) for c in copies], spread=True)
        sdpa_us = sdpa_us or us
        gbps = kv_bytes / us / 1e3
        row = {"model": model, "batch": batch, "context": context, "variant": name, "latency_us": round(us, 2),
               "spread": round(spread, 3), "speedup_vs_sdpa": round(sdpa_us / us, 3),
               "kv_mb": round(kv_bytes / 2**20, 1), "gbps": round(gbps, 1),
               "pct_of_copy_bandwidth": round(100 * gbps / copy_gbps, 1) if kv_bytes >= BANDWIDTH_MIN_BYTES else "",
               "tile": tile, "max_abs_err": f"{err:.2g}", "gpu": gpu_name()}
        writer.write(row)
        rows.append(row)
    del copies
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help="the lookup table with attention_decode entries")
    parser.add_argument("--output", required=True, help="CSV file to write")
    parser.add_argument("--model", default="llama-7b", help="a preset of search_spaces/shapes.py")
    args = parser.parse_args()
    require_cuda("bench_attention.py")
    torch.manual_seed(0)
    (shape,) = attention_shapes(args.model)
    tiles = AttentionTiles(load_table(args.table), shape.q_heads, shape.kv_heads, shape.head_dim, DTYPE)
    if not tiles.covered()["attention_decode"]:
        sys.exit(f"bench_attention: {args.table} has no attention_decode entry of {args.model} ({shape}); run "
                 f"`nvc tune --kernel attention_decode --shapes {args.model}` and export-table first")
    copy_gbps, _ = measure_ceilings()
    writer = CsvWriter(args.output, COLUMNS)
    rows = []
    for batch in BATCHES:
        for context in CONTEXTS:
            if batch * context <= MAX_KV_TOKENS:
                rows += run_point(args.model, shape, tiles, batch, context, copy_gbps, writer)
    print(f"{gpu_name()}, {args.model} {shape}: copy bandwidth {copy_gbps:.0f} GB/s; wrote {args.output}")
    print(f"{'B':>4} {'L':>6} {'KV MB':>8} {'sdpa us':>9} {'default':>9} {'tuned':>9} {'tuned/sdpa':>10} "
          f"{'% copy bw':>9}  tuned tile")
    for i in range(0, len(rows), 3):
        s, d, t = rows[i:i + 3]
        print(f"{s['batch']:>4} {s['context']:>6} {s['kv_mb']:>8} {s['latency_us']:>9} {d['latency_us']:>9} "
              f"{t['latency_us']:>9} {t['speedup_vs_sdpa']:>10} {t['pct_of_copy_bandwidth']!s:>9}  {t['tile']}")


if __name__ == "__main__":
    main()

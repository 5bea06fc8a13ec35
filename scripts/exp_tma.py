"""Experiment: does a Hopper TMA (tensor-descriptor) main loop, optionally persistent, close the gap to cuBLAS?

  python scripts/exp_tma.py [--m 1 16 64 256 1024 4096 16384] [--layers qkv gate_up]

Problem: out = (h @ W.T) * rstd[:, None], bf16 in/out, fp32 accumulation, W in nn.Linear layout [N, K].
Variants, each checked against an fp32 torch reference before it is timed:
  cublas          F.linear(h, W) alone (no rstd scale): the bar to beat
  ours            kernels.fused_rms_norm_linear, tuned-table and default configs; includes its row-stats prologue
  tma             one program per output tile; A, W tiles and the output through host-side TensorDescriptors
  tma_persistent  the same on min(#SMs, #tiles) programs looping over tiles (GROUP_M swizzle), tl.range(flatten=)
  ... " ws"       warp_specialize=True on the K loop (tma) or the tile loop (tma_persistent); see tma_modes
Rows go to $OUT/exp_tma.csv (else ./exp_tma.csv); a best-per-variant table is printed last.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

from benchmarks.common import CsvWriter, copies_to_overflow_l2, measure_ceilings, time_us  # noqa: E402
from kernels.config import Config, default_config  # noqa: E402
from kernels.rms_norm_linear import fused_rms_norm_linear  # noqa: E402

SHAPES = {"qkv": (4096, 12288), "gate_up": (4096, 22016)}  # llama-7b (K, N)
EPS = 1e-6
SMEM = 232448  # H100/H200 opt-in shared memory per block; configs over it are skipped, not compiled
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). BLOCK_N=256 only with 8 warps: a 128x256 fp32
# accumulator on 4 warps is 256 registers a thread and spills.
# The two BLOCK_M=64 ones are there for warp_specialize (see tma_modes).
LARGE = [(128, 128, 64, 4, 3), (128, 128, 64, 4, 4), (128, 128, 64, 8, 3), (128, 128, 64, 8, 4),
         (128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (64, 128, 64, 4, 4), (64, 128, 128, 4, 3)]
# Decode sizes: (BLOCK_N, BLOCK_K, num_warps, num_stages); BLOCK_M is 16 (M <= 16) or 64.
SMALL = [(64, 128, 4, 6), (64, 256, 4, 3), (64, 256, 4, 4), (128, 128, 4, 3), (128, 128, 4, 4), (128, 256, 4, 3)]


@triton.jit
def _tile(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    # Grouped order: GROUP_M row blocks in a row share each W tile while it is in L2 (same as our kernel).
    group = GROUP_M * num_pid_n
    first_m = (tile_id // group) * GROUP_M
    group_m = min(num_pid_m - first_m, GROUP_M)
    return first_m + (tile_id % group) % group_m, (tile_id % group) // group_m


@triton.jit
def _store_scaled(o_desc, acc, rstd_ptr, off_m, off_n, M,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUBTILE: tl.constexpr):
    offs_m = off_m + tl.arange(0, BLOCK_M)
    acc = acc * tl.load(rstd_ptr + offs_m, mask=offs_m < M, other=0.0)[:, None]
    if SUBTILE:  # store two half tiles: halves the shared-memory staging buffer of a 128x256 output tile
        acc0, acc1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        o_desc.store([off_m, off_n], acc0.to(o_desc.dtype))
        o_desc.store([off_m, off_n + BLOCK_N // 2], acc1.to(o_desc.dtype))
    else:
        o_desc.store([off_m, off_n], acc.to(o_desc.dtype))  # TMA clips rows/cols past M, N


# do_not_specialize M: otherwise M == 1 gets its own compile of every config.
@triton.jit(do_not_specialize=["M"])
def _tma_kernel(a_desc, w_desc, o_desc, rstd_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SUBTILE: tl.constexpr, WS: tl.constexpr):
    pid_m, pid_n = _tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    off_m, off_n = pid_m * BLOCK_M, pid_n * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in tl.range(tl.cdiv(K, BLOCK_K), warp_specialize=WS):
        a = a_desc.load([off_m, kb * BLOCK_K])  # rows past M come back as zeros (TMA padding)
        w = w_desc.load([off_n, kb * BLOCK_K])  # [BLOCK_N, BLOCK_K]: W's own layout, K contiguous
        acc = tl.dot(a, w.T, acc)
    _store_scaled(o_desc, acc, rstd_ptr, off_m, off_n, M, BLOCK_M, BLOCK_N, SUBTILE)


@triton.jit(do_not_specialize=["M"])
def _tma_persistent_kernel(a_desc, w_desc, o_desc, rstd_ptr, M, N, K, BLOCK_M: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                           SUBTILE: tl.constexpr, NUM_SMS: tl.constexpr, FLATTEN: tl.constexpr, WS: tl.constexpr):
    start = tl.program_id(0)
    num_pid_m, num_pid_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    # The epilogue recomputes its tile from a second counter, as Triton's tutorial 09 does: the
    # pipeliner mishandles one value used in both the loop prologue and the epilogue.
    tile_c = start - NUM_SMS
    for tile in tl.range(start, num_pid_m * num_pid_n, NUM_SMS, flatten=FLATTEN, warp_specialize=WS):
        pid_m, pid_n = _tile(tile, num_pid_m, num_pid_n, GROUP_M)
        off_m, off_n = pid_m * BLOCK_M, pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(k_tiles):
            a = a_desc.load([off_m, kb * BLOCK_K])
            w = w_desc.load([off_n, kb * BLOCK_K])
            acc = tl.dot(a, w.T, acc)
        tile_c += NUM_SMS
        pid_m, pid_n = _tile(tile_c, num_pid_m, num_pid_n, GROUP_M)
        _store_scaled(o_desc, acc, rstd_ptr, pid_m * BLOCK_M, pid_n * BLOCK_N, M, BLOCK_M, BLOCK_N, SUBTILE)


def tma_call(h, W, out, rstd, cfg, persistent=False, flatten=False, ws=False, num_sms=132):
    """A no-argument launcher; descriptors are built once here, so the timed call is the launch alone."""
    bm, bn, bk, warps, stages = cfg
    (M, K), N = h.shape, W.shape[0]
    sub = bn >= 256
    a_d = TensorDescriptor.from_tensor(h, [bm, bk])
    w_d = TensorDescriptor.from_tensor(W, [bn, bk])
    o_d = TensorDescriptor.from_tensor(out, [bm, bn // 2 if sub else bn])
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    common = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "SUBTILE": sub,
              "num_warps": warps, "num_stages": stages}
    if persistent:
        return lambda: _tma_persistent_kernel[(min(num_sms, tiles),)](
            a_d, w_d, o_d, rstd, M, N, K, NUM_SMS=num_sms, FLATTEN=flatten, WS=ws, **common)
    return lambda: _tma_kernel[(tiles,)](a_d, w_d, o_d, rstd, M, N, K, WS=ws, **common)


def tma_modes(c):
    """(variant, label suffix, (persistent, flatten, warp_specialize)) to try for one tile config.

    warp_specialize, from compiling for sm_90 with triton 3.6 offline: applied only at BLOCK_M=64 with 4
    warps (12 warps launched); BLOCK_M=128 with 4 warps crashes the pass, with 8 it is silently ignored,
    at BLOCK_M=16 it is ignored and the K loop loses its pipelining; flatten=True also ignores it.
    """
    modes = [("tma", "", (False, False, False)), ("tma_persistent", " flat", (True, True, False))]
    if c[1] == 256 or c[1:] in ((128, 64, 4, 4), (128, 128, 4, 4)):
        modes.append(("tma_persistent", " noflat", (True, False, False)))
    if c[0] == 64 and c[3] == 4:
        modes += [("tma", " ws", (False, False, True)), ("tma_persistent", " ws", (True, False, True))]
    return modes


def ours_configs(M, N, K, dev):
    cfgs = [default_config(M, N, K, dev)]
    try:  # the autotuned table the runtime would use, when it covers the shape
        from tuning_table import load_table
        b = load_table(Path(__file__).resolve().parents[1] / "tables" / "h200.json").bucket(
            "rms_norm_linear", K, N, torch.bfloat16, M)
        t = b.config if b is not None else None
        if t is not None and t not in cfgs:
            cfgs.insert(0, t)
    except Exception as e:  # noqa: BLE001
        print(f"  (no tuned table: {e})", flush=True)
    return cfgs


def cfg_str(c):
    if isinstance(c, Config):
        return f"{c.BLOCK_M}x{c.BLOCK_N}x{c.BLOCK_K} w{c.num_warps} s{c.num_stages} g{c.GROUP_M} sk{c.SPLIT_K}"
    return c if isinstance(c, str) else "x".join(map(str, c[:3])) + f" w{c[3]} s{c[4]}"


def tma_configs(M):
    cfgs = [(16 if M <= 16 else 64, *c) for c in SMALL] if M <= 64 else LARGE
    # Shared memory: the A and W pipeline stages plus the output staging tile of the TMA store.
    return [c for c in cfgs if c[4] * (c[0] + c[1]) * c[2] * 2 + c[0] * c[1] * (1 if c[1] >= 256 else 2) <= SMEM]


def candidates(M, N, K, dev, hs, Ws, rs, outs, num_sms):
    """(variant, config label, make(i) -> a no-argument call on input copy i, note)."""
    cands = [("cublas", "F.linear", lambda i: (lambda a=hs[i], w=Ws[i]: F.linear(a, w)), "GEMM only")]
    cands += [("ours", c, lambda i, c=c: (lambda a=hs[i], w=Ws[i]: fused_rms_norm_linear(a, w, eps=EPS, config=c)),
               "incl. row-stats prologue") for c in ours_configs(M, N, K, dev)]
    for c in tma_configs(M):
        cands += [(v, cfg_str(c) + sfx, lambda i, c=c, m=m: tma_call(hs[i], Ws[i], outs[i], rs[i], c, *m, num_sms), "")
                  for v, sfx, m in tma_modes(c)]
    return cands


def measure_case(ctx, layer, M):
    K, N = SHAPES[layer]
    dev, cub_us = ctx.dev, None
    n = copies_to_overflow_l2(2 * (M * K + N * K + M * N) + 4 * M)
    hs = [torch.randn(M, K, device=dev, dtype=torch.bfloat16) for _ in range(n)]
    Ws = [(torch.randn(N, K, device=dev) * 0.02).to(torch.bfloat16) for _ in range(n)]
    rs = [torch.rsqrt(x.float().pow(2).mean(-1) + EPS) for x in hs]
    outs = [torch.empty(M, N, device=dev, dtype=torch.bfloat16) for _ in range(n)]
    ref = (hs[0].float() @ Ws[0].float().T) * rs[0][:, None]
    ref_max = ref.abs().max().item()
    print(f"\n== {layer} K={K} N={N} M={M} ({n} input copies, {time.time() - ctx.t0:.0f}s elapsed)", flush=True)
    for variant, cfg, make, note in candidates(M, N, K, dev, hs, Ws, rs, outs, ctx.num_sms):
        row = {"layer": layer, "K": K, "N": N, "M": M, "variant": variant, "config": cfg_str(cfg), "note": note}
        key = (variant, cfg_str(cfg))
        if key in ctx.failed:  # a config that failed to compile once is not retried
            ctx.csv.write({**row, "status": "ERR", "note": ctx.failed[key]})
            continue
        try:
            outs[0].fill_(float("nan"))  # a kernel that writes nothing must not pass on stale results
            res = make(0)()
            torch.cuda.synchronize()
            if cfg_str(cfg).endswith(" ws") and hasattr(res, "asm"):
                # Whether the compiler really split the warps (it may ignore the flag on Hopper).
                applied = "ttg.warp_specialize" in res.asm.get("ttgir", "")
                row["note"] = note = "warp_specialize " + ("applied" if applied else "NOT applied")
            got = (outs[0] if variant.startswith("tma") else res).float()
            if variant == "cublas":
                got *= rs[0][:, None]
            err = (got - ref).abs().max().item() / ref_max if not got.isnan().any() else float("nan")
            del got
            if not err < 1e-2:
                print(f"  WRONG {variant:15s} {cfg_str(cfg):32s} rel_err {err:.3g}", flush=True)
                ctx.csv.write({**row, "status": "WRONG", "rel_err": f"{err:.3g}"})
                continue
            us = time_us([make(i) for i in range(n)], repeats=10 if M >= 4096 else 30)
        except Exception as e:  # noqa: BLE001 -- compile failures, out of resources, bad descriptors
            msg = (str(e).strip().splitlines() or [""])[-1][:160]
            ctx.failed[key] = f"{type(e).__name__}: {msg}"
            print(f"  ERR   {variant:15s} {cfg_str(cfg):32s} {ctx.failed[key]}", flush=True)
            ctx.csv.write({**row, "status": "ERR", "note": ctx.failed[key]})
            continue
        cub_us = us if variant == "cublas" else cub_us
        tflops = 2 * M * N * K / us / 1e6
        share = (M * K + N * K + M * N) * 2 / us / 1e3 / ctx.bw
        vs = cub_us / us if cub_us else float("nan")
        metric = f"{share:6.1%} of copy BW" if M <= 64 else f"{tflops:6.0f} TFLOP/s"
        print(f"  {variant:15s} {cfg_str(cfg):32s} {us:9.1f} us  {metric}  {vs:5.2f}x cuBLAS  {note}", flush=True)
        ctx.csv.write({**row, "status": "ok", "us": f"{us:.2f}", "rel_err": f"{err:.2g}", "tflops": f"{tflops:.1f}",
                       "bw_share": f"{share:.3f}", "vs_cublas": f"{vs:.3f}"})
        b = ctx.best.get((layer, M, variant))
        if b is None or us < b[0]:
            ctx.best[(layer, M, variant)] = (us, cfg_str(cfg), share, tflops)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--m", type=int, nargs="+", default=[1, 16, 64, 256, 1024, 4096, 16384])
    p.add_argument("--layers", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("exp_tma: needs a CUDA GPU (none detected); nothing was measured")
    dev = torch.device("cuda")
    cap = torch.cuda.get_device_capability()
    num_sms = torch.cuda.get_device_properties(dev).multi_processor_count
    print(f"{torch.cuda.get_device_name()} sm_{cap[0]}{cap[1]} {num_sms} SMs, torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)
    bw, peak = measure_ceilings()  # its 8192^3 matmul also lifts the clocks before anything is timed
    print(f"copy bandwidth {bw:.0f} GB/s, cuBLAS 8192^3 bf16 {peak:.0f} TFLOP/s", flush=True)
    out_path = os.path.join(os.environ.get("OUT", "."), "exp_tma.csv")
    csv = CsvWriter(out_path, ["layer", "K", "N", "M", "variant", "config", "status", "us", "rel_err",
                               "tflops", "bw_share", "vs_cublas", "note"])
    ctx = SimpleNamespace(dev=dev, bw=bw, num_sms=num_sms, csv=csv, failed={}, best={}, t0=time.time())
    for layer in args.layers:
        for M in args.m:
            measure_case(ctx, layer, M)
            torch.cuda.empty_cache()

    print(f"\nBest per variant ({time.time() - ctx.t0:.0f}s). x = cuBLAS time / variant time (>1: faster than "
          f"cuBLAS); M<=64: share of {bw:.0f} GB/s copy bandwidth (W+h+out bytes), else TFLOP/s. "
          "'ours' includes its prologue kernel; cublas has no rstd scale.")
    print(f"{'layer':8s} {'M':>6s} {'variant':15s} {'us':>9s} {'x':>6s} {'BW/TF':>6s}  config")
    for layer in args.layers:
        for M in args.m:
            cub = ctx.best.get((layer, M, "cublas"))
            for v in ("cublas", "ours", "tma", "tma_persistent"):
                b = ctx.best.get((layer, M, v))
                if b is None:
                    print(f"{layer:8s} {M:6d} {v:15s} {'ERR/none':>9s}")
                    continue
                metric = f"{b[2]:.0%}" if M <= 64 else f"{b[3]:.0f}T"
                x = f"{cub[0] / b[0]:.2f}x" if cub else "?"
                print(f"{layer:8s} {M:6d} {v:15s} {b[0]:9.1f} {x:>6s} {metric:>6s}  {b[1]}")
    print(f"rows: {out_path}")


if __name__ == "__main__":
    main()

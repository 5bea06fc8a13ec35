"""Experiment: do the GEMV-like row tiles, one-warp programs and the eviction hint reach the weight-read floor at
decode sizes, on llama-7b's sites in the forms the runtime runs them?

  python scripts/exp_gemv_tiles.py [--m 1 2 4 8 16 256] [--sites qkv gate_up o_proj down_proj]

Sites (bf16, H200-sized): QKV (K 4096, N 12288) with the rotary embedding and KV-cache write, gate/up (K 4096,
N 22016) with SiLU-and-mul, both through the fused RMSNorm+Linear space; o_proj (4096 -> 4096) and down_proj
(11008 -> 4096) through the plain linear space. Per site and M, each through the tuner's own Evaluator (random
inputs, checked against the baseline, then timed by autotune/timer.py's CudaEventTimer: CUDA-graph replays over
rotating input copies beyond L2):
  baseline  the search space's launcher(None): the runtime's separate path (add+RMSNorm kernel, cuBLAS, the
            separate rotary or SiLU kernel) or F.linear
  table     the shipped tables/h200.json config of that bucket
  grid      GEMV tiles (BLOCK_M = the padded M, at most 8) x column tiles x BLOCK_K x warps x stages x EVICT, and
            16-row tl.dot tiles on one or two warps (M <= 16 only; 256 is timed for information)
All candidates compile first in a process pool (autotune/compile_pool.py). Everything is timed twice, the second
round in reverse order; a row's figure is the median of both rounds' samples, the spread their interquartile range.
Rows go to $OUT/exp_gemv_tiles.csv (else ./exp_gemv_tiles.csv); a table with % of copy bandwidth is printed last.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from autotune.compile_pool import CompilePool  # noqa: E402
from autotune.objective import Evaluator  # noqa: E402
from autotune.timer import CudaEventTimer, Timing  # noqa: E402
from benchmarks.common import CsvWriter, copy_bandwidth_gbps  # noqa: E402
from kernels.config import Config, device_smem_limit  # noqa: E402
from kernels.epilogue import GATED, PLAIN, rotary  # noqa: E402
from search_spaces import Problem, get_space  # noqa: E402
from tuning_table import load_table  # noqa: E402

# name: (kernel, K, N, epilogue) of llama-7b
SITES = {"qkv": ("rms_norm_linear", 4096, 12288, rotary(128, 32)), "gate_up": ("rms_norm_linear", 4096, 22016, GATED),
         "o_proj": ("linear", 4096, 4096, PLAIN), "down_proj": ("linear", 11008, 4096, PLAIN)}
TABLE = Path(__file__).resolve().parents[1] / "tables" / "h200.json"
REPEATS = 15
# A GEMV tile's weight elements a thread (search_spaces/rms_norm_linear.py's register bound).
W_PER_THREAD = 128


def grid(problem: Problem) -> list[Config]:
    """The new region of the space around Helion's M = 1 winner, for a decode-sized problem."""
    if problem.M > 16:
        return []
    bm = min(1 << (problem.M - 1).bit_length(), 8)
    narrow = {"gated": 32, "rotary": 64}.get(problem.epilogue.kind, 16)  # the narrowest that runs the form
    configs = []
    for bn in (narrow, 2 * narrow):
        w = max(1, bn * 128 // (32 * W_PER_THREAD))
        configs += [Config(bm, bn, 128, w, 6, 1), Config(bm, bn, 128, w, 1, 1, EVICT=1), Config(bm, bn, 128, w, 4, 1),
                    Config(bm, bn, 256, 2 * w, 4, 1), Config(bm, bn, 256, 2 * w, 1, 1, EVICT=1)]
    configs += [Config(16, narrow, 128, 1, 6, 1), Config(16, 2 * narrow, 256, 2, 4, 1)]
    return configs


def label(c: Config) -> str:
    return (f"{c.BLOCK_M}x{c.BLOCK_N}x{c.BLOCK_K} w{c.num_warps} s{c.num_stages} sk{c.SPLIT_K} "
            f"ssq{c.SUMSQ_IN_LOOP} tma{c.TMA} ev{c.EVICT}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 8, 16, 256])
    p.add_argument("--sites", nargs="+", choices=sorted(SITES), default=list(SITES))
    args = p.parse_args()
    if any(m < 1 for m in args.m):
        sys.exit(f"--m: expected positive row counts, got {args.m}")
    if not torch.cuda.is_available():
        sys.exit("exp_gemv_tiles: needs a CUDA GPU (none detected); nothing was measured")
    t0 = time.time()
    dev = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(dev)
    bw = copy_bandwidth_gbps()
    print(f"{torch.cuda.get_device_name()} {props.multi_processor_count} SMs, copy bandwidth {bw:.0f} GB/s", flush=True)
    table, smem = load_table(TABLE), device_smem_limit(dev)
    cases = []  # (site, problem, space, [(variant, config)])
    for site in args.sites:
        kernel, K, N, epilogue = SITES[site]
        for M in args.m:
            problem = Problem(M, K, N, "bfloat16", epilogue)
            bucket = table.bucket(kernel, K, N, torch.bfloat16, M)
            cands = [("table", bucket.config)] if bucket is not None else []
            cands += [("grid", c) for c in grid(problem) if c not in dict(cands).values()]
            space = get_space(kernel)
            # What the space refuses before compiling (shared memory, registers) is left out, as the tuner does.
            cands = [(v, c) for v, c in cands if v == "table" or space.violation(c, problem, smem) is None]
            cases.append((site, problem, space, cands))
    # Compile everything ahead, in parallel: the timing loop then only loads binaries.
    with CompilePool(max(1, min(16, (os.cpu_count() or 2) - 2)), dev) as pool:
        futures = {(site, p.M, c): pool.submit(space.name, p, c) for site, p, space, cands in cases for _, c in cands}
        errors = {key: f.result() for key, f in futures.items()}
    print(f"compiled {len(futures)} candidates ({sum(e is not None for e in errors.values())} failed) "
          f"in {time.time() - t0:.0f}s", flush=True)
    out_path = os.path.join(os.environ.get("OUT", "."), "exp_gemv_tiles.csv")
    csv = CsvWriter(out_path, ["site", "K", "N", "epilogue", "M", "variant", "config", "status", "us", "spread_us",
                               "bw_share", "floor_us", "vs_baseline", "note"])
    summary = []
    timer = CudaEventTimer()
    for site, problem, space, cands in cases:
        ev = Evaluator(space, problem, dev, timer, l2_bytes=props.L2_cache_size)
        floor = problem.N * problem.K * problem.elem_bytes / bw / 1e3  # the weight read alone, us
        samples: dict[tuple[str, Config | None], list[float]] = {}
        runnable = [("baseline", None)]
        for variant, c in cands:
            error = errors[(site, problem.M, c)] or ev.check(c)
            if error is None:
                runnable.append((variant, c))
            else:
                csv.write(dict(site=site, K=problem.K, N=problem.N, epilogue=str(problem.epilogue), M=problem.M,
                               variant=variant, config=label(c), status="ERR", note=error[:200]))
        for order in (runnable, runnable[::-1]):  # alternating order: drift and clocks hit both ends alike
            for variant, c in order:
                samples.setdefault((variant, c), []).extend(timer.measure(ev.workload(c), REPEATS).samples_us)
        base = Timing.from_samples(samples[("baseline", None)])
        best: dict[str, tuple[float, str]] = {}
        for (variant, c), s in samples.items():
            t = Timing.from_samples(s)
            share = space.footprint_bytes(problem) / t.median_us / 1e3 / bw
            csv.write(dict(site=site, K=problem.K, N=problem.N, epilogue=str(problem.epilogue), M=problem.M,
                           variant=variant, config=label(c) if c else "separate path", status="ok",
                           us=f"{t.median_us:.2f}", spread_us=f"{t.spread_us:.2f}", bw_share=f"{share:.3f}",
                           floor_us=f"{floor:.2f}", vs_baseline=f"{base.median_us / t.median_us:.3f}"))
            if variant not in best or t.median_us < best[variant][0]:
                best[variant] = (t.median_us, label(c) if c else "", t.spread_us, share)
        summary.append((site, problem, floor, best))
        print(f"{site:9s} M={problem.M:<4d} " + "  ".join(f"{v} {b[0]:.1f}" for v, b in best.items())
              + f"  ({time.time() - t0:.0f}s)", flush=True)

    print(f"\nBest per variant ({time.time() - t0:.0f}s). us: median (IQR) of both rounds; BW: footprint bytes over "
          f"{bw:.0f} GB/s copy bandwidth; floor: the weight read alone; x: baseline time / this time.")
    print(f"{'site':9s} {'M':>4s} {'variant':8s} {'us':>7s} {'IQR':>5s} {'BW':>5s} {'floor':>6s} {'x':>6s}  config")
    for site, problem, floor, best in summary:
        base_us = best["baseline"][0]
        for variant in ("baseline", "table", "grid"):
            if variant in best:
                us, cfg, spread, share = best[variant]
                print(f"{site:9s} {problem.M:4d} {variant:8s} {us:7.1f} {spread:5.1f} {share:5.0%} {floor:6.1f} "
                      f"{base_us / us:5.2f}x  {cfg}")
    print(f"rows: {out_path}")


if __name__ == "__main__":
    main()

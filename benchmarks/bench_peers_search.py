"""Peers on one op and one card (issue 16, item 5; GPU only): the fused RMSNorm+Linear of llama-7b's QKV and gate/up
sites, bf16, in the plain form (y = rmsnorm(x + r) @ W.T and the new residual h = x + r; the norm's gain folded into
W, so no peer reads a gain), each peer with its stated tuning budget, all checked against the same reference
(the runtime's separate path on the same first input set) before they are timed the same way: CUDA-graph replays
over rotating input sets that stream more than L2 (autotune/timer.py CudaEventTimer, the tuner's own timer).

Peers (--peers):
- table: the shipped table's config (tables/<gpu>.json, through tuning_table; QKV and gate/up were tuned there in
  their rotary and gated forms and run here in the plain one); default: kernels.config.default_config, what a GPU
  without a table runs.
- nvc_tune: a fresh `cli.py tune` of just these buckets (plain form) into a temporary SQLite database with
  `--budget` = --budget-s x studies, exported and looked up like the table; tune_s is the run's wall time
  (command start to exit, compile pool and all) divided by its studies.
- baseline: what the runtime falls back to (search space launcher(None)): its add+RMSNorm Triton kernel, cuBLAS.
- eager: F.rms_norm(x + r) then F.linear.
- triton_autotune: @triton.autotune over our kernel (kernels/gemm.py) and --triton-configs configs sampled (seed 0)
  from our space's feasible grid of one-launch pointer configs (SUMSQ_IN_LOOP=1, SPLIT_K=1, TMA=0: the autotuner
  picks among launches of one kernel); tune_s is its first call (compiles and Triton's do_bench of each config).
- torch_compile: torch.compile(mode="max-autotune-no-cudagraphs", dynamic=False) of the eager op, freshly per
  shape; tune_s is its first call.
- helion: benchmarks/helion_rms_norm_linear.py autotuned per shape with autotune_budget_seconds = --budget-s and
  its default effort (full), never from a cache; tune_s is the autotune call. Skipped with one line when
  helion is not importable.

Wheels it needs on the GPU image (in .whl/, besides the project's optuna, sqlalchemy, alembic, plotly and their
needs): helion-1.4.0-py3-none-any.whl (1.5.1 needs a newer torch than 2.11) and filecheck-1.0.6-py3-none-any.whl;
helion's other needs (numpy, psutil, rich, scikit-learn) are in the image.

Run time on one H200 with the defaults (2 sites x 4 M, --budget-s 15, 8 triton configs): nvc_tune <= 2.5 min,
helion <= 2.5 min, torch_compile and triton_autotune about 1-2 min each, the timing under a minute: about 7-9
minutes in all, printed at the end. Helion at the issue's 90 s a shape fits per site:
`--peers helion,table,eager --sites qkv --budget-s 90 --out DIR` (about 7 minutes).

    python benchmarks/bench_peers_search.py [--peers table,helion] [--sites qkv] [--m 1,16] [--out DIR]

-> <out>/peers_search.csv (out: --out, else $OUT, else benchmarks/bench_results/), a short table printed last.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autotune.device import detect_gpu  # noqa: E402
from autotune.objective import TOLERANCES, Evaluator, short_error  # noqa: E402
from autotune.timer import CudaEventTimer, Workload  # noqa: E402
from kernels.config import Config, default_config, device_smem_limit  # noqa: E402
from kernels.gemm import _gemm_kernel  # noqa: E402 - the kernel our configs run, for Triton's own autotuner
from kernels.rms_norm_linear import fused_rms_norm_linear  # noqa: E402
from search_spaces import Problem, get_space  # noqa: E402
from search_spaces.epilogues import EPS  # noqa: E402
from search_spaces.shapes import parse_shapes  # noqa: E402
from tuning_table import load_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("table", "nvc_tune", "default", "baseline", "eager", "triton_autotune", "torch_compile", "helion")
SITES = {s.name: s for s in parse_shapes("llama-7b")}
SPACE = get_space("rms_norm_linear")
CSV_NAME = "peers_search.csv"
COLUMNS = ["peer", "site", "K", "N", "M", "latency_us", "iqr_us", "speedup_vs_baseline", "tune_s", "budget",
           "correct", "max_abs_error", "pick", "gpu", "driver", "torch", "triton", "helion"]
PROG = "bench_peers_search.py"


@dataclass
class Peer:
    """A peer made ready for one shape: `run(inputs)` -> (y, h) on one input set of the Evaluator."""
    run: Callable[[tuple], tuple[torch.Tensor, torch.Tensor]]
    tune_s: float | None
    budget: str
    pick: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments; a bad value exits with one line naming the argument."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of: " + ", ".join(PEERS))
    ap.add_argument("--sites", default="qkv,gate_up", help="llama-7b sites: " + ", ".join(SITES))
    ap.add_argument("--m", default="1,16,256,4096", help="rows, comma-separated")
    ap.add_argument("--budget-s", type=float, default=15.0,
                    help="tuning seconds a shape for nvc_tune (its --budget is this times the studies) and helion")
    ap.add_argument("--triton-configs", type=int, default=8, help="configs @triton.autotune chooses among")
    ap.add_argument("--repeats", type=int, default=20, help="timed graph replays per measurement")
    ap.add_argument("--table", default=None, help="the shipped table [default: tables/<gpu>.json]")
    ap.add_argument("--out", default=None, help="output folder [default: $OUT, else benchmarks/bench_results]")
    args = ap.parse_args(argv)

    def fail(msg: str):
        sys.exit(f"{PROG}: {msg}")

    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in args.peers if p not in PEERS]
    if bad or not args.peers:
        fail(f"--peers {','.join(bad) or '(empty)'}: expected some of {', '.join(PEERS)}")
    args.sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    bad = [s for s in args.sites if s not in SITES]
    if bad or not args.sites:
        fail(f"--sites {','.join(bad) or '(empty)'}: expected some of {', '.join(SITES)}")
    try:
        args.m = [int(v) for v in args.m.split(",")]
    except ValueError:
        fail(f"--m {args.m}: expected comma-separated positive integers")
    if not args.m or min(args.m) < 1:
        fail(f"--m {','.join(map(str, args.m))}: expected comma-separated positive integers")
    if not 0 < args.budget_s < 3600:
        fail(f"--budget-s {args.budget_s:g}: expected seconds in (0, 3600)")
    if args.triton_configs < 1:
        fail(f"--triton-configs {args.triton_configs}: expected >= 1")
    if args.repeats < 3:
        fail(f"--repeats {args.repeats}: expected >= 3 (the IQR needs samples)")
    if args.table is not None and not Path(args.table).is_file():
        fail(f"--table {args.table}: no such file")
    args.out = Path(args.out or os.environ.get("OUT") or ROOT / "benchmarks" / "bench_results")
    return args


def triton_configs(problem: Problem, smem_limit: int | None, n: int) -> list[Config]:
    """`n` configs (seed 0) of our space's feasible grid that launch one kernel: the sum of squares in the K loop,
    no split-K reduce, pointer loads."""
    one_launch = [c for c in SPACE.feasible(problem, smem_limit)
                  if c.SUMSQ_IN_LOOP == 1 and c.SPLIT_K == 1 and c.TMA == 0]
    return random.Random(0).sample(one_launch, min(n, len(one_launch)))


def triton_autotuned(configs: list[Config], K: int) -> Callable[[tuple], tuple[torch.Tensor, torch.Tensor]]:
    """Our kernel under @triton.autotune over `configs` for rows of K (keyed by M, N, K), launched as kernels/gemm.py
    launches a plain one-launch config: x and the residual read in the K loop, h written by the first column tile."""
    kernel = triton.autotune([triton.Config(dict(BLOCK_M=c.BLOCK_M, BLOCK_N=c.BLOCK_N, BLOCK_K=c.BLOCK_K,
                                                 GROUP_M=c.GROUP_M, EVICT=c.EVICT, GEMV_STAGES=c.num_stages,
                                                 EVEN_K=K % c.BLOCK_K == 0),
                                            num_warps=c.num_warps, num_stages=c.num_stages) for c in configs],
                             key=["M", "N", "K"])(_gemm_kernel)

    def run(inputs: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        x, w, r = inputs[:3]
        M, K = x.shape
        N = w.shape[0]
        y = torch.empty(M, N, device=x.device, dtype=x.dtype)
        h = torch.empty_like(x)

        def grid(meta: dict) -> tuple[int, int]:
            return triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), 1
        kernel[grid](x, r, w, x, x, y, h, y, y, x, x, x, x, x, M, N, K, EPS,
                     x.stride(0), x.stride(1), r.stride(0), r.stride(1), w.stride(0), w.stride(1),
                     y.stride(0), h.stride(0), 0, 0, 0,
                     HAS_NORM=True, HAS_RESIDUAL=True, HAS_NORM_WEIGHT=False, HAS_BIAS=False,
                     IEEE=x.dtype == torch.float32, SUMSQ_IN_LOOP=True,
                     WIDE=False, SPLIT_K=1, GATED=False, ROTARY=False, HALF=1, NUM_Q_HEADS=0, NUM_KV_HEADS=0,
                     SS_PARTS=1, USE_PDL=False)
        return y, h
    run.kernel = kernel
    return run


def eager_op(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = x + r
    return F.linear(F.rms_norm(h, (h.shape[-1],), eps=EPS), w), h


def eager(inputs: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    return eager_op(*inputs[:3])


def baseline(inputs: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    from kernels import ops
    x, w, r, gain = inputs[:4]
    y, h = ops.rms_norm(x, gain, EPS, r)
    return F.linear(y, w), h


def fused(config: Config) -> Callable[[tuple], tuple[torch.Tensor, torch.Tensor]]:
    def run(inputs: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        x, w, r = inputs[:3]
        return fused_rms_norm_linear(x, w, residual=r, config=config)
    return run


def describe(config: Config) -> str:
    return " ".join(f"{k}={v}" for k, v in config.to_dict().items())


def max_error(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor], dtype: str
              ) -> tuple[bool, float]:
    """(within the tuner's tolerance, max abs error) of y and h against the reference's."""
    atol, rtol = TOLERANCES[dtype]
    ok, worst = True, 0.0
    for g, w in zip(got, want):
        diff = (g.float() - w.float()).abs()
        ok = ok and bool(torch.isfinite(g).all()) and not bool((diff > atol + rtol * w.float().abs()).any())
        worst = max(worst, float(diff.nan_to_num(float("inf")).max()))
    return ok, worst


def nvc_tune(sites: list[str], ms: list[int], gpu: str, budget_s: float, workdir: Path
             ) -> tuple[Any, float | None, str]:
    """A fresh tune of the plain-form buckets through the CLI, as a user runs it: (table, wall s per study, note);
    (None, None, why) when the tune or its export failed."""
    shapes = ",".join(f"{SITES[s].N}x{SITES[s].K}" for s in sites)
    studies = len(sites) * len(ms)
    storage = f"sqlite:///{workdir / 'tune.db'}"
    tune = [sys.executable, "cli.py", "tune", "--gpu", gpu, "--shapes", shapes, "--kernel", "rms_norm_linear",
            "--m", ",".join(map(str, ms)), "--storage", storage, "--budget", f"{budget_s * studies:g}"]
    print(" ".join(tune[1:]), flush=True)
    t0 = time.perf_counter()
    table_path = workdir / "table.json"
    export = [sys.executable, "cli.py", "export-table", "--gpu", gpu, "--storage", storage, "--out", str(table_path)]
    try:
        subprocess.run(tune, cwd=ROOT, check=True)
        wall = time.perf_counter() - t0
        subprocess.run(export, cwd=ROOT, check=True)
    except subprocess.CalledProcessError as e:  # reported in its rows; the other peers still run
        return None, None, f"failed: `{' '.join(e.cmd[1:3])}` exited {e.returncode}"
    return load_table(table_path), wall / studies, f"tune of {studies} studies in {wall:.0f} s"


def load_helion(budget_s: float) -> tuple[Any, str]:
    """(Helion's kernel or None, its version or why it is skipped)."""
    try:
        from importlib.metadata import version
        from benchmarks.helion_rms_norm_linear import helion_kernel
    except ImportError as e:
        return None, f"skipped: {e} (carry helion==1.4.0 and filecheck as wheels, see the docstring)"
    return helion_kernel(int(round(budget_s))), version("helion")


def make_peer(name: str, problem: Problem, ev: Evaluator, args, ctx: dict) -> Peer | str:
    """The peer ready for this shape (tuned, compiled), or why it has nothing to run."""
    M, K, N = problem.M, problem.K, problem.N
    if name in ("table", "nvc_tune"):
        table = ctx.get(name)
        bucket = table.bucket("rms_norm_linear", K, N, problem.dtype, M) if table is not None else None
        note = ctx.get("nvc_note", "") if name == "nvc_tune" else ctx["table_path"]
        if bucket is None:
            return f"no {name} bucket for {N}x{K} ({note})"
        return Peer(fused(bucket.config), ctx.get("nvc_tune_s") if name == "nvc_tune" else None,
                    f"{args.budget_s:g} s a shape" if name == "nvc_tune" else "shipped",
                    f"{describe(bucket.config)} (bucket M={bucket.M}; {note})")
    if name == "default":
        config = default_config(M, N, K, ev.device)
        return Peer(fused(config), None, "none", describe(config))
    if name == "baseline":
        return Peer(baseline, None, "none", "ops.rms_norm (add+RMSNorm Triton kernel) + F.linear (cuBLAS)")
    if name == "eager":
        return Peer(eager, None, "none", "x + r, F.rms_norm, F.linear")
    first = ev.inputs[0]
    if name == "triton_autotune":
        configs = triton_configs(problem, device_smem_limit(ev.device), args.triton_configs)
        run = triton_autotuned(configs, K)
        t0 = time.perf_counter()
        run(first)
        torch.cuda.synchronize()
        tune_s = time.perf_counter() - t0
        pick = run.kernel.best_config
        return Peer(run, tune_s, f"{len(configs)} configs", str(pick))
    if name == "torch_compile":
        torch._dynamo.reset()  # a fresh compile per shape, never a silent fallback after too many recompiles
        compiled = torch.compile(eager_op, mode="max-autotune-no-cudagraphs", dynamic=False)
        t0 = time.perf_counter()
        compiled(*first[:3])
        torch.cuda.synchronize()
        return Peer(lambda inputs: compiled(*inputs[:3]), time.perf_counter() - t0, "max-autotune-no-cudagraphs",
                    "eager op, gain folded")
    if name == "helion":
        kernel = ctx["helion"]
        x, w, r = first[:3]
        bound = kernel.bind((x, r, w, EPS))
        t0 = time.perf_counter()
        config = bound.autotune((x, r, w, EPS))
        torch.cuda.synchronize()
        tune_s = time.perf_counter() - t0
        return Peer(lambda inputs: bound(inputs[0], inputs[2], inputs[1], EPS), tune_s,
                    f"{args.budget_s:g} s, effort full", " ".join(str(config).split()))
    raise ValueError(f"peer {name!r}")


def measure(name: str, site: str, problem: Problem, ev: Evaluator, timer: CudaEventTimer, args, ctx: dict,
            base_us: float) -> dict:
    """The peer's row for this shape; a peer that fails (to tune, compile, run or be timed) is a row with its
    reason as the pick, and the other peers still run."""
    row = dict(peer=name, site=site, K=problem.K, N=problem.N, M=problem.M, **ctx["env"], correct=False)
    try:
        peer = make_peer(name, problem, ev, args, ctx)
        if isinstance(peer, str):
            return {**row, "pick": peer}
        row.update(tune_s=peer.tune_s, budget=peer.budget, pick=peer.pick)
        want = (ev.expected, ev.inputs[0][0] + ev.inputs[0][2])
        correct, error = max_error(peer.run(ev.inputs[0]), want, problem.dtype)
        row.update(correct=correct, max_abs_error=error)
        if correct:  # a wrong peer is reported, never timed
            t = timer.measure(Workload(problem, None, lambda i: peer.run(ev.inputs[i]), ev.n_buffers), args.repeats)
            row.update(latency_us=t.median_us, iqr_us=t.spread_us, speedup_vs_baseline=base_us / t.median_us)
    except Exception as e:  # noqa: BLE001 - one peer's failure is a result of this benchmark
        row.update(correct=False, pick=f"{row.get('pick', '')} failed: {short_error(e)}".strip())
    return row


def write_csv(rows: list[dict], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / CSV_NAME
    pd.DataFrame(rows).reindex(columns=COLUMNS).to_csv(path, index=False)
    return path


def summary(rows: list[dict]) -> str:
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    lat = df.pivot_table(index=["site", "M"], columns="peer", values="latency_us", sort=False).round(1)
    tune = df.groupby("peer", sort=False)["tune_s"].sum(min_count=1).round(1)
    return f"latency_us (median of {len(df)} rows' graph replays):\n{lat.to_string()}\ntune_s, all shapes:\n" + \
        tune.dropna().to_string()


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    if not torch.cuda.is_available():
        sys.exit(f"{PROG}: needs a CUDA GPU (none detected); nothing was measured")
    gpu = detect_gpu()
    device = torch.device("cuda")
    args.table = args.table or str(ROOT / "tables" / f"{gpu.short_name}.json")
    helion, helion_version = load_helion(args.budget_s) if "helion" in args.peers else (None, "not run")
    if "helion" in args.peers and helion is None:
        print(f"helion: {helion_version}", flush=True)
        args.peers.remove("helion")
    env = dict(gpu=gpu.name, driver=gpu.driver, torch=gpu.torch, triton=gpu.triton,
               helion=helion_version if helion is not None else "")
    shapes = len(args.sites) * len(args.m)
    print(f"{gpu.name}, driver {gpu.driver}, torch {gpu.torch}, triton {gpu.triton}; peers {','.join(args.peers)}; "
          f"sites {','.join(args.sites)}; M {','.join(map(str, args.m))}; budgets: nvc_tune --budget "
          f"{args.budget_s * shapes:g} s ({args.budget_s:g} a shape), helion {args.budget_s:g} s a shape, "
          f"triton_autotune {args.triton_configs} configs a shape, torch_compile unbounded", flush=True)
    ctx: dict = dict(env=env, helion=helion, table_path=args.table)
    ctx["table"] = load_table(args.table) if Path(args.table).is_file() else None
    with tempfile.TemporaryDirectory() as workdir:
        if "nvc_tune" in args.peers:  # first, while this process holds no GPU memory
            ctx["nvc_tune"], ctx["nvc_tune_s"], ctx["nvc_note"] = nvc_tune(args.sites, args.m, gpu.short_name,
                                                                            args.budget_s, Path(workdir))
        timer = CudaEventTimer()
        rows = []
        for site in args.sites:
            for M in args.m:
                problem = Problem(M, SITES[site].K, SITES[site].N, "bfloat16")
                ev = Evaluator(SPACE, problem, device, timer, gpu.l2_bytes)
                base_us = ev.time_baseline(args.repeats).median_us
                for name in args.peers:
                    t0 = time.perf_counter()
                    rows.append(measure(name, site, problem, ev, timer, args, ctx, base_us))
                    write_csv(rows, args.out)  # a run cut short by its time limit keeps what it measured
                    r = rows[-1]
                    print(f"  {site} M={M} {name}: {r.get('latency_us', float('nan')):.1f} us, correct "
                          f"{r['correct']} ({r.get('max_abs_error', float('nan')):.2g}), tune_s "
                          f"{r.get('tune_s') or 0:.1f}, {time.perf_counter() - t0:.0f} s", flush=True)
                del ev
                torch.cuda.empty_cache()
    path = write_csv(rows, args.out)
    print(summary(rows))
    print(f"CSV: {path} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()

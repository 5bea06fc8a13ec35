"""Search quality and tuned speed on one GPU, for issue 3's targets (GPU only).

Part 1, search: for each --grid shape the whole feasible grid is compiled and timed. tpe and random
are then replayed against the grid's measurements (Kernel Tuner's "simulation mode": the sampler
proposes, the grid's timing answers; correctness is still checked on the GPU), --seeds times each,
with a budget of --budget-frac of the grid. The three best-so-far curves differ only by the sampler,
not by timing noise. -> bench_results/search_curves.csv

Part 2, speed: for each --compare shape and M, the tuned config (from --table, e.g. what
`cli.py export-table` wrote), kernels.config.default_config, the baseline (F.rms_norm + F.linear) and
torch.compile(mode="max-autotune-no-cudagraphs") of the baseline, all timed here with the tuner's
CUDA-event timer (rotating buffers past L2, CUDA-graph replay), next to the copy bandwidth of this
card. -> bench_results/compare.csv. The summary also reports the table's own re-timed speedups.

    python benchmarks/bench_search.py --table tables/h100.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autotune.compile_pool import CompilePool  # noqa: E402
from autotune.device import detect_gpu  # noqa: E402
from autotune.objective import Evaluator  # noqa: E402
from tuning_table import load_table  # noqa: E402
from autotune.timer import CudaEventTimer, Timing, Workload  # noqa: E402
from autotune.tuner import Tuner, TuneSettings  # noqa: E402
from benchmarks.common import copy_bandwidth_gbps  # noqa: E402
from db.storage import Recorder, open_engine  # noqa: E402
from kernels.config import Config, default_config  # noqa: E402
from kernels.reference import baseline_rms_norm_linear  # noqa: E402
from search_spaces import Problem, get_space  # noqa: E402
from search_spaces.shapes import parse_shapes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "bench_results"
SPACE = get_space("rms_norm_linear")


class ReplayTimer:
    """Times nothing: answers with the grid's measurement of the config (None is the baseline)."""

    def __init__(self, measured: dict[Config | None, float]):
        self.measured = measured

    def measure(self, workload: Workload, repeats: int) -> Timing:
        us = self.measured[workload.config]
        return Timing(us, 0.0, (us,))


def curve(study: optuna.Study) -> list[float]:
    """Best-so-far latency after each counted (complete or failed) trial, in trial order."""
    best, out = math.inf, []
    for t in sorted(study.trials, key=lambda t: t.number):
        if t.state == optuna.trial.TrialState.COMPLETE:
            best = min(best, t.value)
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL):
            out.append(best)
    return out


def tuner(gpu, device, timer, pool, settings) -> Tuner:
    storage = optuna.storages.InMemoryStorage()
    return Tuner(SPACE, storage, Recorder(open_engine("sqlite://")), gpu, device, timer, pool, settings)


def search_part(problem: Problem, gpu, args, device: torch.device, timer) -> tuple[list[dict], dict]:
    t0 = time.perf_counter()
    grid_settings = TuneSettings(sampler="grid", trials=10**6, repeats=args.repeats, retime_top=1, retime_rounds=1,
                                 prefetch=max(8, 2 * args.compile_processes))
    with CompilePool(args.compile_processes, device) as pool:
        grid_tuner = tuner(gpu, device, timer, pool, grid_settings)
        outcome = grid_tuner.tune(problem)
    study = optuna.load_study(study_name=outcome.study_name, storage=grid_tuner.storage)
    grid_s = time.perf_counter() - t0
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    measured: dict[Config | None, float] = {Config.from_dict(t.params): t.value for t in complete}
    measured[None] = outcome.baseline_us
    grid_curve = curve(study)
    rows = [dict(shape=f"{problem.N}x{problem.K}", M=problem.M, sampler="grid", seed=0, trial=i + 1, best_us=b)
            for i, b in enumerate(grid_curve)]
    optimum = min(measured[c] for c in measured if c is not None)
    budget = max(1, math.ceil(args.budget_frac * len(grid_curve)))
    summary = dict(shape=f"{problem.N}x{problem.K}", M=problem.M, grid_trials=len(grid_curve), grid_s=round(grid_s, 1),
                   grid_optimum_us=optimum, budget=budget)
    for sampler in ("tpe", "random"):
        finals = []
        for seed in range(args.seeds):
            settings = TuneSettings(sampler=sampler, trials=budget, seed=seed, repeats=1, retime_top=1, retime_rounds=1)
            replay = tuner(gpu, device, ReplayTimer(measured), CompilePool(0, device), settings)
            c = curve(optuna.load_study(study_name=replay.tune(problem).study_name, storage=replay.storage))
            rows += [dict(shape=f"{problem.N}x{problem.K}", M=problem.M, sampler=sampler, seed=seed, trial=i + 1,
                          best_us=b) for i, b in enumerate(c)]
            finals.append(c[-1] / optimum - 1)
        summary[f"{sampler}_gap_median_pct"] = round(100 * sorted(finals)[len(finals) // 2], 2)
        summary[f"{sampler}_within_3pct"] = f"{sum(f <= 0.03 for f in finals)}/{len(finals)}"
    return rows, summary


def compare_part(args, timer: CudaEventTimer, copy_bw: float) -> list[dict]:
    device = torch.device("cuda")
    table = load_table(args.table) if args.table and Path(args.table).is_file() else None
    rows = []
    for site in parse_shapes(args.compare):
        for M in [int(m) for m in args.m.split(",")]:
            problem = Problem(M, site.K, site.N, "bfloat16")
            ev = Evaluator(SPACE, problem, device, timer, detect_gpu().l2_bytes)
            base = ev.time_baseline(args.repeats)
            row = dict(shape=site.name, K=site.K, N=site.N, M=M, baseline_us=base.median_us)
            bucket = table.bucket("rms_norm_linear", site.K, site.N, torch.bfloat16, M) if table else None
            tuned = bucket.config if bucket else None
            for name, config in (("default", default_config(M, site.N, site.K, device)), ("tuned", tuned)):
                r = ev.evaluate(config, args.repeats) if config is not None else None
                row[f"{name}_us"] = r.timing.median_us if r and r.correct else math.nan
                row[f"{name}_speedup"] = r.speedup if r and r.correct else math.nan
                row[f"{name}_error"] = r.error if r else "no tuned config"
                row[f"{name}_pct_copy_bw"] = 100 * r.gbps / copy_bw if r and r.correct else math.nan
                row[f"{name}_config"] = str(config.to_dict()) if config else ""
            torch._dynamo.reset()  # a fresh compile per problem, never a silent fallback after too many recompiles
            compiled = torch.compile(baseline_rms_norm_linear, mode="max-autotune-no-cudagraphs", dynamic=False)
            t0 = time.perf_counter()
            def run(i: int):
                x, w, r = ev.inputs[i][:3]  # the fused space's inputs: x, the weight, the residual, then the rest
                return compiled(x, w, residual=r)
            run(0)
            torch.cuda.synchronize()
            row["compile_s"] = time.perf_counter() - t0
            t = timer.measure(Workload(problem, None, run, ev.n_buffers), args.repeats)
            row["torch_compile_us"] = t.median_us
            row["torch_compile_speedup"] = base.median_us / t.median_us
            rows.append(row)
            print(f"  {site.name} M={M}: baseline {base.median_us:.1f}us default {row['default_us']:.1f}us "
                  f"tuned {row['tuned_us']:.1f}us torch.compile {t.median_us:.1f}us", flush=True)
    return rows


def table_summary(path: str) -> str:
    table = load_table(path)
    data = json.loads(Path(path).read_text())
    speedups = [(b["M"], b["speedup"]) for e in data["kernels"]["rms_norm_linear"] for b in e["buckets"]]
    small = [s for m, s in speedups if m <= 64]
    geo = math.exp(sum(map(math.log, small)) / len(small)) if small else math.nan
    return (f"table {path} ({table.gpu}, triton {table.triton}): geomean speedup M<=64 {geo:.3f}x (target >= 1.25), "
            f"min over all buckets {min(s for _, s in speedups):.3f}x (target >= 1.0)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="12288x4096@16", help="NxK@M,... shapes searched exhaustively")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget-frac", type=float, default=0.15, help="tpe/random budget as a fraction of the grid")
    ap.add_argument("--compare", default="llama-7b", help="shapes for part 2 (as cli.py tune --shapes)")
    ap.add_argument("--m", default="1,16,4096", help="M values for part 2")
    ap.add_argument("--table", default=None, help="lookup table with the tuned configs [default: tables/<gpu>.json]")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--compile-processes", type=int, default=15)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_search.py: needs a CUDA GPU (none detected); nothing was measured")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    gpu = detect_gpu()
    args.table = args.table or f"tables/{gpu.short_name}.json"
    RESULTS.mkdir(exist_ok=True)
    print(f"{gpu.name}: torch {gpu.torch}, triton {gpu.triton}", flush=True)

    curves, summaries = [], []
    for spec in args.grid.split(","):
        nxk, m = spec.split("@")
        site = parse_shapes(nxk)[0]
        rows, summary = search_part(Problem(int(m), site.K, site.N, "bfloat16"), gpu, args, torch.device("cuda"),
                                    CudaEventTimer())
        curves += rows
        summaries.append(summary)
        print(f"search {summary}", flush=True)
    pd.DataFrame(curves).to_csv(RESULTS / "search_curves.csv", index=False)

    timer = CudaEventTimer()
    copy_bw = copy_bandwidth_gbps()
    print(f"copy bandwidth {copy_bw:.0f} GB/s (read + write)", flush=True)
    compare = pd.DataFrame(compare_part(args, timer, copy_bw))
    compare.to_csv(RESULTS / "compare.csv", index=False)

    print(pd.DataFrame(summaries).to_string(index=False))
    cols = ["shape", "M", "baseline_us", "default_us", "tuned_us", "torch_compile_us", "tuned_speedup",
            "default_speedup", "torch_compile_speedup", "tuned_pct_copy_bw", "compile_s"]
    print(compare[cols].round(2).to_string(index=False))
    if Path(args.table).is_file():
        print(table_summary(args.table))
    print(f"CSV: {RESULTS / 'search_curves.csv'}, {RESULTS / 'compare.csv'}")


if __name__ == "__main__":
    main()

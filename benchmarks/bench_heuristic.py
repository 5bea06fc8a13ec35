"""The learned fallback (tuning_table/learned.py) held out preset by preset, timed on the GPU (issue 16, item 3).

For each preset, the rule is fitted on the table's buckets of every other shape (the preset's own (kernel, K, N)
shapes, its lm_head's included, are left out, also where another preset shares them, as llama-7b and mistral-7b
share lm_head and o_proj), and predicts each tuned bucket of the preset: every site of both kernels (QKV, gate/up;
o_proj, down_proj), at every M the table tuned there (1..16384 where it has them). Each bucket then times, in the
site's runtime form (rotary and gated epilogues included): the predicted config, the table's tuned config,
kernels.config.default_config (the old fallback) and the eager baseline (the search space's launcher(None): the
runtime's separate path, or F.linear), each checked against the baseline first (bf16, random data), then timed with
the tuner's CudaEventTimer (CUDA graphs, rotating buffers past L2) in --rounds rounds of alternating order.
Candidates are compiled ahead in --compile-processes processes.

Writes <out>/bench_heuristic.csv (one row per bucket, variant and round: median and IQR of that round's samples) and
prints per preset and kernel the geomean of predicted / tuned latency (target <= 1.05) and the worst predicted /
eager ratio at M <= 64 (target <= 1.0: the fused kernel's, which the runtime runs without a table; the plain
linear runs F.linear there, and its tuned configs lose to cuBLAS in some buckets anyway), last. About 2-3 minutes
on one H200 (110 buckets of the shipped table, 234 distinct compiles).

    python3 benchmarks/bench_heuristic.py --table tables/h200.json --out "$OUT"
    python3 benchmarks/bench_heuristic.py --summary benchmarks/bench_results/bench_heuristic.csv  # the table again
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CsvWriter  # noqa: E402
from kernels.config import Config, default_config  # noqa: E402
from kernels.pdl import pdl_off  # noqa: E402
from search_spaces import Problem, get_space  # noqa: E402
from search_spaces.shapes import PRESETS, parse_shapes  # noqa: E402
from tuning_table import LookupTable, load_table  # noqa: E402
from tuning_table.learned import Rule, table_points  # noqa: E402

HOLDOUT_PRESETS = ("llama-7b", "mistral-7b", "llama-13b", "qwen3-0.6b")
VARIANTS = ("predicted", "tuned", "default", "eager")
KERNELS = ("rms_norm_linear", "linear")
DECODE_MAX_M = 64
COLUMNS = ["preset", "kernel", "site", "K", "N", "M", "epilogue", "variant", "round", "median_us", "iqr_us",
           "config", "predicted_from", "error"]


@dataclass(frozen=True)
class Case:
    """One held-out bucket: its problem and the configs to time (None: the eager baseline)."""
    preset: str
    kernel: str
    site: str
    problem: Problem
    configs: dict[str, Config | None]
    predicted_from: str  # "learned", or "default" where no training point was near enough


def plan(table: LookupTable, presets: tuple[str, ...], device: torch.device, max_m: int = 16384) -> list[Case]:
    """Every tuned bucket of each preset's shapes up to max_m, predicted by the rule fitted without them."""
    everything = Rule(table_points(table))
    cases = []
    for preset in presets:
        sites = [(kernel, s) for kernel in KERNELS for s in parse_shapes(preset, kernel)]
        # Its lm_head too: no longer a site (the runtime does not fuse it), but tables tuned it for this model.
        cfg = PRESETS[preset]
        lm_head = ("rms_norm_linear", cfg["hidden_size"], cfg["vocab_size"])
        rule = everything.holding_out([(kernel, s.K, s.N) for kernel, s in sites] + [lm_head])
        for kernel, s in sites:
            for bucket in table.entries.get((kernel, s.K, s.N, "bfloat16"), []):
                if bucket.M > max_m:
                    continue
                predicted = rule.predict(kernel, bucket.M, s.K, s.N, s.epilogue, device)
                default = default_config(bucket.M, s.N, s.K, device)
                cases.append(Case(preset, kernel, s.name, Problem(bucket.M, s.K, s.N, "bfloat16", s.epilogue),
                                  {"predicted": predicted or default, "tuned": bucket.config, "default": default,
                                   "eager": None}, "learned" if predicted is not None else "default"))
    return cases


def geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


def summary(rows: list[dict]) -> str:
    """Per preset and kernel, from the CSV's rows (each variant's median over its rounds): the geomeans of predicted /
    tuned and default / tuned, how often the prediction is the tuned config, the worst predicted / eager at M <= 64,
    and the buckets where a variant failed its check (left out of the ratios). Without a table the runtime runs the
    prediction for the fused kernel only (the plain linear runs F.linear there): its line is the one the targets
    are about."""
    us: dict[tuple, dict[str, list[float]]] = {}
    configs: dict[tuple, dict[str, str]] = {}
    failed: dict[tuple, bool] = {}
    for r in rows:
        key = (r["preset"], r["kernel"], r["site"], int(r["M"]))
        configs.setdefault(key, {})[r["variant"]] = r["config"]
        failed[key] = failed.get(key, False) or bool(r["error"])
        if not r["error"]:
            us.setdefault(key, {}).setdefault(r["variant"], []).append(float(r["median_us"]))
    lines = ["preset      kernel           buckets  failed  pred/tuned  default/tuned  pred==tuned  "
             "worst pred/eager at M<=64"]
    for preset, kernel in dict.fromkeys(k[:2] for k in configs):
        keys = [k for k in configs if k[:2] == (preset, kernel)]
        timed = {k: {v: statistics.median(t) for v, t in us[k].items()} for k in keys if not failed[k]}
        pred = geomean([t["predicted"] / t["tuned"] for t in timed.values()])
        default = geomean([t["default"] / t["tuned"] for t in timed.values()])
        same = sum(configs[k]["predicted"] == configs[k]["tuned"] for k in keys)
        decode = {k: t["predicted"] / t["eager"] for k, t in timed.items() if k[3] <= DECODE_MAX_M}
        worst = max(decode, key=decode.get) if decode else None
        where = f"{decode[worst]:.3f} ({worst[2]} M={worst[3]})" if worst else "-"
        lines.append(f"{preset:<11} {kernel:<16} {len(keys):>7}  {sum(failed[k] for k in keys):>6}  {pred:>10.3f}  "
                     f"{default:>13.3f}  {same:>11}  {where}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default="tables/h200.json", help="the tuned table to hold out from")
    ap.add_argument("--presets", default=",".join(HOLDOUT_PRESETS), help="comma-separated presets to hold out")
    ap.add_argument("--max-m", type=int, default=16384, help="largest M bucket timed")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per bucket, each in a rotated variant order")
    ap.add_argument("--repeats", type=int, default=10, help="timed graph replays per round")
    ap.add_argument("--compile-processes", type=int, default=15)
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/bench_results",
                    help="folder of bench_heuristic.csv [default: $OUT, else benchmarks/bench_results]")
    ap.add_argument("--summary", metavar="CSV", help="only print the summary of a CSV this script wrote (no GPU)")
    args = ap.parse_args()
    if args.summary:
        try:
            with open(args.summary, newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError as e:
            sys.exit(f"bench_heuristic.py: --summary {args.summary}: cannot read ({e.strerror})")
        missing = [c for c in COLUMNS if rows and c not in rows[0]]
        if not rows or missing:
            sys.exit(f"bench_heuristic.py: --summary {args.summary}: not a CSV of this script "
                     f"({'no rows' if not rows else 'missing columns ' + ', '.join(missing)})")
        print(summary(rows))
        return
    presets = tuple(p.strip() for p in args.presets.split(",") if p.strip())
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        sys.exit(f"bench_heuristic.py: --presets {args.presets!r}: expected presets among {', '.join(PRESETS)}")
    for name in ("max_m", "rounds", "repeats"):
        if getattr(args, name) < 1:
            sys.exit(f"bench_heuristic.py: --{name.replace('_', '-')} {getattr(args, name)}: expected >= 1")
    if not torch.cuda.is_available():
        sys.exit("bench_heuristic.py: needs a CUDA GPU (none detected); nothing was measured")
    try:
        table = load_table(args.table)
    except ValueError as e:
        sys.exit(f"bench_heuristic.py: --table: {e}")
    from autotune.device import detect_gpu
    from autotune.timer import CudaEventTimer
    run(table, presets, args, torch.device("cuda"), detect_gpu(), CudaEventTimer())


def run(table: LookupTable, presets: tuple[str, ...], args: argparse.Namespace, device: torch.device, gpu: Any,
        timer: Any) -> list[dict]:
    """Check and time every held-out bucket on `device` (a GpuInfo `gpu`, an autotune Timer); the CSV's rows."""
    # The tuner's machinery, imported only here: the plan and the summary above run without optuna.
    from autotune.compile_pool import CompilePool

    t0 = time.perf_counter()
    cases = plan(table, presets, device, args.max_m)
    print(f"{gpu.name}: torch {gpu.torch}, triton {gpu.triton}; {len(cases)} held-out buckets", flush=True)
    rows: list[dict] = []
    writer = CsvWriter(str(Path(args.out) / "bench_heuristic.csv"), COLUMNS)
    with CompilePool(args.compile_processes, device) as pool:
        # Everything is queued at once, in the order timed: the GPU times a bucket while the next ones compile.
        jobs: dict[tuple, Future] = {}
        waits = []
        for case in cases:
            space = get_space(case.kernel)
            keys = [(case.kernel, space.compile_problem(case.problem), c) for c in case.configs.values() if c]
            for key in keys:
                jobs.setdefault(key, pool.submit(case.kernel, case.problem, key[2]))
            waits.append([jobs[key] for key in keys])
        for case, futures in zip(cases, waits):
            for future in futures:
                future.result()  # a compile failure shows up again in the check, with its bucket
            rows += time_case(case, args, device, gpu, timer, writer)
    print(f"CSV: {writer.path} ({len(jobs)} compiles, {time.perf_counter() - t0:.0f}s in all)")
    print(summary(rows))
    return rows


def time_case(case: Case, args: argparse.Namespace, device: torch.device, gpu: Any, timer: Any,
              writer: CsvWriter) -> list[dict]:
    """One bucket: every config checked against the eager baseline, then each variant timed once a round, the
    order rotated from round to round; its rows, also written to the CSV as they are measured."""
    from autotune.objective import Evaluator, short_error

    ev = Evaluator(get_space(case.kernel), case.problem, device, timer, gpu.l2_bytes)
    with pdl_off():  # the binaries compiled ahead, which the timer launches (kernels/pdl.py)
        errors = {v: (ev.check(c) if c is not None else None) for v, c in case.configs.items()}
    base = dict(preset=case.preset, kernel=case.kernel, site=case.site, K=case.problem.K, N=case.problem.N,
                M=case.problem.M, epilogue=str(case.problem.epilogue), predicted_from=case.predicted_from)
    rows = []
    for r in range(args.rounds):
        for variant in VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]:
            config = case.configs[variant]
            row = dict(base, variant=variant, round=r, config=str(config.to_dict()) if config else "",
                       error=errors[variant] or "", median_us=math.nan, iqr_us=math.nan)
            if not errors[variant]:
                try:
                    t = timer.measure(ev.workload(config), args.repeats)
                    row.update(median_us=t.median_us, iqr_us=t.spread_us)
                except Exception as e:  # noqa: BLE001 - e.g. out of memory: the bucket's rows say so, the run goes on
                    row["error"] = errors[variant] = short_error(e)
            writer.write(row)
            rows.append(row)
    got = {v: statistics.median(r["median_us"] for r in rows if r["variant"] == v) for v in VARIANTS}
    print(f"  {case.preset} {case.kernel} {case.site} M={case.problem.M}: " +
          " ".join(f"{v} {got[v]:.1f}" for v in VARIANTS) +
          "".join(f" [{v} FAILED: {e}]" for v, e in errors.items() if e), flush=True)
    return rows


if __name__ == "__main__":
    main()

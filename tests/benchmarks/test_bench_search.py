"""bench_search.py's search comparison on the CPU: the grid through the interpreter, tpe/random replayed on it."""
import math
import types

import optuna
import pandas as pd
import torch

from tests.doubles import FakeTimer, fake_gpu
from benchmarks import bench_search
from search_spaces import Problem


def test_grid_then_replayed_samplers_never_beat_the_grid():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args = types.SimpleNamespace(repeats=2, compile_processes=0, seeds=2, budget_frac=0.15)
    rows, summary = bench_search.search_part(Problem(1, 32, 32, "float16"), fake_gpu(), args, torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                                             FakeTimer())
    curves = pd.DataFrame(rows)
    assert set(curves["sampler"]) == {"grid", "tpe", "random"}
    assert summary["grid_trials"] == (curves["sampler"] == "grid").sum()
    assert summary["budget"] == math.ceil(0.15 * summary["grid_trials"])
    # Replays answer with the grid's own timings, so no sampler finds anything faster than the grid's optimum.
    assert curves["best_us"].min() == summary["grid_optimum_us"]
    for _, c in curves.groupby(["sampler", "seed"]):
        assert c["best_us"].is_monotonic_decreasing
    assert summary["tpe_gap_median_pct"] >= 0 and "/" in summary["tpe_within_3pct"]

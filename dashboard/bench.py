"""The CSVs of benchmarks/bench_search.py as an extra source for the dashboard.

The database holds no timings of the default config or of torch.compile: bench_search.py measures
them on a GPU and writes compare.csv (tuned vs default vs baseline vs torch.compile) and
search_curves.csv (grid vs tpe vs random best-so-far curves). Neither names its GPU, so the caller
says which GPU measured them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

COMPARE_COLUMNS = ["shape", "K", "N", "M", "baseline_us", "default_us", "tuned_us", "torch_compile_us"]
CURVE_COLUMNS = ["shape", "M", "sampler", "seed", "trial", "best_us"]


@dataclass
class BenchData:
    compare: pd.DataFrame   # COMPARE_COLUMNS and gpu
    curves: pd.DataFrame    # CURVE_COLUMNS and gpu

    @property
    def empty(self) -> bool:
        return self.compare.empty and self.curves.empty


def read_bench_csvs(paths: list[str], gpu: str | None) -> BenchData:
    """Sort each CSV into compare or curves by its columns; ValueError naming the file that is neither."""
    compare, curves = [], []
    for path in paths:
        if gpu is None:
            raise ValueError(f"--bench-csv {path}: bench_search.py's CSVs do not name their GPU; "
                             f"pass --gpu to say which GPU measured them")
        try:
            df = pd.read_csv(Path(path))
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ValueError(f"--bench-csv {path}: cannot read it as CSV ({e})") from None
        if set(COMPARE_COLUMNS) <= set(df.columns):
            compare.append(df[COMPARE_COLUMNS].assign(gpu=gpu))
        elif set(CURVE_COLUMNS) <= set(df.columns):
            curves.append(df[CURVE_COLUMNS].assign(gpu=gpu))
        else:
            raise ValueError(f"--bench-csv {path}: expected bench_search.py's compare.csv (columns "
                             f"{', '.join(COMPARE_COLUMNS)}) or search_curves.csv ({', '.join(CURVE_COLUMNS)})")
    return BenchData(_concat(compare, COMPARE_COLUMNS), _concat(curves, CURVE_COLUMNS))


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*columns, "gpu"])


def bench_sampler_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Per sampler and trial: the median over problems and seeds of best-so-far / the grid's optimum."""
    c = curves.copy()
    c["ratio"] = c["best_us"] / c.groupby(["gpu", "shape", "M"])["best_us"].transform("min")
    c["problem"] = c["gpu"] + " " + c["shape"] + " M=" + c["M"].astype(str)
    return (c.rename(columns={"trial": "step"}).groupby(["sampler", "step"])
            .agg(ratio=("ratio", "median"), studies=("problem", "nunique")).reset_index())

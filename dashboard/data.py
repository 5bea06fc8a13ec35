"""What the dashboard shows, read from the tuning database into pandas frames.

Everything across studies comes from our nvc_ tables, one query each; Optuna's own trials (params,
pruned reasons, importances) are read only for the few studies shown in detail, so a database of
thousands of trials still loads in a moment.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session

from db.models import ExportedTable, Gpu, Kernel, Measurement, Run, Shape
from db.queries import BEST_COLUMNS, SPLIT_COLUMNS, best_results, search_split, with_gemm_dims
from db.storage import StorageError, engine_kwargs, open_engine, redact, resolve_url

RUN_COLUMNS = ["run_id", "study_name", "sampler", "status", "baseline_us", "gpu", "kernel", "dtype", "dims"]
SEARCH_COLUMNS = ["run_id", "trial_number", "correct", "error", "median_us"]
GPU_COLUMNS = ["gpu", "name", "torch", "triton", "driver", "sm_count", "memory_gib"]
EXPORT_COLUMNS = ["gpu", "path", "created", "kernel", "dtype", "K", "N", "M", "config", "latency_us", "speedup"]
# A generic kernel's (a plugin's) buckets name their sizes here instead of K, N and M; shown only where there are some.
EXPORT_DIMS = "dims"
STUDY_COLUMNS = ["study_name", "gpu", "kernel", "dtype", "K", "N", "M", "sampler", "runs", "status", "trials",
                 "failed", "best_search_us", "baseline_us", "tuned_us", "speedup", "best_from", "sampler_gain_pct"]


@dataclass
class DashboardData:
    source: str                 # the database URL, password hidden
    gpus: pd.DataFrame          # one row per device and software that ran a tune
    studies: pd.DataFrame       # one row per study: its latest run, trial and failure counts, re-timed winner
    search: pd.DataFrame        # every search measurement, with its study_name and sampler
    best: pd.DataFrame          # db.queries.best_results: the re-timed winner of every finished study
    exported: pd.DataFrame      # the buckets of the newest exported lookup table of each GPU
    split: pd.DataFrame         # db.queries.search_split: per finished study, best warm start against the sampler

    @property
    def empty(self) -> bool:
        return self.studies.empty


def _frame(engine: Engine, query, columns: list[str]) -> pd.DataFrame:
    with Session(engine) as s:
        rows = s.execute(query).all()
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)


def _has_no_tuning_tables(url: str) -> bool:
    """True for a database that exists but that no tune has written to; False when it is missing or unusable."""
    url = resolve_url(url)
    try:
        parsed = make_url(url)
        # Inspecting a missing SQLite file would create it.
        if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
            return False
        engine = create_engine(url, **engine_kwargs(url))
        try:
            return not any(t.startswith("nvc_") for t in inspect(engine).get_table_names())
        finally:
            engine.dispose()
    except (ArgumentError, SQLAlchemyError, ModuleNotFoundError):
        return False


def open_database(url: str) -> Engine | None:
    """The database's engine (schema version checked); None when it exists but holds no tuning tables yet."""
    try:
        return open_engine(url, create=False)
    except StorageError:
        if not _has_no_tuning_tables(url):
            raise
    return None


def load(url: str, gpu: str | None = None) -> DashboardData:
    """Everything the page shows across studies, optionally of one normalized GPU name."""
    engine = open_database(url)
    if engine is None:
        return DashboardData(redact(url), pd.DataFrame(columns=GPU_COLUMNS), pd.DataFrame(columns=STUDY_COLUMNS),
                             pd.DataFrame(columns=[*SEARCH_COLUMNS, "study_name", "sampler"]),
                             pd.DataFrame(columns=BEST_COLUMNS), pd.DataFrame(columns=EXPORT_COLUMNS),
                             pd.DataFrame(columns=SPLIT_COLUMNS))
    try:
        runs_q = (select(Run.id, Run.study_name, Run.sampler, Run.status, Run.baseline_us, Gpu.short_name,
                         Kernel.name, Shape.dtype, Shape.dims)
                  .join(Gpu, Gpu.id == Run.gpu_id).join(Kernel, Kernel.id == Run.kernel_id)
                  .join(Shape, Shape.id == Run.shape_id).order_by(Run.id))
        gpus_q = select(Gpu.short_name, Gpu.name, Gpu.torch_version, Gpu.triton_version, Gpu.driver, Gpu.sm_count,
                        Gpu.memory_bytes).where(Gpu.id.in_(select(Run.gpu_id))).order_by(Gpu.short_name, Gpu.id)
        search_q = (select(Measurement.run_id, Measurement.trial_number, Measurement.correct, Measurement.error,
                           Measurement.median_us).where(Measurement.phase == "search")
                    .order_by(Measurement.run_id, Measurement.trial_number))
        if gpu is not None:
            runs_q = runs_q.where(Gpu.short_name == gpu)
            gpus_q = gpus_q.where(Gpu.short_name == gpu)
            search_q = search_q.where(Measurement.run_id.in_(
                select(Run.id).join(Gpu, Gpu.id == Run.gpu_id).where(Gpu.short_name == gpu)))
        runs = with_gemm_dims(_frame(engine, runs_q, RUN_COLUMNS))  # K, N, M: <NA> for other kernels
        search = _frame(engine, search_q, SEARCH_COLUMNS).merge(runs[["run_id", "study_name", "sampler"]], on="run_id")
        best, split = best_results(engine, gpu), search_split(engine, gpu)
        gpus = _frame(engine, gpus_q, GPU_COLUMNS)
        gpus["memory_gib"] = (gpus["memory_gib"] / 2**30).round(1)  # the query reads bytes
        return DashboardData(redact(url), gpus, _studies(runs, search, best, split), search, best,
                             _exported(engine, gpu), split)
    finally:
        engine.dispose()


def _studies(runs: pd.DataFrame, search: pd.DataFrame, best: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    if runs.empty:
        return pd.DataFrame(columns=STUDY_COLUMNS)
    by_study = runs.groupby("study_name", sort=False)
    latest = by_study.tail(1).set_index("study_name")
    counts = (search.assign(failed=~search["correct"].astype(bool)).groupby("study_name")
              .agg(trials=("trial_number", "size"), failed=("failed", "sum"), best_search_us=("median_us", "min")))
    studies = latest.drop(columns=["run_id", "sampler"]).assign(
        sampler=by_study["sampler"].agg(lambda s: "+".join(dict.fromkeys(s))), runs=by_study.size(),
        baseline_us=by_study["baseline_us"].agg("last"))
    studies = studies.join(counts).join(best.set_index("study_name")[["median_us", "speedup"]].rename(
        columns={"median_us": "tuned_us"}))
    studies = studies.join(split.set_index("study_name")[["best_from", "gain"]].assign(
        sampler_gain_pct=lambda f: 100 * f["gain"]).drop(columns="gain"))
    studies[["trials", "failed"]] = studies[["trials", "failed"]].fillna(0).astype(int)
    return studies.reset_index()[STUDY_COLUMNS].sort_values(["trials", "study_name"], ascending=[False, True],
                                                             ignore_index=True)


def _exported(engine: Engine, gpu: str | None) -> pd.DataFrame:
    newest = select(func.max(ExportedTable.id)).group_by(ExportedTable.gpu_short_name)
    q = select(ExportedTable).where(ExportedTable.id.in_(newest)).order_by(ExportedTable.gpu_short_name)
    if gpu is not None:
        q = q.where(ExportedTable.gpu_short_name == gpu)
    with Session(engine) as s:
        tables = s.scalars(q).all()
        rows = [(t.gpu_short_name, t.path, f"{t.created_at:%Y-%m-%d %H:%M}", kernel, e["dtype"], *_exported_dims(e, b),
                 short_config(b["config"]), b["latency_us"], b["speedup"])
                for t in tables for kernel, entries in t.content["kernels"].items() for e in entries
                for b in e["buckets"]]
    at = EXPORT_COLUMNS.index("M") + 1
    frame = pd.DataFrame(rows, columns=[*EXPORT_COLUMNS[:at], EXPORT_DIMS, *EXPORT_COLUMNS[at:]])
    return frame if (frame[EXPORT_DIMS] != "").any() else frame[EXPORT_COLUMNS]


def _exported_dims(entry: dict, bucket: dict) -> tuple:
    """K, N, M and dims of a bucket: a GEMM kernel's K, N and M; a generic kernel's (tuning_table/format.py) sizes as
    text in dims."""
    if "bucket" not in bucket:
        return entry["K"], entry["N"], bucket["M"], ""
    return None, None, None, " ".join(f"{k}={v}" for k, v in {**entry["dims"], **bucket["bucket"]}.items())


def short_config(c: dict) -> str:
    """A GEMM config as BLOCK_MxBLOCK_NxBLOCK_K (marked gemv below tl.dot's 16 rows: the GEMV-like tile) w.. s.. g..
    sk.. ssq.. tma.. ev.. (EVICT; a table written before a field existed ran its default, 0); any other space's as
    its axis=value pairs."""
    if "BLOCK_M" not in c:
        return " ".join(f"{k}={v}" for k, v in c.items())
    gemv = " gemv" if c["BLOCK_M"] < 16 else ""
    return (f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']}{gemv} w{c['num_warps']} s{c['num_stages']} "
            f"g{c['GROUP_M']} sk{c['SPLIT_K']} ssq{c.get('SUMSQ_IN_LOOP', 0)} tma{c.get('TMA', 0)} "
            f"ev{c.get('EVICT', 0)}")


def shape_label(kernel: str, dtype: str, K: int, N: int) -> str:
    return f"{kernel} {dtype} K={K} N={N}"


def best_so_far(search: pd.DataFrame) -> pd.DataFrame:
    """Search rows in trial order per study, numbered 1.. (`step`), with the running best correct latency."""
    s = search.sort_values(["study_name", "trial_number"], ignore_index=True)
    s["step"] = s.groupby("study_name").cumcount() + 1
    # A database whose every trial failed holds no latency: the column is all None, of object dtype.
    best = s["median_us"].astype(float).where(s["correct"].astype(bool)).groupby(s["study_name"]).cummin()
    # cummin leaves NaN at failed trials; the best so far carries over them.
    s["best_us"] = best.groupby(s["study_name"]).ffill()
    return s


def sampler_curves(search: pd.DataFrame, points: int = 100) -> pd.DataFrame:
    """Per sampler, at each percent of a study's trials (`step`): the median over its studies of best-so-far /
    the study's final best (1 = found it). Percent rather than trial count, so studies of different budgets
    all count at every point."""
    s = best_so_far(search)
    final = s.groupby("study_name")["best_us"].transform("min")
    s = s[final.notna()]  # a study that never timed a correct config has no best to approach
    # Before its first correct config a study is infinitely far from its best (drawn as a gap).
    s = s.assign(ratio=(s["best_us"] / final[final.notna()]).fillna(np.inf),
                 trials=s.groupby("study_name")["step"].transform("max"))
    rows = []
    for pct in np.linspace(100 / points, 100, points):
        # The best so far after the first pct % of each study's trials.
        at = s[s["step"] == np.ceil(s["trials"] * pct / 100).astype(int)]
        for sampler, g in at.groupby("sampler"):
            median = g["ratio"].median()
            rows.append(dict(sampler=sampler, step=pct, ratio=median if np.isfinite(median) else np.nan,
                             studies=len(g)))
    return pd.DataFrame(rows, columns=["sampler", "step", "ratio", "studies"])


def study_trials(storage: optuna.storages.BaseStorage, study_name: str) -> tuple[optuna.Study, pd.DataFrame]:
    """Optuna's trials of one study: number, state, value, params, and why it failed or was pruned."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    rows = [dict(number=t.number, state=t.state.name, value=t.value,
                 reason=t.user_attrs.get("error") or t.user_attrs.get("pruned"), **t.params)
            for t in study.get_trials(deepcopy=False)]
    return study, pd.DataFrame(rows, columns=["number", "state", "value", "reason"] if not rows else None)

"""Read-side queries over our tables, as pandas DataFrames (for `show`, export and the dashboard)."""
from __future__ import annotations

import json

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from db.models import GRID, SAMPLER, WARM_START, Gpu, Kernel, Measurement, Run, Shape

BEST_COLUMNS = ["gpu", "gpu_id", "gpu_name", "torch", "triton", "kernel", "dtype", "K", "N", "M", "config",
                "median_us", "spread_us", "baseline_us", "speedup", "tflops", "gbps", "finished_at", "study_name",
                "form", "dims"]
GEMM_DIMS = ("K", "N", "M")
SPLIT_COLUMNS = ["study_name", "gpu", "kernel", "dtype", "dims", "form", "trials", "warm_config", "warm_us",
                 "warm_spread_us", "sampler_config", "sampler_us", "sampler_spread_us", "best_from", "gain", "best_at",
                 "best_step"]


def with_gemm_dims(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame`'s "dims" (the shape's text, db.models.dims_text) as a dict, and the GEMM kernels' K, N and M as columns
    of their own (ints; missing, <NA>, for a kernel whose problem has no such dim)."""
    dims = [json.loads(d) for d in frame["dims"]]
    columns = {}
    for name in GEMM_DIMS:
        values = pd.array([d.get(name) for d in dims], dtype="Int64")
        columns[name] = values.astype("int64") if not values.isna().any() else values
    return frame.assign(dims=dims, **columns)


def best_results(engine: Engine, gpu: str | None = None) -> pd.DataFrame:
    """The re-timed winner of the latest finished run of every study (optionally of one normalized GPU name), with
    its problem's `dims` (a dict; K, N and M also as columns, with_gemm_dims) and the form it was timed in (its
    shape's, "" for none: for the GEMM kernels the epilogue's form, "" for the plain product)."""
    latest = (select(func.max(Run.id).label("id")).where(Run.status == "finished", Run.best_measurement_id.is_not(None))
              .group_by(Run.study_name).subquery())
    q = (select(Gpu.short_name, Gpu.id, Gpu.name, Gpu.torch_version, Gpu.triton_version, Kernel.name, Shape.dtype,
                Measurement.config, Measurement.median_us, Measurement.spread_us,
                Run.baseline_us, Measurement.speedup, Measurement.tflops, Measurement.gbps, Run.finished_at,
                Run.study_name, Shape.form, Shape.dims)
         .join(latest, latest.c.id == Run.id)
         .join(Measurement, Measurement.id == Run.best_measurement_id)
         .join(Gpu, Gpu.id == Run.gpu_id).join(Kernel, Kernel.id == Run.kernel_id).join(Shape, Shape.id == Run.shape_id)
         .where(Measurement.correct.is_(True)))
    if gpu is not None:
        q = q.where(Gpu.short_name == gpu)
    with Session(engine) as s:
        rows = s.execute(q).all()
    queried = [c for c in BEST_COLUMNS if c not in GEMM_DIMS]
    df = with_gemm_dims(pd.DataFrame([tuple(r) for r in rows], columns=queried))[BEST_COLUMNS]
    df = df.assign(order=df["dims"].map(lambda d: tuple(sorted(d.items()))))
    return df.sort_values(["gpu", "kernel", "dtype", "K", "N", "M", "order"], ignore_index=True).drop(columns="order")


def search_history(engine: Engine, study_name: str) -> pd.DataFrame:
    """Every search measurement of a study, in trial order, with the best-so-far latency."""
    q = (select(Measurement.trial_number, Measurement.config, Measurement.correct, Measurement.error,
                Measurement.median_us, Measurement.speedup)
         .join(Run, Run.id == Measurement.run_id)
         .where(Run.study_name == study_name, Measurement.phase == "search").order_by(Measurement.trial_number))
    with Session(engine) as s:
        rows = s.execute(q).all()
    df = pd.DataFrame([tuple(r) for r in rows],
                      columns=["trial_number", "config", "correct", "error", "median_us", "speedup"])
    df["best_so_far_us"] = df["median_us"].where(df["correct"]).cummin()
    return df


def search_split(engine: Engine, gpu: str | None = None) -> pd.DataFrame:
    """Per finished study (optionally of one normalized GPU name): its best warm start and its best sampler trial
    (config, median and spread of the search measurements of all its runs; NaN where it has none), `best_from`, the
    origin of its result (the latest finished run's re-timed winner; db.models.WARM_START, SAMPLER or GRID, None
    when measured before schema 4), `gain`, the sampler's over the warm starts (best warm start's median / best
    sampler trial's - 1: above 0 where the sampler found a faster config), `best_at`, the number of the trial at
    which the study's best search latency was first reached, and `best_step`, how many of its `trials` (timed, or
    failed by their config) had been measured by then, that one included."""
    latest = (select(func.max(Run.id).label("id")).where(Run.status == "finished", Run.best_measurement_id.is_not(None))
              .group_by(Run.study_name).subquery())
    studies_q = (select(Run.study_name, Gpu.short_name, Kernel.name, Shape.dtype, Shape.dims, Shape.form,
                        Measurement.origin)
                 .join(latest, latest.c.id == Run.id).join(Measurement, Measurement.id == Run.best_measurement_id)
                 .join(Gpu, Gpu.id == Run.gpu_id).join(Kernel, Kernel.id == Run.kernel_id)
                 .join(Shape, Shape.id == Run.shape_id))
    if gpu is not None:
        studies_q = studies_q.where(Gpu.short_name == gpu)
    search_q = (select(Run.study_name, Measurement.trial_number, Measurement.origin, Measurement.config,
                       Measurement.correct, Measurement.median_us, Measurement.spread_us)
                .join(Run, Run.id == Measurement.run_id)
                .where(Measurement.phase == "search", Run.study_name.in_(select(studies_q.subquery().c.study_name)))
                .order_by(Run.study_name, Measurement.trial_number))
    with Session(engine) as s:
        studies = s.execute(studies_q).all()
        search = pd.DataFrame([tuple(r) for r in s.execute(search_q).all()],
                              columns=["study_name", "trial_number", "origin", "config", "correct", "median_us",
                                       "spread_us"])
    by_study = dict(tuple(search.groupby("study_name", sort=False)))
    rows = []
    for name, gpu_name, kernel, dtype, dims, form, best_from in studies:
        trials = by_study.get(name, search.iloc[:0]).reset_index(drop=True)
        timed = trials[trials["correct"].astype(bool) & trials["median_us"].notna()]
        first_best = timed["median_us"].idxmin() if len(timed) else None
        row = dict(study_name=name, gpu=gpu_name, kernel=kernel, dtype=dtype, dims=json.loads(dims), form=form,
                   trials=len(trials), best_from=best_from,
                   best_at=None if first_best is None else trials.loc[first_best, "trial_number"],
                   best_step=None if first_best is None else first_best + 1)
        for prefix, origin in (("warm", WARM_START), ("sampler", SAMPLER)):
            mine = timed[timed["origin"] == origin]
            best = mine.loc[mine["median_us"].idxmin()] if len(mine) else None
            row.update({f"{prefix}_config": None if best is None else best["config"],
                        f"{prefix}_us": None if best is None else best["median_us"],
                        f"{prefix}_spread_us": None if best is None else best["spread_us"]})
        rows.append(row)
    df = pd.DataFrame(rows, columns=SPLIT_COLUMNS)
    floats = ["warm_us", "warm_spread_us", "sampler_us", "sampler_spread_us"]
    df[floats] = df[floats].astype(float)
    df["gain"] = df["warm_us"] / df["sampler_us"] - 1
    df[["best_at", "best_step"]] = df[["best_at", "best_step"]].astype("Int64")
    return df.sort_values(["gpu", "kernel", "study_name"], ignore_index=True)


def split_summary(split: pd.DataFrame) -> str:
    """search_split's studies in one line: in how many the result was a warm start, the sampler's, a grid point,
    of unknown origin."""
    counts = split["best_from"].fillna("unknown").value_counts()
    parts = [f"the best config was a warm start in {counts.get(WARM_START, 0)} of {len(split)} studies"]
    for origin, says in ((SAMPLER, "the sampler's own"), (GRID, "a grid point"),
                         ("unknown", "of unknown origin (measured before schema 4)")):
        if counts.get(origin, 0):
            parts.append(f"{says} in {counts[origin]}")
    return ", ".join(parts)

"""Read-side queries over our tables, as pandas DataFrames (for `show`, export and the dashboard)."""
from __future__ import annotations

import json

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from db.models import Gpu, Kernel, Measurement, Run, Shape

BEST_COLUMNS = ["gpu", "gpu_id", "gpu_name", "torch", "triton", "kernel", "dtype", "K", "N", "M", "config",
                "median_us", "spread_us", "baseline_us", "speedup", "tflops", "gbps", "finished_at", "study_name",
                "form", "dims"]
GEMM_DIMS = ("K", "N", "M")


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

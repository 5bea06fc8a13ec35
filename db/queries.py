"""Read-side queries over our tables, as pandas DataFrames (for `show`, export and the dashboard)."""
from __future__ import annotations

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from db.models import Gpu, Kernel, Measurement, Run, Shape
from search_spaces.base import FORM_PATTERN

BEST_COLUMNS = ["gpu", "gpu_id", "gpu_name", "torch", "triton", "kernel", "dtype", "K", "N", "M", "config",
                "median_us", "spread_us", "baseline_us", "speedup", "tflops", "gbps", "finished_at", "study_name",
                "epilogue"]


def best_results(engine: Engine, gpu: str | None = None) -> pd.DataFrame:
    """The re-timed winner of the latest finished run of every study (optionally of one normalized GPU name), with
    the form it was timed in (`epilogue`, study_form)."""
    latest = (select(func.max(Run.id).label("id")).where(Run.status == "finished", Run.best_measurement_id.is_not(None))
              .group_by(Run.study_name).subquery())
    q = (select(Gpu.short_name, Gpu.id, Gpu.name, Gpu.torch_version, Gpu.triton_version, Kernel.name, Shape.dtype,
                Shape.K, Shape.N, Shape.M, Measurement.config, Measurement.median_us, Measurement.spread_us,
                Run.baseline_us, Measurement.speedup, Measurement.tflops, Measurement.gbps, Run.finished_at,
                Run.study_name)
         .join(latest, latest.c.id == Run.id)
         .join(Measurement, Measurement.id == Run.best_measurement_id)
         .join(Gpu, Gpu.id == Run.gpu_id).join(Kernel, Kernel.id == Run.kernel_id).join(Shape, Shape.id == Run.shape_id)
         .where(Measurement.correct.is_(True)))
    if gpu is not None:
        q = q.where(Gpu.short_name == gpu)
    with Session(engine) as s:
        rows = s.execute(q).all()
    df = pd.DataFrame([(*r, study_form(r.study_name)) for r in rows], columns=BEST_COLUMNS)
    return df.sort_values(["gpu", "kernel", "dtype", "K", "N", "M"], ignore_index=True)


def study_form(study_name: str) -> str:
    """The form a study timed its problem in: the field autotune.tuner.study_name appends after N ("gated",
    "rotary=<head_dim>/<kv_heads>"), "" for the plain product. Names from before commit 5fb9888 do not say how their
    study timed: "rotary=<head_dim>" counts as plain here, and the "gated" studies of 7a2518c timed the stacked
    product (re-tune those sites before exporting such a database)."""
    fields = study_name.split("|")
    form = fields[6] if len(fields) > 6 else ""
    return form if FORM_PATTERN.fullmatch(form) else ""


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

"""Our own records, in the same database as Optuna's tables (all ours are prefixed `nvc_`).

Optuna keeps the search state (studies, trials, params); these tables keep what a user asks
about afterwards: which GPU and software, which shape, every measurement with its spread and
speedup, the re-timed winner of each run, and every exported lookup table.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Bumped together with a new revision in db/migrations/versions/, which migrates the databases of the last one.
SCHEMA_VERSION = 4

# Where a measured config came from (Measurement.origin): enqueued as a warm start (the previous M bucket's leaders,
# the space's heuristics), proposed by the sampler itself, or a point of the grid sampler's enqueued grid.
WARM_START, SAMPLER, GRID = "warm_start", "sampler", "grid"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    """One row: the version of the nvc_ tables, checked before anything else is read or written."""
    __tablename__ = "nvc_schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class Gpu(Base):
    """A device together with the software that compiled and timed on it: a Triton upgrade is a new row."""
    __tablename__ = "nvc_gpus"
    __table_args__ = (UniqueConstraint("name", "driver", "torch_version", "triton_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))          # torch.cuda.get_device_name()
    short_name: Mapped[str] = mapped_column(String(32), index=True)  # normalized: h100, a100, ...
    sm_count: Mapped[int] = mapped_column(Integer)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    driver: Mapped[str] = mapped_column(String(64))
    torch_version: Mapped[str] = mapped_column(String(64))
    triton_version: Mapped[str] = mapped_column(String(64))


class Kernel(Base):
    __tablename__ = "nvc_kernels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


def dims_text(dims: dict[str, int]) -> str:
    """The one spelling of a problem's named sizes in nvc_shapes.dims: JSON, keys sorted, no spaces."""
    return json.dumps(dims, sort_keys=True, separators=(",", ":"))


class Shape(Base):
    """One tuned problem of any kernel: its named sizes `dims` (dims_text; a GEMM's x (M, K) @ weight (N, K).T is
    {"K":..,"M":..,"N":..}), its `dtype` and its `form`, the variant it was timed in ("" for none; for the GEMM
    kernels the epilogue applied after the product, kernels/epilogue.py: "gated", "rotary=<head_dim>/<kv_heads>")."""
    __tablename__ = "nvc_shapes"
    # Named, unlike schema 1's, so that a later migration can drop it on every backend.
    __table_args__ = (UniqueConstraint("dims", "dtype", "form", name="uq_nvc_shapes_dims_dtype_form"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dtype: Mapped[str] = mapped_column(String(16))
    form: Mapped[str] = mapped_column(String(64), default="", server_default="")
    dims: Mapped[str] = mapped_column(String(512))


class Run(Base):
    """One invocation working on one Optuna study; a rerun that resumes the study is a new run."""
    __tablename__ = "nvc_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_name: Mapped[str] = mapped_column(String(256), index=True)
    gpu_id: Mapped[int] = mapped_column(ForeignKey("nvc_gpus.id"))
    kernel_id: Mapped[int] = mapped_column(ForeignKey("nvc_kernels.id"))
    shape_id: Mapped[int] = mapped_column(ForeignKey("nvc_shapes.id"))
    sampler: Mapped[str] = mapped_column(String(16))
    trials_budget: Mapped[int] = mapped_column(Integer)
    timeout_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    host: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|finished|interrupted|failed
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    baseline_us: Mapped[float | None] = mapped_column(Float, nullable=True)
    baseline_spread_us: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The winner after the head-to-head re-timing (a measurement with phase='retime').
    best_measurement_id: Mapped[int | None] = mapped_column(
        ForeignKey("nvc_measurements.id", use_alter=True), nullable=True)

    gpu: Mapped[Gpu] = relationship()
    kernel: Mapped[Kernel] = relationship()
    shape: Mapped[Shape] = relationship()
    best: Mapped["Measurement | None"] = relationship(foreign_keys=[best_measurement_id], post_update=True)


class Measurement(Base):
    """One config timed once (phase 'search': an Optuna trial; phase 'retime': the top-k head to head)."""
    __tablename__ = "nvc_measurements"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("nvc_runs.id"), index=True)
    phase: Mapped[str] = mapped_column(String(8))
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    config: Mapped[dict] = mapped_column(JSON)
    correct: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    median_us: Mapped[float | None] = mapped_column(Float, nullable=True)
    spread_us: Mapped[float | None] = mapped_column(Float, nullable=True)  # interquartile range
    repeats: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tflops: Mapped[float | None] = mapped_column(Float, nullable=True)
    gbps: Mapped[float | None] = mapped_column(Float, nullable=True)
    speedup: Mapped[float | None] = mapped_column(Float, nullable=True)  # baseline median / median
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # WARM_START, SAMPLER or GRID; a re-timed config carries its trial's. NULL: measured before schema 4 (unknown).
    origin: Mapped[str | None] = mapped_column(String(16), nullable=True)

    run: Mapped[Run] = relationship(foreign_keys=[run_id])


class ExportedTable(Base):
    """Every lookup table written by `nvc export-table`, with its full text."""
    __tablename__ = "nvc_exported_tables"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gpu_short_name: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    format_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    content: Mapped[dict] = mapped_column(JSON)

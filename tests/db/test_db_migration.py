"""Schema 1 databases (the epilogue only in study names) migrated to schema 2 by open_engine, on SQLite and PostgreSQL:
rows split per epilogue, Optuna's own alembic table untouched, failures and unknown schemas leaving the database as
it was."""
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
from sqlalchemy import (JSON, BigInteger, Boolean, Column, DateTime, Float, ForeignKey, Integer, MetaData, String,
                        Table, Text, UniqueConstraint, create_engine, inspect, select, text)
from sqlalchemy.engine import Engine

from db import migrations
from db.models import SCHEMA_VERSION
from db.queries import best_results
from db.storage import Recorder, RunKey, StorageError, open_engine, optuna_storage, resolve_url
from tests.db.test_db import GPU

# The nvc_ tables as schema 1 (db/models.py before the epilogue column) created them, written out again here so that
# the test does not trust the baseline revision it checks.
V1 = MetaData()
Table("nvc_schema_version", V1, Column("version", Integer, primary_key=True))
Table("nvc_gpus", V1, Column("id", Integer, primary_key=True), Column("name", String(128), nullable=False),
      Column("short_name", String(32), nullable=False, index=True), Column("sm_count", Integer, nullable=False),
      Column("memory_bytes", BigInteger, nullable=False), Column("driver", String(64), nullable=False),
      Column("torch_version", String(64), nullable=False), Column("triton_version", String(64), nullable=False),
      UniqueConstraint("name", "driver", "torch_version", "triton_version"))
Table("nvc_kernels", V1, Column("id", Integer, primary_key=True),
      Column("name", String(64), nullable=False, unique=True))
Table("nvc_shapes", V1, Column("id", Integer, primary_key=True), Column("M", Integer, nullable=False),
      Column("K", Integer, nullable=False), Column("N", Integer, nullable=False),
      Column("dtype", String(16), nullable=False), UniqueConstraint("M", "K", "N", "dtype"))
Table("nvc_runs", V1, Column("id", Integer, primary_key=True),
      Column("study_name", String(256), nullable=False, index=True),
      Column("gpu_id", Integer, ForeignKey("nvc_gpus.id"), nullable=False),
      Column("kernel_id", Integer, ForeignKey("nvc_kernels.id"), nullable=False),
      Column("shape_id", Integer, ForeignKey("nvc_shapes.id"), nullable=False),
      Column("sampler", String(16), nullable=False), Column("trials_budget", Integer, nullable=False),
      Column("timeout_s", Float), Column("host", String(128), nullable=False),
      Column("status", String(16), nullable=False), Column("started_at", DateTime(timezone=True), nullable=False),
      Column("finished_at", DateTime(timezone=True)), Column("baseline_us", Float), Column("baseline_spread_us", Float),
      Column("best_measurement_id", Integer, ForeignKey("nvc_measurements.id", use_alter=True)))
Table("nvc_measurements", V1, Column("id", Integer, primary_key=True),
      Column("run_id", Integer, ForeignKey("nvc_runs.id"), nullable=False, index=True),
      Column("phase", String(8), nullable=False), Column("trial_number", Integer),
      Column("config", JSON, nullable=False), Column("correct", Boolean, nullable=False), Column("error", Text),
      Column("median_us", Float), Column("spread_us", Float), Column("repeats", Integer), Column("tflops", Float),
      Column("gbps", Float), Column("speedup", Float), Column("created_at", DateTime(timezone=True), nullable=False))
Table("nvc_exported_tables", V1, Column("id", Integer, primary_key=True),
      Column("gpu_short_name", String(32), nullable=False), Column("path", Text, nullable=False),
      Column("format_version", Integer, nullable=False), Column("created_at", DateTime(timezone=True), nullable=False),
      Column("content", JSON, nullable=False))

QKV = "rms_norm_linear|h100|bfloat16|M=16|K=4096|N=12288"
# Four studies that schema 1 kept on one shape row, and the epilogue each was timed with.
STUDIES = {QKV: "", f"{QKV}|rotary=128/8": "rotary=128/8", f"{QKV}|gated": "gated",
           f"{QKV}|rotary=128": ""}  # a name from before 5fb9888: not timed with the epilogue
O_PROJ = "rms_norm_linear|h100|bfloat16|M=16|K=4096|N=4096"  # a shape row of one plain study


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'v1.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")


def make_v1(url: str) -> dict[str, int]:
    """A schema 1 database with Optuna's tables next to ours; returns each study's run id."""
    optuna_storage(url)  # Optuna's tables, with its own alembic_version
    engine = create_engine(resolve_url(url))
    if engine.dialect.name == "sqlite":
        with engine.connect() as c:
            c.exec_driver_sql("PRAGMA journal_mode=WAL")  # as schema 1 left its files
    V1.create_all(engine)
    t, now, runs = V1.tables, datetime.now(timezone.utc), {}
    with engine.begin() as c:
        def add(table: str, **row) -> int:
            return c.execute(t[table].insert().values(**row)).inserted_primary_key[0]

        c.execute(t["nvc_schema_version"].insert().values(version=1))
        gpu = add("nvc_gpus", name=GPU["name"], short_name=GPU["short_name"], sm_count=GPU["sm_count"],
                  memory_bytes=GPU["memory_bytes"], driver=GPU["driver"], torch_version=GPU["torch"],
                  triton_version=GPU["triton"])
        kernel = add("nvc_kernels", name="rms_norm_linear")
        qkv = add("nvc_shapes", M=16, K=4096, N=12288, dtype="bfloat16")
        o_proj = add("nvc_shapes", M=16, K=4096, N=4096, dtype="bfloat16")
        for i, name in enumerate([*STUDIES, O_PROJ]):
            run = add("nvc_runs", study_name=name, gpu_id=gpu, kernel_id=kernel, shape_id=o_proj if name == O_PROJ
                      else qkv, sampler="tpe", trials_budget=3, host="h", status="finished", started_at=now,
                      finished_at=now, baseline_us=40.0)
            best = add("nvc_measurements", run_id=run, phase="retime", config={"BLOCK_M": 16}, correct=True,
                       median_us=10.0 + i, speedup=40.0 / (10.0 + i), created_at=now)
            c.execute(t["nvc_runs"].update().where(t["nvc_runs"].c.id == run).values(best_measurement_id=best))
            runs[name] = run
    engine.dispose()
    return runs


def dump(url: str) -> dict:
    """Every table's columns, constraints and rows."""
    engine = create_engine(resolve_url(url))
    try:
        insp, out = inspect(engine), {}
        with engine.connect() as c:
            for name in sorted(insp.get_table_names()):
                rows = c.execute(select(Table(name, MetaData(), autoload_with=c))).all()
                out[name] = (schema_of(insp, name), sorted(map(repr, rows)))
        return out
    finally:
        engine.dispose()


def schema_of(insp, table: str) -> tuple:
    # Not the runs -> best measurement key: once a process has created it on PostgreSQL (an ALTER TABLE), SQLAlchemy
    # leaves it out of every later CREATE TABLE of the same MetaData, SQLite's included.
    fks = [fk for fk in insp.get_foreign_keys(table) if fk["constrained_columns"] != ["best_measurement_id"]]
    return ([(col["name"], str(col["type"]), col["nullable"], col["default"]) for col in insp.get_columns(table)],
            sorted((uq["name"] or "", uq["column_names"]) for uq in insp.get_unique_constraints(table)),
            sorted((fk["constrained_columns"], fk["referred_table"]) for fk in fks),
            sorted((ix["name"], ix["column_names"], ix["unique"]) for ix in insp.get_indexes(table)))


def nvc_schema(url: str) -> dict:
    return {name: tables[0] for name, tables in dump(url).items() if name.startswith("nvc_")}


def advance_sequences(c) -> None:
    """After rows inserted with explicit ids, move PostgreSQL's id sequences past them (SQLite needs nothing), as a
    database written by the tuner has them: else the first row the migrated database gets collides with id 1."""
    if c.dialect.name != "postgresql":
        return
    for table in ("nvc_gpus", "nvc_kernels", "nvc_shapes", "nvc_runs", "nvc_measurements", "nvc_exported_tables"):
        c.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                       f"COALESCE((SELECT max(id) FROM {table}), 0) + 1, false)"))


def scalars(engine: Engine, sql: str) -> list:
    with engine.connect() as c:
        return c.execute(text(sql)).scalars().all()


def test_the_revisions_make_the_current_schema(tmp_path):
    assert migrations.head() == migrations.revision(SCHEMA_VERSION)
    fresh, chained = f"sqlite:///{tmp_path / 'fresh.db'}", f"sqlite:///{tmp_path / 'chained.db'}"
    open_engine(fresh).dispose()
    engine = create_engine(chained)
    with engine.begin() as c:
        migrations.upgrade(c)  # from an empty database through every revision
    engine.dispose()
    assert nvc_schema(chained) == nvc_schema(fresh)


@pytest.mark.parametrize("create", [True, False], ids=["tune", "read-only"])
def test_a_schema_1_database_is_migrated_in_place(url, tmp_path, create):
    runs = make_v1(url)
    optuna_before = dump(url)["alembic_version"]
    engine = open_engine(url, create=create)

    assert scalars(engine, "SELECT version FROM nvc_schema_version") == [SCHEMA_VERSION]
    assert scalars(engine, "SELECT version_num FROM nvc_alembic_version") == [migrations.head()]
    assert dump(url)["alembic_version"] == optuna_before
    assert [(uq["name"], uq["column_names"]) for uq in inspect(engine).get_unique_constraints("nvc_shapes")] == [
        ("uq_nvc_shapes_dims_dtype_form", ["dims", "dtype", "form"])]  # through schema 2 to 3
    with engine.connect() as c:
        shapes = [(id_, json.loads(dims)["N"], form)
                  for id_, dims, form in c.execute(text("SELECT id, dims, form FROM nvc_shapes")).all()]
        run_shape = dict(c.execute(text("SELECT id, shape_id FROM nvc_runs")).all())
    assert sorted((n, form) for _, n, form in shapes) == [(4096, ""), (12288, ""), (12288, "gated"),
                                                          (12288, "rotary=128/8")]
    shape_form = {id_: form for id_, _, form in shapes}
    assert {name: shape_form[run_shape[run]] for name, run in runs.items()} == {**STUDIES, O_PROJ: ""}
    old_row = min(id_ for id_, n, _ in shapes if n == 12288)  # the plain studies keep the row they shared
    assert run_shape[runs[QKV]] == run_shape[runs[f"{QKV}|rotary=128"]] == old_row
    best = best_results(engine)
    assert dict(zip(best["study_name"], best["form"])) == {**STUDIES, O_PROJ: ""}
    assert dict(zip(best["study_name"], best["median_us"]))[f"{QKV}|gated"] == 12.0

    # A new run of a migrated study finds its split row; Optuna still opens its storage.
    gated = Recorder(engine).start_run(GPU, RunKey(f"{QKV}|gated", "rms_norm_linear", dict(M=16, K=4096, N=12288),
                                                   "bfloat16", "tpe", 3, None, form="gated"))
    assert scalars(engine, f"SELECT shape_id FROM nvc_runs WHERE id = {gated}") == [run_shape[runs[f"{QKV}|gated"]]]
    optuna_storage(url)
    engine.dispose()

    if url.startswith("sqlite"):  # a migrated database is a fresh one with rows
        fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
        open_engine(fresh).dispose()
        assert nvc_schema(url) == nvc_schema(fresh)
    before = dump(url)
    open_engine(url).dispose()
    assert dump(url) == before  # migrated once: reopening changes nothing


def test_a_failed_migration_leaves_the_schema_1_database_as_it_was(url, monkeypatch):
    make_v1(url)
    before = dump(url)
    digest = hashlib.sha256(open(url.removeprefix("sqlite:///"), "rb").read()).hexdigest() \
        if url.startswith("sqlite") else None
    upgrade = migrations.upgrade

    def upgrade_then_fail(conn) -> None:
        upgrade(conn)
        raise RuntimeError("disk full, say")

    monkeypatch.setattr(migrations, "upgrade", upgrade_then_fail)
    with pytest.raises(StorageError, match=rf"migrating the tuning schema to version {SCHEMA_VERSION} failed "
                                           r"\(disk full, say\); the database is left as it was$"):
        open_engine(url)
    assert dump(url) == before
    if digest:
        assert hashlib.sha256(open(url.removeprefix("sqlite:///"), "rb").read()).hexdigest() == digest
    monkeypatch.undo()
    open_engine(url).dispose()
    assert "form" in {col[0] for col in dump(url)["nvc_shapes"][0][0]}


def test_workers_opening_a_schema_1_database_at_once_migrate_it_once(url):
    make_v1(url)
    with ThreadPoolExecutor(4) as pool:
        for engine in pool.map(lambda _: open_engine(url), range(4)):
            engine.dispose()
    shapes = dump(url)["nvc_shapes"][1]
    assert len(shapes) == 4 and dump(url)["nvc_alembic_version"][1] == [repr((migrations.head(),))]


NEWER = SCHEMA_VERSION + 1


@pytest.mark.parametrize("version, revision, says", [
    (NEWER, migrations.revision(NEWER), f"tuning schema version {NEWER}, this code reads version {SCHEMA_VERSION}"),
    (SCHEMA_VERSION, "ffffffffffff", "at migration revision ffffffffffff, which this code does not know"),
    (SCHEMA_VERSION, None, "at migration revision none, which this code does not know"),
    (1, migrations.head(), f"version 1 at migration revision {migrations.head()}, which this code does not know"),
], ids=["newer", "unknown-revision", "no-revision", "contradictory"])
def test_unknown_schemas_are_refused_in_one_line_and_left_unaltered(url, version, revision, says):
    open_engine(url).dispose()
    engine = create_engine(resolve_url(url))
    with engine.begin() as c:
        c.execute(text("UPDATE nvc_schema_version SET version = :v"), {"v": version})
        if revision is None:
            c.execute(text("DROP TABLE nvc_alembic_version"))
        else:
            c.execute(text("UPDATE nvc_alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()
    before = dump(url)
    with pytest.raises(StorageError) as e:
        open_engine(url, create=False)
    assert says in str(e.value) and "\n" not in str(e.value)
    assert dump(url) == before

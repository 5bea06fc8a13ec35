"""Schema 3 databases (no origin of a measurement) migrated to schema 4 by open_engine: every row kept, the old
measurements' origin NULL (unknown, and so shown), on SQLite and PostgreSQL; a failure leaves it as it was."""
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from db import migrations
from db.models import SCHEMA_VERSION, WARM_START
from db.queries import search_split
from db.storage import Recorder, RunKey, StorageError, open_engine, optuna_storage, resolve_url
from tests.db.test_db import GPU
from tests.db.test_db_migration import advance_sequences, dump, nvc_schema, scalars


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'v3.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")


def make_v3(url: str) -> None:
    """A schema 3 database (the revisions up to 0003, which the older tests check): a finished run of two search
    trials and its re-timed winner."""
    optuna_storage(url)
    engine = create_engine(resolve_url(url))
    with engine.begin() as c:
        migrations.upgrade(c, migrations.revision(3))
        c.execute(text("INSERT INTO nvc_gpus (id, name, short_name, sm_count, memory_bytes, driver, torch_version, "
                       "triton_version) VALUES (1, 'H100', 'h100', 132, 1, 'd', 't', 'tr')"))
        c.execute(text("INSERT INTO nvc_kernels (id, name) VALUES (1, 'rms_norm_linear')"))
        c.execute(text("INSERT INTO nvc_shapes (id, dims, dtype, form) VALUES (7, :dims, 'float16', '')"),
                  dict(dims='{"K":64,"M":1,"N":96}'))
        c.execute(text("INSERT INTO nvc_runs (id, study_name, gpu_id, kernel_id, shape_id, sampler, trials_budget, "
                       "host, status, started_at, finished_at, baseline_us) VALUES (1, 's', 1, 1, 7, 'tpe', 2, 'h', "
                       "'finished', '2026-01-01', '2026-01-01', 40.0)"))
        for i, (phase, trial, us) in enumerate([("search", 0, 12.0), ("search", 1, 10.0), ("retime", None, 10.5)], 1):
            c.execute(text("INSERT INTO nvc_measurements (id, run_id, phase, trial_number, config, correct, "
                           "median_us, spread_us, created_at) VALUES (:i, 1, :phase, :trial, '{\"BLOCK_M\": 16}', "
                           "true, :us, 0.1, '2026-01-01')"), dict(i=i, phase=phase, trial=trial, us=us))
        c.execute(text("UPDATE nvc_runs SET best_measurement_id = 3 WHERE id = 1"))
        advance_sequences(c)
    engine.dispose()


def test_a_schema_3_database_is_migrated_in_place(url, tmp_path):
    make_v3(url)
    before = dump(url)
    engine = open_engine(url, create=False)
    assert scalars(engine, "SELECT version FROM nvc_schema_version") == [SCHEMA_VERSION] == [4]
    assert scalars(engine, "SELECT version_num FROM nvc_alembic_version") == [migrations.head()]
    assert scalars(engine, "SELECT origin FROM nvc_measurements ORDER BY id") == [None] * 3
    with engine.connect() as c:
        rows = c.execute(text("SELECT id, run_id, phase, trial_number, median_us FROM nvc_measurements "
                              "ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, 1, "search", 0, 12.0), (2, 1, "search", 1, 10.0),
                                        (3, 1, "retime", None, 10.5)]
    for table in ("nvc_runs", "nvc_shapes", "nvc_gpus", "nvc_kernels", "alembic_version"):
        assert dump(url)[table] == before[table]  # nothing but the measurements changed
    # Unknown origins read as unknown: no warm start, no sampler trial, no winner's origin; the best still counts.
    split = search_split(engine).iloc[0]
    assert split["best_from"] is None and split["warm_config"] is None and split["sampler_config"] is None
    assert pd.isna(split["gain"]) and split["trials"] == 2 and split["best_at"] == 1
    assert split["best_step"] == 2
    # A new measurement of the migrated run records its origin.
    Recorder(engine).add_measurement(1, phase="search", trial_number=2, config={"BLOCK_M": 16}, correct=True,
                                     median_us=11.0, origin=WARM_START)
    assert scalars(engine, "SELECT origin FROM nvc_measurements WHERE trial_number = 2") == [WARM_START]
    engine.dispose()
    if url.startswith("sqlite"):
        fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
        open_engine(fresh).dispose()
        assert nvc_schema(url) == nvc_schema(fresh)
    before = dump(url)
    open_engine(url).dispose()
    assert dump(url) == before  # migrated once: reopening changes nothing



def test_a_failed_migration_leaves_the_schema_3_database_as_it_was(url, monkeypatch):
    make_v3(url)
    before = dump(url)
    upgrade = migrations.upgrade

    def upgrade_then_fail(conn) -> None:
        upgrade(conn)
        raise RuntimeError("disk full, say")

    monkeypatch.setattr(migrations, "upgrade", upgrade_then_fail)
    with pytest.raises(StorageError, match=r"migrating the tuning schema to version 4 failed \(disk full, say\)"):
        open_engine(url)
    assert dump(url) == before

"""Schema 2 databases (a shape's M, K and N as columns) migrated through schema 3 (its dims as one text column) by
open_engine: every row kept with its id, runs and results, on SQLite and PostgreSQL; a failure leaves it as it was."""
import pytest
from sqlalchemy import create_engine, text

from db import migrations
from db.models import SCHEMA_VERSION
from db.queries import best_results
from db.storage import Recorder, RunKey, StorageError, open_engine, optuna_storage, resolve_url
from tests.db.test_db import GPU
from tests.db.test_db_migration import advance_sequences, dump, nvc_schema, scalars

SHAPES = [(1, 4096, 12288, "rotary=128/8"), (16, 4096, 12288, ""), (16, 11008, 4096, "")]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'v2.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")


def make_v2(url: str) -> None:
    """A schema 2 database (the revisions up to 0002, which the schema 1 tests check) with a finished run per shape."""
    optuna_storage(url)
    engine = create_engine(resolve_url(url))
    with engine.begin() as c:
        migrations.upgrade(c, migrations.revision(2))
        c.execute(text("INSERT INTO nvc_gpus (id, name, short_name, sm_count, memory_bytes, driver, torch_version, "
                       "triton_version) VALUES (1, 'H100', 'h100', 132, 1, 'd', 't', 'tr')"))
        c.execute(text("INSERT INTO nvc_kernels (id, name) VALUES (1, 'rms_norm_linear')"))
        for i, (M, K, N, form) in enumerate(SHAPES, start=1):
            c.execute(text('INSERT INTO nvc_shapes (id, "M", "K", "N", dtype, epilogue) VALUES (:i, :M, :K, :N, '
                           "'bfloat16', :form)"), dict(i=10 * i, M=M, K=K, N=N, form=form))
            c.execute(text("INSERT INTO nvc_runs (id, study_name, gpu_id, kernel_id, shape_id, sampler, trials_budget, "
                           "host, status, started_at, finished_at, baseline_us) VALUES (:i, :name, 1, 1, :shape, "
                           "'tpe', 3, 'h', 'finished', '2026-01-01', '2026-01-01', 40.0)"),
                      dict(i=i, name=f"s{i}", shape=10 * i))
            c.execute(text("INSERT INTO nvc_measurements (id, run_id, phase, config, correct, median_us, speedup, "
                           "created_at) VALUES (:i, :i, 'retime', '{\"BLOCK_M\": 16}', true, 10.0, 4.0, "
                           "'2026-01-01')"), dict(i=i))
            c.execute(text("UPDATE nvc_runs SET best_measurement_id = :i WHERE id = :i"), dict(i=i))
        advance_sequences(c)
    engine.dispose()


def test_a_schema_2_database_is_migrated_in_place(url, tmp_path):
    make_v2(url)
    before = dump(url)
    engine = open_engine(url, create=False)
    assert scalars(engine, "SELECT version FROM nvc_schema_version") == [SCHEMA_VERSION]
    assert scalars(engine, "SELECT version_num FROM nvc_alembic_version") == [migrations.head()]
    with engine.connect() as c:
        rows = c.execute(text("SELECT id, dims, dtype, form FROM nvc_shapes ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(10 * i, f'{{"K":{K},"M":{M},"N":{N}}}', "bfloat16", form)
                                        for i, (M, K, N, form) in enumerate(SHAPES, start=1)]
    for table in ("nvc_runs", "nvc_gpus", "nvc_kernels", "alembic_version"):
        assert dump(url)[table] == before[table]  # nothing but the shapes changed (and schema 4's origin column)
    assert scalars(engine, "SELECT id FROM nvc_measurements ORDER BY id") == [1, 2, 3]
    best = best_results(engine)
    assert list(zip(best["M"], best["K"], best["N"], best["form"])) == sorted(
        SHAPES, key=lambda s: (s[1], s[2], s[0]))
    # A new run of a migrated shape finds its row.
    run = Recorder(engine).start_run(GPU, RunKey("s1", "rms_norm_linear", dict(M=1, K=4096, N=12288), "bfloat16",
                                                 "tpe", 3, None, form="rotary=128/8"))
    assert scalars(engine, f"SELECT shape_id FROM nvc_runs WHERE id = {run}") == [10]
    engine.dispose()
    if url.startswith("sqlite"):
        fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
        open_engine(fresh).dispose()
        assert nvc_schema(url) == nvc_schema(fresh)


def test_a_failed_migration_leaves_the_schema_2_database_as_it_was(url, monkeypatch):
    make_v2(url)
    before = dump(url)
    upgrade = migrations.upgrade

    def upgrade_then_fail(conn) -> None:
        upgrade(conn)
        raise RuntimeError("disk full, say")

    monkeypatch.setattr(migrations, "upgrade", upgrade_then_fail)
    with pytest.raises(StorageError,
                       match=rf"migrating the tuning schema to version {SCHEMA_VERSION} failed \(disk full, say\)"):
        open_engine(url)
    assert dump(url) == before

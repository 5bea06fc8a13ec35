"""Our tables next to Optuna's: created on first use, versioned, refused when the version is unknown (migrations:
tests/db/test_db_migration.py)."""
import hashlib

import pytest
from sqlalchemy import create_engine, inspect, text

from db import migrations
from db.models import SCHEMA_VERSION
from db.queries import best_results
from db.storage import Recorder, RunKey, StorageError, open_engine, optuna_storage
from tests.conftest import PG_UNREACHABLE

GPU = dict(name="NVIDIA H100 80GB HBM3", short_name="h100", sm_count=132, memory_bytes=80 << 30, driver="550",
           torch="2.11", triton="3.6.0")


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_schema_is_created_on_first_use_next_to_optunas(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    engine = open_engine(url)
    optuna_storage(url)
    tables = set(inspect(engine).get_table_names())
    assert {"nvc_schema_version", "nvc_gpus", "nvc_shapes", "nvc_kernels", "nvc_runs", "nvc_measurements",
            "nvc_exported_tables", "studies", "trials"} <= tables
    with engine.connect() as c:
        assert c.execute(text("SELECT version FROM nvc_schema_version")).scalars().all() == [SCHEMA_VERSION]
        assert c.execute(text("SELECT version_num FROM nvc_alembic_version")).scalars().all() == [migrations.head()]
    assert {"dims", "form"} <= {col["name"] for col in inspect(engine).get_columns("nvc_shapes")}
    open_engine(url)  # reopening is fine


@pytest.mark.parametrize("version", [0, SCHEMA_VERSION + 1])
def test_unknown_schema_versions_are_refused_and_the_file_left_untouched(tmp_path, version):
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    open_engine(url).dispose()
    with create_engine(url).begin() as c:
        c.execute(text("UPDATE nvc_schema_version SET version = :v"), {"v": version})
    before = _digest(path)
    with pytest.raises(StorageError, match=f"schema version {version}, this code reads version {SCHEMA_VERSION}"):
        open_engine(url)
    assert _digest(path) == before


def test_unversioned_tables_are_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with create_engine(url).begin() as c:
        c.execute(text("CREATE TABLE nvc_runs (id INTEGER PRIMARY KEY)"))
    with pytest.raises(StorageError, match="no schema version"):
        open_engine(url)


def test_not_a_database_and_bad_urls_are_one_clear_error(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="cannot use the database"):
        open_engine(f"sqlite:///{junk}")
    assert junk.read_bytes() == b"this is not sqlite" * 100
    with pytest.raises(StorageError, match="not a valid database URL"):
        open_engine("not a url")
    with pytest.raises(StorageError, match=PG_UNREACHABLE):
        open_engine("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StorageError, match="no database file"):
        open_engine(f"sqlite:///{tmp_path / 'absent.db'}", create=False)


def test_best_results_takes_the_latest_finished_run_of_each_study(tmp_path):
    engine = open_engine(f"sqlite:///{tmp_path / 'r.db'}")
    rec = Recorder(engine)
    key = RunKey("s1", "rms_norm_linear", dict(M=16, K=4096, N=12288), "bfloat16", "tpe", 10, None)
    for median, status in [(30.0, "finished"), (25.0, "finished"), (10.0, "interrupted")]:
        run = rec.start_run(GPU, key)
        rec.set_baseline(run, 40.0, 0.5)
        m = rec.add_measurement(run, phase="retime", trial_number=None, config={"BLOCK_M": 16}, correct=True,
                                median_us=median, spread_us=0.1, speedup=40.0 / median)
        rec.finish_run(run, status, m if status == "finished" else None)
    best = best_results(engine)
    assert len(best) == 1 and best.loc[0, "median_us"] == 25.0 and best.loc[0, "gpu"] == "h100"
    assert best_results(engine, "a100").empty
    assert rec.finished_best("s1").median_us == 25.0
    assert best.loc[0, "form"] == "" and best.loc[0, "dims"] == dict(M=16, K=4096, N=12288)
    assert (best.loc[0, "K"], best.loc[0, "N"], best.loc[0, "M"]) == (4096, 12288, 16)


def test_a_plugin_problem_is_a_shape_row_of_its_own_dims(tmp_path):
    engine = open_engine(f"sqlite:///{tmp_path / 'p.db'}")
    rec = Recorder(engine)
    run = rec.start_run(GPU, RunKey("sm", "mod:Space", dict(rows=4, cols=100), "float16", "tpe", 3, None))
    m = rec.add_measurement(run, phase="retime", trial_number=None, config={"BLOCK": 128}, correct=True,
                            median_us=5.0, spread_us=0.1, speedup=1.2)
    rec.finish_run(run, "finished", m)
    with engine.connect() as c:
        assert c.execute(text("SELECT dims, form FROM nvc_shapes")).all() == [('{"cols":100,"rows":4}', "")]
    best = best_results(engine)
    assert best.loc[0, "dims"] == dict(cols=100, rows=4) and best["M"].isna().all()


def test_each_epilogue_of_a_shape_is_its_own_shape_row(tmp_path):
    engine = open_engine(f"sqlite:///{tmp_path / 'e.db'}")
    rec = Recorder(engine)
    for name, form in [("plain", ""), ("gated", "gated"), ("rotary", "rotary=128/8"), ("again", "gated")]:
        run = rec.start_run(GPU, RunKey(name, "rms_norm_linear", dict(M=16, K=4096, N=12288), "bfloat16", "tpe", 3,
                                        None, form=form))
        m = rec.add_measurement(run, phase="retime", trial_number=None, config={"BLOCK_M": 16}, correct=True,
                                median_us=5.0, spread_us=0.1, speedup=1.2)
        rec.finish_run(run, "finished", m)
    with engine.connect() as c:
        assert sorted(c.execute(text("SELECT form FROM nvc_shapes")).scalars()) == ["", "gated", "rotary=128/8"]
    best = best_results(engine)
    assert dict(zip(best["study_name"], best["form"])) == {
        "plain": "", "gated": "gated", "rotary": "rotary=128/8", "again": "gated"}


@pytest.mark.postgres
def test_postgresql_works_the_same(pg_url):
    engine = open_engine(pg_url)
    optuna_storage(pg_url)
    rec = Recorder(engine)
    run = rec.start_run(GPU, RunKey("s", "rms_norm_linear", dict(M=1, K=64, N=64), "float16", "tpe", 3, 5.0))
    m = rec.add_measurement(run, phase="retime", trial_number=None, config={"BLOCK_M": 16}, correct=True,
                            median_us=5.0, spread_us=0.1, speedup=1.2)
    rec.finish_run(run, "finished", m)
    assert best_results(engine).loc[0, "speedup"] == 1.2
    with engine.begin() as c:
        c.execute(text("UPDATE nvc_schema_version SET version = 99"))
    engine.dispose()
    with pytest.raises(StorageError, match="schema version 99"):
        open_engine(pg_url)

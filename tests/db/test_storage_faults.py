"""db.storage on a database that cannot be used: which URLs do not persist, the integrity check and the write probe
of open_engine, the errors of SQLite (also behind Optuna's) as one StorageError, and an exported table recorded only
together with its file (the commands: tests/cli/test_storage_faults.py)."""
import hashlib
import re
import sqlite3

import optuna
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from db.models import ExportedTable
from db.queries import best_results
from db.storage import (Recorder, StorageError, check_persistent, open_engine, optuna_storage, storage_error,
                        storage_errors)

FULL = "cannot use the database (database or disk is full): its disk (or size limit) is full: free space, then rerun"


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite+pysqlite:///:memory:",
                                 "sqlite:///file::memory:?cache=shared&uri=true", "sqlite:///file:?uri=true",
                                 "sqlite:///file:t.db?mode=memory&uri=true", "sqlite:///file:/t.db?vfs=memdb&uri=true"])
def test_databases_that_do_not_persist_are_refused(url):
    expected = re.escape(f"--storage {url}: an in-memory or temporary SQLite database is lost")
    with pytest.raises(StorageError, match=f"^{expected}"):
        check_persistent(url)


@pytest.mark.parametrize("url", ["sqlite:///tuning.db", "sqlite:////data/tuning.db", "sqlite:///file:t.db?uri=true",
                                 "postgresql://user@host/db", "not a url"])
def test_databases_that_persist_pass(url):
    assert check_persistent(url) == url


def _tuned(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 't.db'}"
    open_engine(url).dispose()
    optuna_storage(url)
    return url


def test_a_damaged_file_is_refused_to_readers_and_writers_and_left_as_it_was(tmp_path):
    url, path = _tuned(tmp_path), tmp_path / "t.db"
    with sqlite3.connect(path) as c:
        page = c.execute("SELECT rootpage FROM sqlite_master WHERE name = 'nvc_runs'").fetchone()[0]
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as f:
        f.seek((page - 1) * 4096)
        f.write(b"\xa5" * 16)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    for create in (True, False):
        # SQLite's own words for the damage vary by version ("Page 11: ...", "Tree 11 page 11: ...").
        with pytest.raises(StorageError, match=rf"\(integrity check failed: (Tree \d+ )?[Pp]age {page}: "
                                               rf"btreeInitPage\(\) .*; "
                                               r"nothing was written to it$"):
            open_engine(url, create=create)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_read_only_database_is_refused_to_a_writer_at_open_and_read_by_a_reader(tmp_path):
    _tuned(tmp_path)
    # SQLite's own read-only mode: what a file this user may not write gives (tests/cli covers those files).
    url = f"sqlite:///file:{tmp_path / 't.db'}?mode=ro&uri=true"
    with pytest.raises(StorageError, match=r"\(attempt to write a readonly database\): it is read-only here: make "
                                           r"the file and its folder writable, or pass another --storage$"):
        open_engine(url)
    assert best_results(open_engine(url, writes=False)).empty


def test_optuna_creating_its_tables_in_a_read_only_database_is_a_storage_error(tmp_path):
    path = tmp_path / "ours.db"
    open_engine(f"sqlite:///{path}").dispose()  # our tables only
    with pytest.raises(StorageError, match=r"\(attempt to write a readonly database\): it is read-only here"):
        optuna_storage(f"sqlite:///file:{path}?mode=ro&uri=true")


@pytest.fixture
def full(tmp_path) -> str:
    """A database that cannot grow by a page (SQLite says "database or disk is full"), for every engine on it."""
    url = _tuned(tmp_path)
    optuna.create_study(study_name="s", storage=url)
    with sqlite3.connect(tmp_path / "t.db") as c:
        pages = c.execute("PRAGMA page_count").fetchone()[0]

    def limit(dbapi_conn, _record):
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(Engine, "connect", limit)
    yield url
    event.remove(Engine, "connect", limit)


def _exported(engine) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(ExportedTable))


def test_an_exported_table_the_database_cannot_take_is_not_written(full):
    engine, written = open_engine(full), []
    with pytest.raises(StorageError, match=f"^{re.escape(f'--storage {full}: {FULL}')}$"), storage_errors(full):
        Recorder(engine).add_exported_table("h100", "t.json", {"format_version": 1, "pad": "x" * 100_000},
                                            write=lambda: written.append(True))
    assert written == [] and _exported(engine) == 0


def test_an_exported_table_whose_file_cannot_be_written_is_not_recorded(tmp_path):
    engine = open_engine(_tuned(tmp_path))

    def disk_full():
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        Recorder(engine).add_exported_table("h100", "t.json", {"format_version": 1}, write=disk_full)
    assert _exported(engine) == 0


def test_the_error_behind_optunas_is_named(full):
    storage = optuna_storage(full)
    with pytest.raises(optuna.exceptions.StorageInternalError) as e:  # "... e.g. exceeding max length"
        storage.set_study_user_attr(storage.get_study_id_from_name("s"), "pad", "x" * 100_000)
    assert str(storage_error(full, e.value)) == f"--storage {full}: {FULL}"

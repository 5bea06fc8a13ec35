"""One database for Optuna's tables and ours: engine set-up, the schema-version check, and our writes.

The URL is any SQLAlchemy URL: `sqlite:///tuning.db` (embedded, one writer per study) or
`postgresql://user@host/db` (shared between machines, several writers per study).
A database of the previous schema is migrated (db/migrations) in one transaction; one of a schema this code does
not know is refused before anything is written, and so is an SQLite file that fails its integrity check. Every way
the database can fail (unreachable, read-only, locked, full, damaged) is one StorageError naming it and saying what
to do, which the commands print as their one line.
"""
from __future__ import annotations

import importlib.util
import socket
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import optuna
from sqlalchemy import create_engine, event, insert, inspect, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from db import migrations
from db.models import (SCHEMA_VERSION, Base, ExportedTable, Gpu, Kernel, Measurement, Run, SchemaVersion, Shape,
                       dims_text, utcnow)

DEFAULT_URL = "sqlite:///tuning.db"
# SQLite serializes writers with a file lock; writers of other studies wait instead of failing.
_SQLITE_BUSY_TIMEOUT_S = 120
_SCHEMA_LOCK_KEY = 0x6E7663  # "nvc"


class StorageError(RuntimeError):
    """The database cannot be used: unreachable, not a database, or another schema version."""


def redact(url: str) -> str:
    """`url` with its password hidden (as given when it has none: rendering would escape sqlite:///:memory:)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


def check_persistent(url: str) -> str:
    """`url`, unless it names an SQLite database that lives only as long as its process (in memory, or the
    temporary file of an empty name): a tune into it would be lost, so the commands refuse it before anything runs."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # open_engine says what is wrong with it
    if parsed.get_backend_name() != "sqlite":
        return url
    name = (parsed.database or "").removeprefix("file:")  # a URI filename (`?uri=true`): file::memory:
    if name in ("", ":memory:") or parsed.query.get("mode") == "memory" or parsed.query.get("vfs") == "memdb":
        raise StorageError(f"--storage {redact(url)}: an in-memory or temporary SQLite database is lost when the "
                           f"command exits; expected one that persists: a file (sqlite:///tuning.db) or a server "
                           f"(postgresql://user@host/db)")
    return url


def resolve_url(url: str) -> str:
    """`postgresql://` means psycopg 3 to SQLAlchemy 2.1; fall back to psycopg2 when only that is installed."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def engine_kwargs(url: str) -> dict:
    if make_url(url).get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": _SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def _enable_wal(engine: Engine) -> None:
    # WAL lets readers (the dashboard, `show`) proceed while a tuner writes; it persists in the file.
    @event.listens_for(engine, "connect")
    def _pragma(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA journal_mode=WAL")


_FRESH = "fresh"


def _pending(conn: Connection, url: str) -> str | None:
    """What opening must do first: _FRESH (no nvc_ tables yet), the revision to migrate from, or None (current).
    Raises StorageError for a schema this code does not know."""
    tables = set(inspect(conn).get_table_names())
    if not any(t.startswith("nvc_") for t in tables):
        return _FRESH
    if SchemaVersion.__tablename__ not in tables:
        raise StorageError(f"{redact(url)}: has nvc_ tables but no schema version; refusing to touch it")
    found = conn.scalars(select(SchemaVersion.version)).all()
    if len(found) != 1 or not 1 <= found[0] <= SCHEMA_VERSION:
        raise StorageError(f"{redact(url)}: tuning schema version {found[0] if found else 'missing'}, this code "
                           f"reads version {SCHEMA_VERSION}; use another --storage or a matching nano-vllm-coconut")
    if migrations.VERSION_TABLE in tables:
        revision = conn.execute(text(f"SELECT version_num FROM {migrations.VERSION_TABLE}")).scalar()
    else:
        revision = migrations.BASELINE if found == [1] else None  # schema 1 predates alembic
    if revision != migrations.revision(found[0]):
        raise StorageError(f"{redact(url)}: tuning schema version {found[0]} at migration revision "
                           f"{revision or 'none'}, which this code does not know; refusing to touch it")
    return None if found[0] == SCHEMA_VERSION else revision


# What to do about an SQLite error, by its primary result code.
_SQLITE_ADVICE = {
    sqlite3.SQLITE_READONLY: "it is read-only here: make the file and its folder writable, or pass another --storage",
    sqlite3.SQLITE_CANTOPEN: "check that the file and its folder exist and that this user may read and write both "
                             "(SQLite keeps -wal and -shm files beside it)",
    sqlite3.SQLITE_BUSY: "another process has held its write lock for over {timeout} s: let it finish or stop it, "
                         "then rerun",
    sqlite3.SQLITE_FULL: "its disk (or size limit) is full: free space, then rerun",
    sqlite3.SQLITE_CORRUPT: "the file is damaged: restore it from a backup or pass another --storage",
    sqlite3.SQLITE_NOTADB: "the file is damaged or not an SQLite database: restore it from a backup or pass another "
                           "--storage",
    sqlite3.SQLITE_IOERR: "reading or writing the file failed: check the disk it is on",
}
_SQLITE_ADVICE[sqlite3.SQLITE_LOCKED] = _SQLITE_ADVICE[sqlite3.SQLITE_BUSY]


def storage_error(url: str, e: BaseException) -> StorageError:
    """`e`, a database error (SQLAlchemy's, or Optuna's wrapping one) met while using `url`, as one StorageError:
    the driver's reason and, for SQLite, what to do."""
    driver = e
    while driver is not None and not isinstance(driver, DBAPIError):  # Optuna chains SQLAlchemy's as the cause
        driver = driver.__cause__ or driver.__context__
    driver = e if driver is None or driver.orig is None else driver.orig
    reason = str(driver).strip().splitlines()[0] if str(driver).strip() else type(driver).__name__
    code = getattr(driver, "sqlite_errorcode", None)  # the extended result code; its low byte is the primary one
    advice = _SQLITE_ADVICE.get(code & 0xFF) if isinstance(code, int) else None
    advice = f": {advice.format(timeout=_SQLITE_BUSY_TIMEOUT_S)}" if advice else ""
    return StorageError(f"--storage {redact(url)}: cannot use the database ({reason}){advice}")


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turns a database error raised inside (reading or writing `url`) into storage_error's StorageError."""
    try:
        yield
    except (DBAPIError, optuna.exceptions.StorageInternalError) as e:
        raise storage_error(url, e) from e


def open_engine(url: str, create: bool = True, writes: bool | None = None) -> Engine:
    """Connect, check the schema version and create our tables on first use (unless create=False).

    An SQLite file is checked first (`_check_sqlite`); `writes` (default: `create`) says the caller will write, so
    a file it cannot write, read-only or locked, is refused now rather than after work was done for it."""
    url = resolve_url(url)
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database and not create:
            if parsed.database != ":memory:" and not Path(parsed.database).is_file():
                raise StorageError(f"--storage {url}: no database file at {parsed.database} (run `nvc tune` first)")
        engine = create_engine(url, **engine_kwargs(url))
    except (ArgumentError, ValueError) as e:
        raise StorageError(f"--storage {url!r}: not a valid database URL ({e})") from None
    except ModuleNotFoundError as e:
        raise StorageError(f"--storage {redact(url)}: database driver missing ({e})") from None
    try:
        with _schema_lock(engine):
            if engine.dialect.name == "sqlite":
                _check_sqlite(engine, url, create if writes is None else writes)
            _check_and_create(engine, url, create)
    except (OperationalError, DatabaseError) as e:
        raise storage_error(url, e) from None
    return engine


def _check_sqlite(engine: Engine, url: str, writes: bool) -> None:
    """Refuse a damaged file before anything reads or writes it: PRAGMA quick_check reads every page, 0.2 s for a
    127 MB database in the page cache and 2 s from disk, where a trial takes about 1.7 kB (10,000 trials: 17 MB).
    A writer then writes the header's user_version unchanged and rolls back: a locked file fails after the busy
    timeout, a read-only one at once (in WAL mode taking the write lock alone succeeds on a read-only file)."""
    with engine.connect() as conn:
        problem = conn.exec_driver_sql("PRAGMA quick_check(1)").scalar()
        if problem != "ok":
            # Its first problem, after the "*** in database main ***" line that heads it.
            problem = next((line for line in problem.splitlines() if not line.startswith("***")), problem)
            raise StorageError(f"--storage {redact(url)}: cannot use the database (integrity check failed: "
                               f"{problem}): {_SQLITE_ADVICE[sqlite3.SQLITE_CORRUPT]}; nothing was written to it")
        if writes:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            version = conn.exec_driver_sql("PRAGMA user_version").scalar()
            conn.exec_driver_sql(f"PRAGMA user_version = {int(version)}")
            conn.rollback()


def _check_and_create(engine: Engine, url: str, create: bool) -> None:
    with engine.connect() as conn:
        pending = _pending(conn, url)
    if pending is None:
        return
    if pending == _FRESH and not create:
        raise StorageError(f"--storage {redact(url)}: holds no tuning results (run `nvc tune` first)")
    if pending == _FRESH and engine.dialect.name == "sqlite":
        _enable_wal(engine)
        engine.dispose()
    # A migration is lossless, so read-only users (create=False) migrate too.
    with _write_transaction(engine) as conn:
        pending = _pending(conn, url)  # again: another process may have done it while we waited for the lock
        if pending == _FRESH:
            Base.metadata.create_all(conn)
            conn.execute(insert(SchemaVersion).values(version=SCHEMA_VERSION))
            migrations.stamp(conn, "head")
        elif pending is not None:
            try:
                if migrations.VERSION_TABLE not in inspect(conn).get_table_names():
                    migrations.stamp(conn, pending)
                migrations.upgrade(conn)
            except Exception as e:
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise StorageError(f"--storage {redact(url)}: migrating the tuning schema to version {SCHEMA_VERSION} "
                                   f"failed ({reason}); the database is left as it was") from e


@contextmanager
def _write_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction for DDL and rows alike, committed at the end. pysqlite would run DDL outside any
    transaction; BEGIN IMMEDIATE also takes SQLite's write lock at once, so processes opening together queue here."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn
        conn.commit()


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    """On PostgreSQL, machines starting at once create or migrate the schema one after the other (an advisory
    lock)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _SCHEMA_LOCK_KEY})


def optuna_storage(url: str, **options) -> optuna.storages.RDBStorage:
    """Optuna's storage on the same database; its tables are created under the same lock as ours.
    `options` go to RDBStorage (the tuner's heartbeat settings: `autotune.heartbeat.tuning_storage`)."""
    url = resolve_url(url)
    try:
        lock_engine = create_engine(url, poolclass=NullPool)
        try:
            with _schema_lock(lock_engine):
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), **options)
        finally:
            lock_engine.dispose()
    except (DBAPIError, optuna.exceptions.StorageInternalError) as e:
        raise storage_error(url, e) from None
    except (ArgumentError, RuntimeError) as e:  # RuntimeError: Optuna's tables are of another Optuna version
        raise StorageError(f"--storage {redact(url)}: Optuna cannot use it ({str(e).splitlines()[0]})") from None


def _get_or_create(s: Session, model, defaults: dict | None = None, **key):
    row = s.scalars(select(model).filter_by(**key)).first()
    if row is None:
        row = model(**key, **(defaults or {}))
        s.add(row)
        s.flush()
    return row


@dataclass(frozen=True)
class RunKey:
    study_name: str
    kernel: str
    dims: dict[str, int]  # the problem's named sizes (M, K, N for the GEMM kernels)
    dtype: str
    sampler: str
    trials_budget: int
    timeout_s: float | None
    form: str = ""  # the problem's variant ("" for none; the GEMM kernels': the epilogue's form, kernels/epilogue.py)


class Recorder:
    """Writes runs and measurements; each call is its own short transaction (Ctrl-C loses nothing finished)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def start_run(self, gpu: dict, key: RunKey) -> int:
        try:
            return self._start_run(gpu, key)
        except IntegrityError:
            # Another worker inserted the same GPU, kernel or shape row first; now it exists.
            return self._start_run(gpu, key)

    def _start_run(self, gpu: dict, key: RunKey) -> int:
        with self.sessions.begin() as s:
            gpu_row = _get_or_create(
                s, Gpu, defaults=dict(short_name=gpu["short_name"], sm_count=gpu["sm_count"],
                                      memory_bytes=gpu["memory_bytes"]),
                name=gpu["name"], driver=gpu["driver"], torch_version=gpu["torch"], triton_version=gpu["triton"])
            kernel = _get_or_create(s, Kernel, name=key.kernel)
            shape = _get_or_create(s, Shape, dims=dims_text(key.dims), dtype=key.dtype, form=key.form)
            run = Run(study_name=key.study_name, gpu_id=gpu_row.id, kernel_id=kernel.id, shape_id=shape.id,
                      sampler=key.sampler, trials_budget=key.trials_budget, timeout_s=key.timeout_s,
                      host=socket.gethostname())
            s.add(run)
            s.flush()
            return run.id

    def set_baseline(self, run_id: int, median_us: float, spread_us: float) -> None:
        with self.sessions.begin() as s:
            run = s.get(Run, run_id)
            run.baseline_us, run.baseline_spread_us = median_us, spread_us

    def add_measurement(self, run_id: int, **fields) -> int:
        with self.sessions.begin() as s:
            m = Measurement(run_id=run_id, **fields)
            s.add(m)
            s.flush()
            return m.id

    def finish_run(self, run_id: int, status: str, best_measurement_id: int | None = None) -> None:
        with self.sessions.begin() as s:
            run = s.get(Run, run_id)
            run.status, run.finished_at = status, utcnow()
            if best_measurement_id is not None:
                run.best_measurement_id = best_measurement_id

    def finished_best(self, study_name: str) -> Measurement | None:
        """The winner of the latest finished run of a study, if any."""
        with self.sessions() as s:
            run = s.scalars(select(Run).where(Run.study_name == study_name, Run.status == "finished",
                                              Run.best_measurement_id.is_not(None))
                            .order_by(Run.id.desc())).first()
            return s.get(Measurement, run.best_measurement_id) if run else None

    def add_exported_table(self, gpu_short_name: str, path: str, content: dict,
                           write: Callable[[], None] | None = None) -> None:
        """Record a table exported to `path`. `write` (writing that file) runs once the row is inserted, holding
        the write lock and its pages, and the row is committed only if it succeeds: a database that cannot take the
        row (read-only, locked, full) fails before the file is written, and a file that cannot be written leaves no
        row."""
        with self.sessions.begin() as s:
            s.add(ExportedTable(gpu_short_name=gpu_short_name, path=path,
                                format_version=content["format_version"], content=content))
            s.flush()
            if write is not None:
                write()

"""The commands on a database that cannot be used: in memory, read-only, locked, full or damaged. Each is refused in
one line (click's `Error: ...`) naming the database and what to do, and leaves the database and the files as they
were; a tune the database fails midway keeps its finished trials, in a database that still passes its check."""
import errno
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner, Result
from optuna.trial import TrialState
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from db import storage
from db.models import ExportedTable, Measurement, Run
from nvc_cli.commands import main
from tests.doubles import FakeHardware

TUNE = ["tune", "--gpu", "h100", "--shapes", "96x64", "--m", "1", "--dtype", "float16", "--trials", "2"]


def nvc(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), obj=FakeHardware())


def one_line(r: Result) -> str:
    """The command's only line of stderr, after checking that it failed with just that."""
    lines = r.stderr.strip().splitlines()
    assert r.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def every_command(url: str, tmp_path: Path) -> dict[str, Result]:
    """What show, export-table, dashboard and tune say about `url`; the files they would write are in tmp_path."""
    return {"show": nvc("show", "--storage", url),
            "export-table": nvc("export-table", "--out", str(tmp_path / "h100.json"), "--storage", url),
            "dashboard": nvc("dashboard", "--out", str(tmp_path / "d.html"), "--storage", url),
            "tune": nvc(*TUNE, "--shapes", "128x64", "--storage", url)}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def quick_check(path: Path) -> list:
    with sqlite3.connect(path) as c:
        return c.execute("PRAGMA quick_check").fetchall()


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    """A database with the results of one h100 study; tests take a copy."""
    path = tmp_path_factory.mktemp("tuned") / "t.db"
    r = nvc(*TUNE, "--storage", f"sqlite:///{path}")
    assert r.exit_code == 0, r.output
    with sqlite3.connect(path) as c:  # all of it into the file, which the tests copy alone
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
def db(tuned, tmp_path) -> Path:
    path = tmp_path / "db" / "t.db"
    path.parent.mkdir()
    shutil.copy(tuned, path)
    return path


@pytest.fixture
def read_only():
    """Makes files and folders read-only to this process: root ignores permission bits, so as root they are made
    immutable (chattr +i) instead; both undone afterwards."""
    made: list[Path] = []

    def make(*paths: Path) -> None:
        for path in paths:
            if os.geteuid() == 0:
                r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
                if r.returncode != 0:
                    pytest.skip(f"root ignores permission bits and chattr +i failed here ({r.stderr.strip()})")
            else:
                path.chmod(path.stat().st_mode & ~0o222)
            made.append(path)

    yield make
    for path in reversed(made):
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(path.stat().st_mode | 0o200)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:",
                                 "sqlite:///file::memory:?cache=shared&uri=true",
                                 "sqlite:///file:tuning.db?mode=memory&uri=true"])
def test_a_database_that_does_not_persist_is_refused_by_every_command(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command, r in every_command(url, tmp_path).items():
        assert one_line(r) == (f"Error: --storage {url}: an in-memory or temporary SQLite database is lost when the "
                               f"command exits; expected one that persists: a file (sqlite:///tuning.db) or a server "
                               f"(postgresql://user@host/db)"), command
    assert list(tmp_path.iterdir()) == []  # nothing ran: no database file, table or page


def test_a_read_only_database_file_is_refused_by_the_writers_and_read_by_the_rest(db, tmp_path, read_only):
    url = f"sqlite:///{db}"
    before = digest(db)
    read_only(db)  # its folder stays writable, so SQLite can open it for reading
    said = every_command(url, tmp_path)
    refusal = (f"Error: --storage {url}: cannot use the database (attempt to write a readonly database): it is "
               f"read-only here: make the file and its folder writable, or pass another --storage")
    assert one_line(said["tune"]) == refusal  # before any study started
    assert one_line(said["export-table"]) == refusal and not (tmp_path / "h100.json").exists()
    assert said["show"].exit_code == 0 and "float16" in said["show"].stdout
    assert said["dashboard"].exit_code == 0 and (tmp_path / "d.html").is_file()
    assert digest(db) == before


def test_a_read_only_database_in_a_read_only_folder_is_refused_by_every_command(db, tmp_path, read_only):
    url = f"sqlite:///{db}"
    before = digest(db)
    read_only(db, db.parent)  # SQLite cannot create the -shm file that reading a WAL database needs
    for command, r in every_command(url, tmp_path).items():
        assert one_line(r) == (f"Error: --storage {url}: cannot use the database (unable to open database file): "
                               f"check that the file and its folder exist and that this user may read and write both "
                               f"(SQLite keeps -wal and -shm files beside it)"), command
    assert digest(db) == before and not (tmp_path / "h100.json").exists() and not (tmp_path / "d.html").exists()


def test_a_damaged_database_is_refused_by_every_command_and_left_as_it_was(db, tmp_path):
    url = f"sqlite:///{db}"
    with sqlite3.connect(db) as c:
        # Optuna's trials: a page none of show's queries read, so only the check finds it.
        page = c.execute("SELECT rootpage FROM sqlite_master WHERE name = 'trials'").fetchone()[0]
        size = c.execute("PRAGMA page_size").fetchone()[0]
    with open(db, "r+b") as f:  # the header (page 1) stays valid
        f.seek((page - 1) * size)
        f.write(b"\xa5" * 16)
    before = digest(db)
    for command, r in every_command(url, tmp_path).items():
        # SQLite's own words for the damage vary by version ("Page 11: ...", "Tree 11 page 11: ...").
        assert re.fullmatch(rf"Error: --storage {re.escape(url)}: cannot use the database \(integrity check failed: "
                            rf"(Tree \d+ )?[Pp]age {page}: btreeInitPage\(\) returns error code 11\): the file is "
                            r"damaged: restore it from a backup or pass another --storage; nothing was written to it",
                            one_line(r)), command
    assert digest(db) == before and not (tmp_path / "h100.json").exists() and not (tmp_path / "d.html").exists()


HOLD_WRITE_LOCK = """import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
"""


@contextmanager
def write_locked(path: Path):
    """Another process holding the database's write lock until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE_LOCK, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_a_database_locked_past_the_busy_timeout_is_refused_by_the_writers(db, tmp_path, monkeypatch):
    url = f"sqlite:///{db}"
    monkeypatch.setattr(storage, "_SQLITE_BUSY_TIMEOUT_S", 0.5)
    before = digest(db)
    with write_locked(db):
        said = every_command(url, tmp_path)
    refusal = (f"Error: --storage {url}: cannot use the database (database is locked): another process has held its "
               f"write lock for over 0.5 s: let it finish or stop it, then rerun")
    assert one_line(said["tune"]) == refusal
    assert one_line(said["export-table"]) == refusal and not (tmp_path / "h100.json").exists()
    # Readers of a WAL database do not wait for its writer.
    assert said["show"].exit_code == 0 and said["dashboard"].exit_code == 0
    assert digest(db) == before


@contextmanager
def size_limit(path: Path, pages: int):
    """SQLite reports "database or disk is full" once the database grows by more than `pages` pages."""
    with sqlite3.connect(path) as c:
        limit = c.execute("PRAGMA page_count").fetchone()[0] + pages

    def set_limit(dbapi_conn, _record):
        dbapi_conn.execute(f"PRAGMA max_page_count = {limit}")

    event.listen(Engine, "connect", set_limit)
    try:
        yield
    finally:
        event.remove(Engine, "connect", set_limit)


def test_a_disk_that_fills_midway_stops_the_tune_in_one_line_and_keeps_the_finished_trials(db):
    url = f"sqlite:///{db}"
    args = [*TUNE, "--shapes", "128x64", "--m", "1,2,4,8", "--trials", "6", "--storage", url]
    with size_limit(db, 3):
        r = nvc(*args)
    assert r.exit_code != 0 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [f"Error: tuning stopped: --storage {url}: cannot use the database (database or disk is full): "
                      f"its disk (or size limit) is full: free space, then rerun (the finished trials are stored; the "
                      f"same command resumes the tune)"] and r.stderr.rstrip().endswith(errors[0])
    assert quick_check(db) == [("ok",)]
    stored = optuna.storages.RDBStorage(url)
    complete = {s.study_name: {t.number for t in optuna.load_study(study_name=s.study_name, storage=stored).trials
                               if t.state == TrialState.COMPLETE}
                for s in optuna.get_all_study_summaries(stored) if "N=128" in s.study_name}
    assert sum(map(len, complete.values())) > 0  # it stopped midway
    with Session(create_engine(url)) as s:
        for study, numbers in complete.items():  # each finished trial kept its measurement too
            measured = s.scalars(select(Measurement.trial_number).join(Run, Run.id == Measurement.run_id)
                                 .where(Run.study_name == study, Measurement.phase == "search"))
            assert numbers <= set(measured), study
    # Space freed, the same command finishes every study where it stopped.
    r = nvc(*args)
    assert r.exit_code == 0, r.output
    assert quick_check(db) == [("ok",)]


def exported_rows(url: str) -> int:
    with Session(create_engine(url)) as s:
        return s.scalar(select(func.count()).select_from(ExportedTable))


def test_export_writes_nothing_and_records_nothing_when_its_file_cannot_be_written(db, tmp_path, monkeypatch):
    url, out = f"sqlite:///{db}", tmp_path / "h100.json"
    assert nvc("export-table", "--out", str(out), "--storage", url).exit_code == 0
    before = digest(out)

    def disk_full(table, path):
        raise OSError(errno.ENOSPC, "No space left on device", f"{path}.tmp")

    monkeypatch.setattr("nvc_cli.tables.write_table", disk_full)
    r = nvc("export-table", "--out", str(out), "--storage", url)
    assert one_line(r) == (f"Error: --out {out}: cannot write the table (No space left on device); nothing was "
                           f"written or recorded")
    assert digest(out) == before and exported_rows(url) == 1


def test_export_into_a_read_only_folder_names_out_and_keeps_its_table(db, tmp_path, read_only):
    url, out = f"sqlite:///{db}", tmp_path / "tables" / "h100.json"
    assert nvc("export-table", "--out", str(out), "--storage", url).exit_code == 0
    before = digest(out)
    read_only(out.parent)
    r = nvc("export-table", "--out", str(out), "--storage", url)
    assert re.fullmatch(rf"Error: --out {re.escape(str(out))}: cannot write the table \((Permission denied|Operation "
                        r"not permitted)\); nothing was written or recorded", one_line(r))
    assert digest(out) == before and os.listdir(out.parent) == ["h100.json"] and exported_rows(url) == 1


def test_export_to_a_folder_is_refused_up_front(db, tmp_path):
    url, folder = f"sqlite:///{db}", tmp_path / "tables"
    folder.mkdir()
    r = nvc("export-table", "--gpu", "h100", "--out", str(folder), "--storage", url)
    assert one_line(r) == f"Error: --out {folder}: is a folder; expected the table's file, such as {folder}/h100.json"
    r = nvc("export-table", "--gpu", "h100", "--out", "", "--storage", url)
    assert one_line(r) == "Error: --out '': expected the table's file, such as tables/h100.json"
    assert list(folder.iterdir()) == [] and exported_rows(url) == 0


def test_export_of_a_gpu_without_results_names_the_gpus_that_have_some(db):
    url = f"sqlite:///{db}"
    r = nvc("export-table", "--gpu", "h200", "--storage", url)
    assert one_line(r) == f"Error: no finished tuning results for h200 in {url}; it has results for: h100"
    assert exported_rows(url) == 0

"""Alembic migrations of the nvc_ tables, run by db.storage.open_engine on the connection it holds (no alembic.ini).

Alembic records our revision in its own table, `nvc_alembic_version`: Optuna keeps its migrations in the same
database under alembic's default `alembic_version`, which these never read or write. Schema-1 databases predate
alembic (no revision table): they are stamped with the baseline revision, then upgraded. Revisions only go
forward: none has a downgrade.
"""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

VERSION_TABLE = "nvc_alembic_version"


def revision(schema_version: int) -> str:
    """The revision that makes a SCHEMA_VERSION: each revision's id is that number, as versions/ spells it."""
    return f"{schema_version:04d}"


BASELINE = revision(1)  # what SCHEMA_VERSION 1's create_all made


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision in versions/ (tests check it is revision(SCHEMA_VERSION))."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def stamp(connection: Connection, revision: str) -> None:
    """Record `revision` without running anything (a database just created at head, or a schema-1 one)."""
    command.stamp(_config(connection), revision)


def upgrade(connection: Connection, to: str = "head") -> None:
    """Run every revision after the recorded one up to `to`, inside the transaction `connection` holds."""
    command.upgrade(_config(connection), to)

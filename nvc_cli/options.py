"""What the commands share: the --storage option and the one-line error every command fails with."""
from __future__ import annotations

import click

from db.storage import DEFAULT_URL, StorageError, check_persistent


def one_line_error(e: Exception) -> click.ClickException:
    """The first line of `e` (or its type) as click's `Error: ...` exit."""
    return click.ClickException(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


def _persistent(ctx: click.Context, param: click.Parameter, url: str) -> str:
    # While the options are parsed, so an in-memory database is refused before the command does anything.
    try:
        return check_persistent(url)
    except StorageError as e:
        raise one_line_error(e) from None


storage_option = click.option("--storage", default=DEFAULT_URL, show_default=True, callback=_persistent,
                              help="SQLAlchemy URL: sqlite:///file.db or postgresql://user@host/db")

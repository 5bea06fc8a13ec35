"""Alembic's environment for the nvc_ tables: it runs on the connection db.migrations hands it, in that
connection's transaction, so that a failed migration rolls back with everything else open_engine did."""
from alembic import context

from db.migrations import VERSION_TABLE
from db.models import Base

context.configure(
    connection=context.config.attributes["connection"], target_metadata=Base.metadata, version_table=VERSION_TABLE,
    # For autogenerating a revision: SQLite alters a table by copying it, and Optuna's tables are not ours.
    render_as_batch=True, include_name=lambda name, type_, _parent: type_ != "table" or name.startswith("nvc_"))
with context.begin_transaction():
    context.run_migrations()

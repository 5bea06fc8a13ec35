"""Revision 0004 (SCHEMA_VERSION 4): each measurement records where its config came from, `origin` (a warm start,
the sampler, the grid; db.models.WARM_START, SAMPLER, GRID).

Schema 3 did not keep it, so its rows get NULL: unknown. Nothing else changes.
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("nvc_measurements") as batch:
        batch.add_column(sa.Column("origin", sa.String(16), nullable=True))
    op.execute("UPDATE nvc_schema_version SET version = 4")

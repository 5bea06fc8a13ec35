"""Revision 0003 (SCHEMA_VERSION 3): a shape is any kernel's problem, its named sizes one canonical text column.

Schema 2 had a GEMM's M, K and N as columns. Each row's become its `dims` ({"K":..,"M":..,"N":..},
db.models.dims_text's spelling, frozen here), and `epilogue`, the form the GEMM was timed in, becomes `form`: ids,
runs and their measurements stay as they were.
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

_meta = sa.MetaData()
_shapes = sa.Table("nvc_shapes", _meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("M", sa.Integer),
                   sa.Column("K", sa.Integer), sa.Column("N", sa.Integer), sa.Column("dims", sa.String))


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("nvc_shapes") as batch:
        batch.add_column(sa.Column("dims", sa.String(512), nullable=True))
    for id_, M, K, N in bind.execute(sa.select(_shapes.c.id, _shapes.c.M, _shapes.c.K, _shapes.c.N)).all():
        dims = json.dumps({"M": M, "K": K, "N": N}, sort_keys=True, separators=(",", ":"))
        bind.execute(_shapes.update().where(_shapes.c.id == id_).values(dims=dims))
    with op.batch_alter_table("nvc_shapes") as batch:
        batch.drop_constraint("uq_nvc_shapes_M_K_N_dtype_epilogue", type_="unique")
        for name in ("M", "K", "N"):
            batch.drop_column(name)
        batch.alter_column("dims", existing_type=sa.String(512), nullable=False)
        batch.alter_column("epilogue", new_column_name="form", existing_type=sa.String(32), type_=sa.String(64),
                           existing_nullable=False, existing_server_default="")
    # Apart: in one batch with the rename, SQLite's copy of the table left the new constraint out (alembic 1.x).
    with op.batch_alter_table("nvc_shapes") as batch:
        batch.create_unique_constraint("uq_nvc_shapes_dims_dtype_form", ["dims", "dtype", "form"])
    op.execute("UPDATE nvc_schema_version SET version = 3")

"""Revision 0002 (SCHEMA_VERSION 2): the epilogue a shape was timed with becomes a column of nvc_shapes.

Schema 1 kept it only in the study name. Each run's form is read back from there by the rule of that time; a shape
row that runs of several forms shared is split into one row per form and those runs repointed to theirs.
"""
import re

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

# Schema 1's rule (db.queries.study_form, gone with it), frozen here: the 7th field of the study name when it is a
# form, else plain. Names from before commit 5fb9888 do not say how their study timed: "rotary=<head_dim>" counts
# as plain, and the "gated" studies of 7a2518c timed the stacked product (re-tune those sites before exporting).
_FORM = re.compile(r"(gated|rotary=([1-9][0-9]*)/([1-9][0-9]*))?")
_OLD_UNIQUE = ["M", "K", "N", "dtype"]

_meta = sa.MetaData()
_shapes = sa.Table("nvc_shapes", _meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("M", sa.Integer),
                   sa.Column("K", sa.Integer), sa.Column("N", sa.Integer), sa.Column("dtype", sa.String),
                   sa.Column("epilogue", sa.String))
_runs = sa.Table("nvc_runs", _meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("study_name", sa.String),
                 sa.Column("shape_id", sa.Integer))


def _form(study_name: str) -> str:
    fields = study_name.split("|")
    form = fields[6] if len(fields) > 6 else ""
    return form if _FORM.fullmatch(form) else ""


def upgrade() -> None:
    bind = op.get_bind()
    # Schema 1 left the constraint unnamed: PostgreSQL named it itself, SQLite's copy gets the convention's name.
    old_name = next((uq["name"] for uq in sa.inspect(bind).get_unique_constraints("nvc_shapes")
                     if uq["column_names"] == _OLD_UNIQUE), None) or "uq_nvc_shapes_M_K_N_dtype"
    with op.batch_alter_table("nvc_shapes",
                              naming_convention={"uq": "uq_%(table_name)s_%(column_0_N_name)s"}) as batch:
        batch.add_column(sa.Column("epilogue", sa.String(32), nullable=False, server_default=""))
        batch.drop_constraint(old_name, type_="unique")
        batch.create_unique_constraint("uq_nvc_shapes_M_K_N_dtype_epilogue", [*_OLD_UNIQUE, "epilogue"])

    forms: dict[int, dict[str, list[int]]] = {}  # shape id -> form -> its runs
    for run_id, study_name, shape_id in bind.execute(sa.select(_runs.c.id, _runs.c.study_name, _runs.c.shape_id)):
        forms.setdefault(shape_id, {}).setdefault(_form(study_name), []).append(run_id)
    for shape_id, by_form in forms.items():
        # The row keeps its id for the first form ("" when plain runs used it); each other form gets a new row.
        first, *others = sorted(by_form)
        bind.execute(_shapes.update().where(_shapes.c.id == shape_id).values(epilogue=first))
        shape = bind.execute(sa.select(_shapes.c.M, _shapes.c.K, _shapes.c.N, _shapes.c.dtype)
                             .where(_shapes.c.id == shape_id)).one()
        for form in others:
            new_id = bind.execute(_shapes.insert().values(**shape._asdict(), epilogue=form)).inserted_primary_key[0]
            bind.execute(_runs.update().where(_runs.c.id.in_(by_form[form])).values(shape_id=new_id))
    op.execute("UPDATE nvc_schema_version SET version = 2")


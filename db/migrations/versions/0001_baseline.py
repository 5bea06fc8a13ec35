"""Revision 0001: the nvc_ tables of SCHEMA_VERSION 1, as its `Base.metadata.create_all` made them.

Databases of that schema predate alembic; open_engine stamps them with this revision before upgrading them, so its
upgrade only runs on an empty database that is built through every revision.
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

_meta = sa.MetaData()
sa.Table("nvc_schema_version", _meta, sa.Column("version", sa.Integer, primary_key=True))
sa.Table("nvc_gpus", _meta,
         sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("name", sa.String(128), nullable=False),
         sa.Column("short_name", sa.String(32), nullable=False, index=True),
         sa.Column("sm_count", sa.Integer, nullable=False),
         sa.Column("memory_bytes", sa.BigInteger, nullable=False),
         sa.Column("driver", sa.String(64), nullable=False),
         sa.Column("torch_version", sa.String(64), nullable=False),
         sa.Column("triton_version", sa.String(64), nullable=False),
         sa.UniqueConstraint("name", "driver", "torch_version", "triton_version"))
sa.Table("nvc_kernels", _meta,
         sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("name", sa.String(64), nullable=False, unique=True))
sa.Table("nvc_shapes", _meta,
         sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("M", sa.Integer, nullable=False),
         sa.Column("K", sa.Integer, nullable=False),
         sa.Column("N", sa.Integer, nullable=False),
         sa.Column("dtype", sa.String(16), nullable=False),
         sa.UniqueConstraint("M", "K", "N", "dtype"))
sa.Table("nvc_runs", _meta,
         sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("study_name", sa.String(256), nullable=False, index=True),
         sa.Column("gpu_id", sa.Integer, sa.ForeignKey("nvc_gpus.id"), nullable=False),
         sa.Column("kernel_id", sa.Integer, sa.ForeignKey("nvc_kernels.id"), nullable=False),
         sa.Column("shape_id", sa.Integer, sa.ForeignKey("nvc_shapes.id"), nullable=False),
         sa.Column("sampler", sa.String(16), nullable=False),
         sa.Column("trials_budget", sa.Integer, nullable=False),
         sa.Column("timeout_s", sa.Float),
         sa.Column("host", sa.String(128), nullable=False),
         sa.Column("status", sa.String(16), nullable=False),
         sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
         sa.Column("finished_at", sa.DateTime(timezone=True)),
         sa.Column("baseline_us", sa.Float),
         sa.Column("baseline_spread_us", sa.Float),
         sa.Column("best_measurement_id", sa.Integer, sa.ForeignKey("nvc_measurements.id", use_alter=True)))
sa.Table("nvc_measurements", _meta,
         sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("run_id", sa.Integer, sa.ForeignKey("nvc_runs.id"), nullable=False, index=True),
         sa.Column("phase", sa.String(8), nullable=False),
         sa.Column("trial_number", sa.Integer),
         sa.Column("config", sa.JSON, nullable=False),
         sa.Column("correct", sa.Boolean, nullable=False),
         sa.Column("error", sa.Text),
         sa.Column("median_us", sa.Float),
         sa.Column("spread_us", sa.Float),
         sa.Column("repeats", sa.Integer),
         sa.Column("tflops", sa.Float),
         sa.Column("gbps", sa.Float),
         sa.Column("speedup", sa.Float),
         sa.Column("created_at", sa.DateTime(timezone=True), nullable=False))
sa.Table("nvc_exported_tables", _meta,
         sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("gpu_short_name", sa.String(32), nullable=False),
         sa.Column("path", sa.Text, nullable=False),
         sa.Column("format_version", sa.Integer, nullable=False),
         sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
         sa.Column("content", sa.JSON, nullable=False))


def upgrade() -> None:
    # create_all, not op.create_table: it breaks the runs <-> measurements cycle the way schema 1 did.
    _meta.create_all(op.get_bind())
    op.execute(_meta.tables["nvc_schema_version"].insert().values(version=1))


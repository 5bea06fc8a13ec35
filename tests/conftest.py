"""Shared test set-up: without a CUDA device the Triton kernels run in Triton's CPU interpreter.

TRITON_INTERPRET must be set before any @triton.jit function is defined, so it is set here,
before the test modules import the kernels.
"""
import importlib.util
import os
import uuid

import pytest
import torch
from sqlalchemy import create_engine, text

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# What opening an unreachable PostgreSQL URL must say: without the driver (the GPU image has none) that is
# said instead of a connection failure.
PG_UNREACHABLE = ("cannot use the database" if importlib.util.find_spec("psycopg2")
                  else "database driver missing")


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture
def pg_url():
    """A fresh database on the PostgreSQL server of NVC_TEST_POSTGRES_URL, dropped afterwards."""
    from db.storage import resolve_url

    base = os.environ.get("NVC_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("NVC_TEST_POSTGRES_URL is not set (.ci/run starts PostgreSQL and sets it)")
    name = f"nvc_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(resolve_url(base), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield base.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()

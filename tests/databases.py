"""Run stores on real database servers for the tests: a fresh PostgreSQL schema or MariaDB/MySQL
database per test, dropped afterwards.

PLANVM_TEST_POSTGRES_URL and PLANVM_TEST_MYSQL_URL point at a server (defaults: the local ones
this project's machines run). Without a reachable server the test is skipped, naming the
variable; under CI (CI=true) it fails instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

POSTGRES = ("PLANVM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL = ("PLANVM_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
# Read at import: the tests' own fixture clears PLANVM_* variables before each test.
_URLS = {name: os.environ.get(name, default) for name, default in (POSTGRES, MYSQL)}


def _unreachable(variable: str, url: str, exc: Exception) -> None:
    message = f"no database server at {url} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); set {variable}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def postgres_store_url() -> Iterator[str]:
    import sqlalchemy as sa

    variable = POSTGRES[0]
    base = _URLS[variable]
    engine_url = base.replace("postgresql://", "postgresql+psycopg://", 1)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        engine = sa.create_engine(engine_url, connect_args={"connect_timeout": 5}, pool_pre_ping=True)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except Exception as exc:
        _unreachable(variable, base, exc)
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


@contextmanager
def mysql_store_url() -> Iterator[str]:
    import sqlalchemy as sa

    variable = MYSQL[0]
    base = _URLS[variable]
    engine_url = base.replace("mysql://", "mysql+pymysql://", 1)
    database = f"t_{uuid.uuid4().hex[:12]}"
    try:
        engine = sa.create_engine(engine_url, connect_args={"connect_timeout": 5}, pool_pre_ping=True)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {database}")
    except Exception as exc:
        _unreachable(variable, base, exc)
    head, _, _db = base.rpartition("/")
    try:
        yield f"{head}/{database}"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {database}")
        engine.dispose()


@contextmanager
def store_url_for(backend: str, tmp_path) -> Iterator[str]:
    """A fresh, empty store location on ``backend`` (sqlite, postgresql or mysql)."""
    if backend == "sqlite":
        yield str(tmp_path / "runs.sqlite")
    elif backend == "postgresql":
        with postgres_store_url() as url:
            yield url
    else:
        with mysql_store_url() as url:
            yield url


BACKENDS = ["sqlite", "postgresql", "mysql"]

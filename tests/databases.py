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


def _unreachable(variable: str, url: str, exc: Exception) -> None:
    message = f"no database server at {url} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); set {variable}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def _fresh(variable: str, driver: str, create: str, drop: str, url_of) -> Iterator[str]:
    """A new schema or database made with ``create`` (``{name}`` in it), dropped afterwards."""
    import sqlalchemy as sa

    base = _URLS[variable]
    scheme, _, rest = base.partition("://")
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        engine = sa.create_engine(f"{driver}://{rest}", connect_args={"connect_timeout": 5}, pool_pre_ping=True)
        with engine.begin() as conn:
            conn.exec_driver_sql(create.format(name=name))
    except Exception as exc:
        _unreachable(variable, base, exc)
    try:
        yield url_of(base, name)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(drop.format(name=name))
        engine.dispose()


def _schema_url(base: str, name: str) -> str:
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{name}"


def _database_url(base: str, name: str) -> str:
    return f"{base.rpartition('/')[0]}/{name}"


#: The database servers the tests run stores on: name -> (URL variable and default, SQLAlchemy
#: driver, how a fresh schema or database is made and dropped, the store URL on it). A new
#: backend is one line here (its dialect is one module in vm/store/dialects/); the store
#: conformance suite (tests/store/conformance/) then runs on it.
SERVERS = {
    "postgresql": (POSTGRES, "postgresql+psycopg", "CREATE SCHEMA {name}", "DROP SCHEMA {name} CASCADE", _schema_url),
    "mysql": (MYSQL, "mysql+pymysql", "CREATE DATABASE {name}", "DROP DATABASE {name}", _database_url),
}
# Read at import: the tests' own fixture clears PLANVM_* variables before each test.
_URLS = {variable: os.environ.get(variable, default) for (variable, default), *_ in SERVERS.values()}


def postgres_store_url():
    """A PostgreSQL store URL on a schema of its own (the connection's search_path)."""
    return server_store_url("postgresql")


def mysql_store_url():
    """A MariaDB/MySQL store URL on a database of its own."""
    return server_store_url("mysql")


def server_store_url(backend: str):
    """A store URL on a fresh schema or database of its own on the server of ``backend``."""
    (variable, _default), driver, create, drop, url_of = SERVERS[backend]
    return _fresh(variable, driver, create, drop, url_of)


@contextmanager
def store_url_for(backend: str, tmp_path) -> Iterator[str]:
    """A fresh, empty store location on ``backend`` (sqlite, or one of SERVERS)."""
    if backend == "sqlite":
        yield str(tmp_path / "runs.sqlite")
        return
    with server_store_url(backend) as url:
        yield url


BACKENDS = ["sqlite", *SERVERS]

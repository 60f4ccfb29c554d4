"""The database core: opening a store, its migrations, retries after a lost connection, and
transactions. Every other part of the store goes through :class:`Database`; everything that
differs between backends is asked of its dialect (:mod:`vm.store.dialects`). Alembic is imported
only when a store's schema is behind this planvm's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from vm.errors import LeaseLost, StoreError
from vm.redact import redact
from vm.store.dialects import Dialect, dialect_for
from vm.store.locations import _location_texts, _masked, _without_location, store_url

if TYPE_CHECKING:
    from vm.store.interface import Store

__all__ = ["DEFAULT_LEASE_SECONDS", "Database"]

T = TypeVar("T")

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_RETRY_SECONDS = 30.0


class Database:
    """A store's connection to its database; :class:`vm.store.RunStore` adds what it keeps.

    **What the store's parts share.** :class:`~vm.store.runs.Runs`, :class:`~vm.store.leases.Leases`,
    :class:`~vm.store.library.Judgements` and :class:`~vm.store.transfer.Transfers` are parts of one
    object and use this class only through this narrow surface, never each other's state:

    - settings: ``path`` (for messages), ``readonly``, ``lease_seconds``, ``worker_id`` (Leases);
    - ``backend``: the :class:`~vm.store.dialects.base.Dialect` (asked, never branched on by name);
    - ``_write(body, landed)``: one write transaction, retried whole; ``_transaction()`` under it;
    - ``_read(statement)``, ``_read_sql(key, build, params)``: reads; ``_sql(conn, key, build,
      params)``: a statement built once per key, inside a transaction;
    - ``_status_is(status, run_id)``: a ``landed`` check;
    - Leases' ``_change``, ``_take_lease``, ``_renew_in``, ``_lost``, ``_why_lost``, used by Runs.

    ``_statements`` (the per-key statement cache) is the only other state, and only ``_sql`` uses it.
    """

    # --- opening ------------------------------------------------------------------------------

    def __init__(
        self,
        location: str | Path | None = None,
        *,
        timeout: float = 10.0,
        readonly: bool = False,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retry_seconds: float | None = None,
        upgrade: bool | None = None,
        owner: str | None = None,
        namespace: str | None = None,
    ) -> None:
        from vm.store.quotas import check_namespace

        #: The namespace this store reads and writes (see :meth:`in_namespace`).
        self.namespace: str = check_namespace(namespace or _schema().DEFAULT_NAMESPACE)
        #: Its quotas, held when a run is admitted (None: none). See :mod:`vm.store.quotas`.
        self.max_active_runs: int | None = None
        self.tokens_per_day: int | None = None
        self.url, self.file = store_url(location)
        self._owner = owner  # the lease owner name (default: host:pid:tag of this process)
        self.path: Any = self.file or redact(_masked(str(location)))  # for messages
        self.readonly = readonly
        self.lease_seconds = lease_seconds
        self.retry_seconds = DEFAULT_RETRY_SECONDS if retry_seconds is None else retry_seconds
        self.timeout = timeout
        self._where = _location_texts(str(location) if location is not None else None, self.url, self.file, self.path)
        self.upgraded_from: str | None = None  # the schema revision this opening migrated from
        self._statements: dict[Any, Any] = {}  # see _sql
        kind = dialect_for(self.url.partition("://")[0])
        assert kind is not None  # store_url takes only URLs a dialect takes
        self.backend: Dialect = kind(self)
        self.dialect: str = kind.name  # the backend's name (a server's: as SQLAlchemy calls it once connected)
        self.backend.open(timeout, upgrade=bool(upgrade))

    def in_namespace(self, namespace: str, *, max_active_runs: int | None = None, tokens_per_day: int | None = None) -> Store:
        """This store seen from ``namespace``: the same database and connections, reading and
        writing only that namespace's runs, steps, judgements and library entries, under its
        quotas (``max_active_runs``: runs planning, queued, running or waiting at once;
        ``tokens_per_day``: tokens its runs may use a day). Closing the original closes both."""
        import copy

        from vm.store.quotas import check_namespace

        view = copy.copy(self)
        view.namespace = check_namespace(namespace)
        view.max_active_runs = max_active_runs
        view.tokens_per_day = tokens_per_day
        if (max_active_runs is not None or tokens_per_day is not None) and not self.readonly:
            view._ensure_namespace_row()
        return view

    @property
    def parallel_calls(self) -> int:
        """How many threads may usefully call this store at once (1: its writers are serialized anyway)."""
        return self.backend.parallel_calls

    @staticmethod
    def schema_head() -> str:
        """The schema revision this planvm writes (the newest migration)."""
        return _schema().HEAD

    def _has_runs_table(self) -> bool:
        import sqlalchemy as sa

        with self.backend.reading() as conn:
            return sa.inspect(conn).has_table("runs")

    def _revision(self) -> str | None:
        """The store's Alembic revision (None: no version table)."""
        import sqlalchemy as sa

        with self.backend.reading() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()

    def _migrate(self, stamp_first: str | None = None) -> None:
        """Apply every migration the store lacks (Alembic, on this store's connection)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.backend.schema_transaction() as conn:
            config.attributes["connection"] = conn
            if stamp_first is not None:
                command.stamp(config, stamp_first)
            command.upgrade(config, "head")

    def upgrade(self) -> tuple[str | None, str]:
        """Apply missing migrations; return (revision before, revision now)."""
        before = self.upgraded_from or self._retrying(self._revision)
        if before != _schema().HEAD and self.upgraded_from is None:
            self._retrying(self._migrate)
        return before, _schema().HEAD

    # --- errors and transactions --------------------------------------------------------------

    def public(self, text: str) -> str:
        """``text`` without where this store is: its URL or file, and a database server's host and
        port (for what leaves the process: an HTTP answer, a run's recorded error)."""
        return _without_location(text, self._where, server=self.backend.server)

    def _translate(self, exc: BaseException) -> StoreError:
        return self.backend.translate(exc)

    def _retrying(self, operation: Callable[[], T], budget: float | None = None) -> T:
        """Run ``operation``; on a lost database connection, retry with backoff for retry_seconds
        (``budget`` seconds instead, when given); after a deadlock, at once (see ``Dialect.retry``)."""
        deadline = time.monotonic() + (self.retry_seconds if budget is None else budget)
        delay = 0.1
        while True:
            try:
                return operation()
            except (StoreError, LeaseLost):
                raise
            except Exception as exc:
                if not isinstance(exc, self.backend.database_errors):
                    raise
                retry = self.backend.retry(exc)
                if retry == "deadlock" and time.monotonic() < deadline:
                    # The server rolled this transaction back whole: do it again.
                    time.sleep(0.005)
                    continue
                if retry != "disconnected" or time.monotonic() + delay > deadline:
                    raise self._translate(exc) from None
                import logging

                logging.getLogger("planvm.store").warning(
                    "the run store %s is unreachable (%s); retrying in %.1f s", self.path, type(getattr(exc, "orig", exc)).__name__, delay
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One write transaction, committed or rolled back whole (SQLite: taken at once, BEGIN IMMEDIATE)."""
        if self.readonly:
            raise StoreError(f"the run store {self.path} was opened to read only", path=str(self.path))
        with self.backend.transaction() as conn:
            yield conn

    def _write(self, body: Callable[[Any], T], landed: Callable[[Any], bool] | None = None) -> T | None:
        """``body(connection)`` in one transaction, retried whole after a lost connection.
        ``landed(connection)``, asked before each retry: whether the attempt before did commit (a
        connection lost after the server committed, before its answer came back); then nothing
        is done again."""
        tries = 0

        def attempt() -> T | None:
            nonlocal tries
            tries += 1
            with self._transaction() as conn:
                if tries > 1 and landed is not None and landed(conn):
                    return None
                return body(conn)

        return self._retrying(attempt)

    def _status_is(self, status: str, run_id: str) -> Callable[[Any], bool]:
        import sqlalchemy as sa

        t = _schema()
        return lambda conn: conn.execute(sa.select(t.runs.c.status).where(t.runs.c.id == run_id)).scalar() == status

    def _sql(self, conn: Any, key: Any, build: Callable[[], Any], params: dict[str, Any] | None = None) -> Any:
        """Execute the statement ``build()`` makes, built once per ``key`` (building and compiling
        one costs more than running it; SQLite's dialect compiles it once to SQL text). Returns a
        cursor: ``rowcount``, ``fetchone()``, ``fetchall()`` (rows indexed by position)."""
        found = self._statements.get(key)
        if found is None:
            found = self._statements[key] = self.backend.prepare(key, build())
        return self.backend.execute(conn, found, params or {})

    def _read_sql(self, key: Any, build: Callable[[], Any], params: dict[str, Any] | None = None) -> list[Any]:
        """Rows of the statement ``build()`` makes (built once per ``key``; see :meth:`_sql`)."""
        def attempt() -> list[Any]:
            with self.backend.reading() as conn:
                return self._sql(conn, key, build, params).fetchall()

        return self._retrying(attempt)

    def _read(self, statement: Any) -> list[Any]:
        def attempt() -> list[Any]:
            with self.backend.reading() as conn:
                return list(conn.execute(statement))

        return self._retrying(attempt)

    def ping(self) -> None:
        """One round trip to the database, not retried (``StoreError`` when it does not answer)."""
        import sqlalchemy as sa

        def attempt() -> None:
            with self.backend.reading() as conn:
                conn.execute(sa.text("SELECT 1"))

        self._retrying(attempt, 0)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sqlite_connection(self) -> Any:
        """The sqlite3 connection of an SQLite store (None for a database server), for diagnostics."""
        return self.backend.raw_connection

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Rows of a read-only SQL query (named parameters ``:name``), for diagnostics and tests."""
        import sqlalchemy as sa

        return self._read(sa.text(sql).bindparams(**(params or {})))

    def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log into the main file (SQLite also does this on its own)."""
        self.backend.checkpoint()

    def size_bytes(self) -> int:
        """Bytes on disk of an SQLite store, the write-ahead log included (0 for a database server)."""
        return self.backend.size_bytes()


def _schema() -> Any:
    from vm.store import schema

    return schema

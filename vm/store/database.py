"""The database seam: opening a store (SQLite or a server), its migrations, retries after a lost
connection, and transactions. Every other part of the store goes through :class:`Database`.

SQLite keeps one connection, used under a lock; a write transaction is taken at once (``BEGIN
IMMEDIATE``) on the raw sqlite3 connection, which is the hot path of every step commit. Alembic is
imported only when a store's schema is behind this planvm's.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from vm.errors import LeaseLost, StoreError, StoreUnavailable
from vm.redact import redact
from vm.store.locations import _driver_text, _location_texts, _masked, _without_location, store_url

__all__ = ["DEFAULT_LEASE_SECONDS", "Database"]

T = TypeVar("T")

_APPLICATION_ID = 0x706C766D  # "plvm": SQLite files made by planvm say so in their header
# The SQLite schema versions before migrations were kept by Alembic (PRAGMA user_version), and the
# step from each to the next; a version-3 store is where Alembic's history begins (0001).
_LEGACY_VERSION = 3
_LEGACY_MIGRATIONS = {
    2: ["ALTER TABLE runs ADD COLUMN limits TEXT"],
    3: [
        "ALTER TABLE runs ADD COLUMN planning TEXT",
        "ALTER TABLE runs ADD COLUMN pending TEXT",
        "ALTER TABLE runs ADD COLUMN approve_tools TEXT",
    ],
}
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_RETRY_SECONDS = 30.0
OPEN_RETRY_SECONDS = 3.0  # a store that cannot be reached when it is opened is reported soon
RETRY_VARIABLE = "PLANVM_STORE_RETRY_SECONDS"  # the retry budget, when the code gives none


class Database:
    """A store's connection to its database; :class:`vm.store.RunStore` adds what it keeps."""

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
    ) -> None:
        self.url, self.file = store_url(location)
        self._owner = owner  # the lease owner name (default: host:pid:tag of this process)
        self.path: Any = self.file if self.file is not None else redact(_masked(str(location)))
        self.readonly = readonly
        self.lease_seconds = lease_seconds
        self.retry_seconds = _retry_budget() if retry_seconds is None else retry_seconds
        self.timeout = timeout
        self._where = _location_texts(str(location) if location is not None else None, self.url, self.file, self.path)
        self._lock = threading.RLock()
        self.upgraded_from: str | None = None  # the schema revision this opening migrated from
        self._engine: Any = None
        self._conn: Any = None  # SQLite: the one connection, used under the lock
        self._raw: Any = None  # SQLite: its sqlite3 connection
        self._statements: dict[Any, Any] = {}  # see _sql
        if self.file is not None:
            self.dialect = "sqlite"
            self._open_sqlite(timeout)
        else:
            self._open_server(timeout, upgrade=bool(upgrade))

    def _open_sqlite(self, timeout: float) -> None:
        import sqlite3

        import sqlalchemy as sa
        from sqlalchemy.pool import StaticPool

        path = self.file
        assert path is not None
        if self.readonly:
            raw = self._sqlite_readonly(timeout)
            if _sqlite_revision(raw) != _schema().HEAD:
                # Written by an older planvm: reading it needs the upgrade that opening it to write does.
                raw.close()
                if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
                    raise StoreError(
                        f"{path} was made by an older planvm and needs an upgrade this process cannot write; run "
                        f"`planvm store upgrade --store {path}` as its owner",
                        path=str(path),
                    )
                self.readonly = False
                self._open_sqlite(timeout)
                self.readonly = True
                return
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the run store's folder {path.parent} ({exc.strerror or exc}); choose another "
                    f"location with --store or PLANVM_HOME",
                    path=str(path),
                ) from None
            try:
                raw = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
            except sqlite3.Error as exc:
                raise self._translate(exc) from None
        self._engine = sa.create_engine("sqlite://", creator=lambda: raw, poolclass=StaticPool)
        try:
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._raw = self._conn.connection.dbapi_connection
            if not self.readonly:
                self._setup_sqlite()
        except sa.exc.DBAPIError as exc:
            raise self._translate(exc) from None

    def _sqlite_readonly(self, timeout: float) -> Any:
        import sqlite3

        path = self.file
        assert path is not None
        if not path.is_file():
            raise StoreError(
                f"no run store at {path} yet (nothing has been recorded there); run a plan first, or pass --store",
                path=str(path),
            )
        uri = path.resolve().as_uri()
        last: Exception | None = None
        # mode=ro reads a store another process may be writing; a folder this process cannot write
        # (so no shared-memory file can be made) falls back to reading the file as it is.
        for query in ("mode=ro", "mode=ro&immutable=1"):
            conn = None
            try:
                conn = sqlite3.connect(f"{uri}?{query}", uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
                if conn.execute("PRAGMA application_id").fetchone()[0] != _APPLICATION_ID:
                    conn.close()
                    raise StoreError(f"{path} is not a planvm run store; choose another with --store or PLANVM_HOME", path=str(path))
                conn.execute("SELECT count(*) FROM runs").fetchone()
                return conn
            except sqlite3.Error as exc:
                if conn is not None:
                    conn.close()
                last = exc
        assert last is not None
        raise self._translate(last) from None

    def _setup_sqlite(self) -> None:
        conn = self._conn
        app_id = conn.exec_driver_sql("PRAGMA application_id").scalar()
        tables = {row[0] for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and app_id != _APPLICATION_ID:
            raise StoreError(
                f"{self.file} is an SQLite file, but not a planvm run store; choose another location with "
                f"PLANVM_HOME or --store",
                path=str(self.file),
            )
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        if "alembic_version" not in tables and "runs" in tables:
            # A store from before versioned migrations: bring it to the last legacy version, where
            # Alembic's history starts.
            version = conn.exec_driver_sql("PRAGMA user_version").scalar()
            if version > _LEGACY_VERSION:
                raise StoreError(f"{self.file} was written by a newer planvm; upgrade planvm to use it", path=str(self.file))
            self._sqlite_transaction_raw(
                [s for step in range(version + 1, _LEGACY_VERSION + 1) for s in _LEGACY_MIGRATIONS[step]]
                + [f"PRAGMA user_version={_LEGACY_VERSION}"]
            )
            self._migrate(stamp_first="0001")
            self.upgraded_from = f"legacy {version}"
        else:
            revision = self._revision()
            if revision != _schema().HEAD:
                self._migrate()
                self.upgraded_from = revision or "none"
        if not tables:
            conn.exec_driver_sql(f"PRAGMA application_id={_APPLICATION_ID}")

    def _sqlite_transaction_raw(self, statements: list[str]) -> None:
        conn = self._conn
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                conn.exec_driver_sql(statement)
            conn.exec_driver_sql("COMMIT")
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise

    def _open_server(self, timeout: float, *, upgrade: bool) -> None:
        import sqlalchemy as sa

        # A connection attempt the network leaves unanswered waits no longer than the retry budget;
        # so does a MySQL reply (PyMySQL would wait for ever, for its greeting too, on a lost route).
        connect_args: dict[str, Any] = {"connect_timeout": max(1, int(min(timeout, self.retry_seconds)))}
        if self.url.startswith("mysql"):
            connect_args.update(read_timeout=max(1.0, self.retry_seconds), write_timeout=max(1.0, self.retry_seconds))
        try:
            self._engine = sa.create_engine(self.url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args)
        except (ImportError, sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
            raise StoreError(
                f"cannot use the store {self.path}: {exc}; install the database driver with pip install 'planvm[db]'",
                path=str(self.path),
            ) from None
        self.dialect = self._engine.dialect.name
        if self.readonly:
            if not self._retrying(self._has_runs_table, OPEN_RETRY_SECONDS):
                raise StoreError(f"no run store at {self.path} yet (nothing has been recorded there); run a plan first", path=str(self.path))
            return
        revision = self._retrying(self._revision, OPEN_RETRY_SECONDS)
        if revision is None and not self._retrying(self._has_runs_table, OPEN_RETRY_SECONDS):
            self._retrying(self._migrate)  # a new, empty database: make the tables
        elif revision != _schema().HEAD:
            if not upgrade:
                raise StoreError(
                    f"the run store {self.path} has schema version {revision or 'unknown'}, this planvm needs "
                    f"{_schema().HEAD}; run `planvm store upgrade --store URL` once",
                    path=str(self.path),
                )
            self._retrying(self._migrate)
            self.upgraded_from = revision or "none"

    def _has_runs_table(self) -> bool:
        import sqlalchemy as sa

        with self._engine.connect() as conn:
            return sa.inspect(conn).has_table("runs")

    def _revision(self) -> str | None:
        """The store's Alembic revision (None: no version table)."""
        import sqlalchemy as sa

        def read(conn: Any) -> str | None:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()

        if self._conn is not None:
            return read(self._conn)
        with self._engine.connect() as conn:
            return read(conn)

    def _migrate(self, stamp_first: str | None = None) -> None:
        """Apply every migration the store lacks (Alembic, on this store's connection)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))

        def run(conn: Any) -> None:
            config.attributes["connection"] = conn
            if stamp_first is not None:
                command.stamp(config, stamp_first)
            command.upgrade(config, "head")

        if self._conn is not None:
            with self._lock:
                self._conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    run(self._conn)
                    self._conn.exec_driver_sql("COMMIT")
                except BaseException:
                    if self._conn.connection.dbapi_connection.in_transaction:
                        self._conn.exec_driver_sql("ROLLBACK")
                    raise
        else:
            with self._engine.begin() as conn:
                run(conn)

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
        return _without_location(text, self._where, server=self.file is None)

    def _translate(self, exc: Exception) -> StoreError:
        orig = getattr(exc, "orig", None) or exc
        text = str(orig)
        where = str(self.path)
        if self.file is None:
            # The message names no URL, host or port: it may reach an HTTP client or a run's record.
            said = self.public(_driver_text(redact(text.strip()), self._where[1]))
            if _disconnected(exc):
                first = said.splitlines()[0] if said else type(orig).__name__
                return StoreUnavailable(f"cannot reach the run store ({first}); is the database server running and reachable?", path=where)
            return StoreError(f"the run store refused the operation: {said}", path=where)
        if "full" in text:
            return StoreError(
                f"the disk holding the run store {where} is full ({text}); free some space, or move the store with "
                f"--store or PLANVM_HOME",
                path=where,
            )
        if "readonly" in text or "read-only" in text or "unable to open" in text or "disk I/O" in text:
            return StoreError(
                f"cannot write the run store {where} ({text}); check that the file and its folder are writable, or "
                f"choose another location with --store or PLANVM_HOME",
                path=where,
            )
        if "locked" in text or "busy" in text:
            return StoreError(f"the run store {where} stayed locked by another process ({text}); try again when it is done", path=where)
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return StoreError(
                f"{where} is not a usable planvm run store ({text}); move it away, or choose another location with "
                f"PLANVM_HOME or --store",
                path=where,
            )
        return StoreError(f"run store {where}: {text}", path=where)

    def _retrying(self, operation: Callable[[], T], budget: float | None = None) -> T:
        """Run ``operation``; on a lost database connection, retry with backoff for retry_seconds
        (``budget`` seconds instead, when given)."""
        import sqlalchemy as sa

        deadline = time.monotonic() + (self.retry_seconds if budget is None else budget)
        delay = 0.1
        while True:
            try:
                return operation()
            except (StoreError, LeaseLost):
                raise
            except sqlite3.Error as exc:  # a statement run on the raw connection (see _sql)
                raise self._translate(exc) from None
            except sa.exc.DBAPIError as exc:
                if self.file is None and _deadlocked(exc) and time.monotonic() < deadline:
                    # Two transactions each waited for the other; the server rolled this one back
                    # whole: do it again (a cancel and a step commit of one run can meet so).
                    time.sleep(0.005)
                    continue
                if self.file is not None or not _disconnected(exc) or time.monotonic() + delay > deadline:
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
        if self._conn is not None:
            with self._lock:
                conn, raw = self._conn, self._raw  # BEGIN and COMMIT straight to sqlite3: the hot path
                try:
                    raw.execute("BEGIN IMMEDIATE")
                except Exception as exc:
                    raise self._translate(exc) from None
                try:
                    yield conn
                    raw.execute("COMMIT")
                except BaseException as exc:
                    # SQLite may already have rolled back (a full disk does): roll back only what is open,
                    # so the first error is the one reported.
                    try:
                        if raw.in_transaction:
                            raw.execute("ROLLBACK")
                    except Exception:
                        pass
                    if isinstance(exc, (StoreError, LeaseLost)) or not isinstance(exc, Exception):
                        raise
                    import sqlalchemy as sa

                    if isinstance(exc, (sa.exc.DBAPIError, sqlite3.Error)):
                        raise self._translate(exc) from None
                    raise
            return
        with self._engine.begin() as conn:
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
        one costs more than running it). On SQLite it is compiled once to SQL text and run on the
        raw sqlite3 connection: the hot path of every step commit. Returns a cursor: ``rowcount``,
        ``fetchone()``, ``fetchall()`` (rows indexed by position)."""
        found = self._statements.get(key)
        if found is None:
            statement = build()
            if self._raw is not None:
                compiled = statement.compile(dialect=self._engine.dialect)
                if compiled.positiontup is None or "POSTCOMPILE" in str(compiled):
                    raise StoreError(f"statement {key!r} cannot be compiled once (an expanding IN?); run it with _read")
                defaults = {name: bind.effective_value for name, bind in compiled.binds.items()}  # literals; None for the rest
                found = (str(compiled), tuple(compiled.positiontup), defaults)
            else:
                found = statement
            self._statements[key] = found
        if self._raw is not None:
            sql, names, defaults = found
            given = params or {}
            return self._raw.execute(sql, [given[n] if n in given else defaults[n] for n in names])
        return conn.execute(found, params or {})

    def _read_sql(self, key: Any, build: Callable[[], Any], params: dict[str, Any] | None = None) -> list[Any]:
        """Rows of the statement ``build()`` makes (built once per ``key``; see :meth:`_sql`)."""
        def attempt() -> list[Any]:
            if self._conn is not None:
                with self._lock:
                    return self._sql(self._conn, key, build, params).fetchall()
            with self._engine.connect() as conn:
                return self._sql(conn, key, build, params).fetchall()

        return self._retrying(attempt)

    def _read(self, statement: Any) -> list[Any]:
        def attempt() -> list[Any]:
            if self._conn is not None:
                with self._lock:
                    return list(self._conn.execute(statement))
            with self._engine.connect() as conn:
                return list(conn.execute(statement))

        return self._retrying(attempt)

    def ping(self) -> None:
        """One round trip to the database, not retried (``StoreError`` when it does not answer)."""
        import sqlalchemy as sa

        def attempt() -> None:
            if self._conn is not None:
                with self._lock:
                    self._conn.execute(sa.text("SELECT 1"))
                return
            with self._engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))

        self._retrying(attempt, 0)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            if self._engine is not None:
                self._engine.dispose()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sqlite_connection(self) -> Any:
        """The sqlite3 connection of an SQLite store (None for a database server), for diagnostics."""
        return self._conn.connection.dbapi_connection if self._conn is not None else None

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Rows of a read-only SQL query (named parameters ``:name``), for diagnostics and tests."""
        import sqlalchemy as sa

        return self._read(sa.text(sql).bindparams(**(params or {})))

    def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log into the main file (SQLite also does this on its own)."""
        if self._conn is not None:
            with self._lock:
                self._conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def size_bytes(self) -> int:
        """Bytes on disk of an SQLite store, the write-ahead log included (0 for a database server)."""
        if self.file is None:
            return 0
        total = 0
        for suffix in ("", "-wal"):
            path = Path(str(self.file) + suffix)
            if path.exists():
                total += path.stat().st_size
        return total


def _retry_budget() -> float:
    """Seconds a lost database connection is retried: PLANVM_STORE_RETRY_SECONDS, else 30."""
    given = os.environ.get(RETRY_VARIABLE, "").strip()
    if not given:
        return DEFAULT_RETRY_SECONDS
    try:
        seconds = float(given)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise StoreError(f"{RETRY_VARIABLE}={given!r} is not a number of seconds; give one such as 30, or unset it")
    return seconds


def _sqlite_revision(raw: Any) -> str | None:
    """The Alembic revision of an SQLite store read through a plain sqlite3 connection."""
    try:
        row = raw.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def _schema() -> Any:
    from vm.store import schema

    return schema


def _deadlocked(exc: Exception) -> bool:
    """Whether the database server rolled the transaction back to break a deadlock (PostgreSQL
    40P01, MySQL/MariaDB 1213): nothing of it was written, and it may be run again."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) == "40P01":
        return True
    args = getattr(orig, "args", ())
    return bool(args) and args[0] == 1213


def _disconnected(exc: Exception) -> bool:
    """Whether a database error means the connection is gone (worth retrying)."""
    if getattr(exc, "connection_invalidated", False):
        return True
    text = str(getattr(exc, "orig", exc)).lower()
    return any(
        phrase in text
        for phrase in ("connection refused", "could not connect", "server closed the connection", "connection is closed",
                       "lost connection", "can't connect", "gone away", "terminating connection", "connection timed out",
                       "the database system is starting up", "the database system is shutting down", "broken pipe",
                       "connection reset", "consuming input failed", "server closed", "timeout expired",
                       "timed out", "no route to host", "network is unreachable", "connection is lost",
                       "connection failed", "could not receive data", "could not send data", "eof detected",
                       "connection already closed")
    )

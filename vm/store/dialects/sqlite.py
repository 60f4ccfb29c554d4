"""SQLite: one file, one connection used under a lock; a write transaction is taken at once
(``BEGIN IMMEDIATE``) on the raw sqlite3 connection, which is the hot path of every step commit.
The write lock excludes every other writer, so no row is locked and nothing is retried; a store
made by older code is upgraded when it is opened (legacy ``PRAGMA user_version`` stores too)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vm.errors import LeaseLost, StoreError
from vm.store.dialects.base import Dialect

__all__ = ["SQLite"]

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


class SQLite(Dialect):
    name = "sqlite"
    schemes = ("sqlite",)
    driver = "sqlite"
    sqlalchemy_names = ("sqlite",)
    server = False
    locks_rows = False
    upgrades_on_open = True
    parallel_calls = 1
    alters_in_batches = True

    def __init__(self, db: Any) -> None:
        super().__init__(db)
        self.lock = threading.RLock()
        self.conn: Any = None  # the one connection, used under the lock
        self.raw: Any = None  # its sqlite3 connection

    # --- opening --------------------------------------------------------------------------------

    def open(self, timeout: float, *, upgrade: bool) -> None:
        import sqlalchemy as sa
        from sqlalchemy.pool import StaticPool

        db = self.db
        path = db.file
        assert path is not None
        if db.readonly:
            raw = self._readonly(timeout)
            if _revision(raw) != db.schema_head():
                # Written by an older planvm: reading it needs the upgrade that opening it to write does.
                raw.close()
                if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
                    raise StoreError(
                        f"{path} was made by an older planvm and needs an upgrade this process cannot write; run "
                        f"`planvm store upgrade --store {path}` as its owner",
                        path=str(path),
                    )
                db.readonly = False
                self.open(timeout, upgrade=upgrade)
                db.readonly = True
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
                raise self.translate(exc) from None
        self.engine = sa.create_engine("sqlite://", creator=lambda: raw, poolclass=StaticPool)
        try:
            self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self.raw = self.conn.connection.dbapi_connection
            if not db.readonly:
                self._setup()
        except sa.exc.DBAPIError as exc:
            raise self.translate(exc) from None

    def _readonly(self, timeout: float) -> Any:
        path = self.db.file
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
        raise self.translate(last) from None

    def _setup(self) -> None:
        db, conn = self.db, self.conn
        app_id = conn.exec_driver_sql("PRAGMA application_id").scalar()
        tables = {row[0] for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and app_id != _APPLICATION_ID:
            raise StoreError(
                f"{db.file} is an SQLite file, but not a planvm run store; choose another location with "
                f"PLANVM_HOME or --store",
                path=str(db.file),
            )
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        if "alembic_version" not in tables and "runs" in tables:
            # A store from before versioned migrations: bring it to the last legacy version, where
            # Alembic's history starts.
            version = conn.exec_driver_sql("PRAGMA user_version").scalar()
            if version > _LEGACY_VERSION:
                raise StoreError(f"{db.file} was written by a newer planvm; upgrade planvm to use it", path=str(db.file))
            with self.schema_transaction() as conn:
                for statement in [s for step in range(version + 1, _LEGACY_VERSION + 1) for s in _LEGACY_MIGRATIONS[step]]:
                    conn.exec_driver_sql(statement)
                conn.exec_driver_sql(f"PRAGMA user_version={_LEGACY_VERSION}")
            db._migrate(stamp_first="0001")
            db.upgraded_from = f"legacy {version}"
        else:
            revision = db._revision()
            if revision != db.schema_head():
                db._migrate()
                db.upgraded_from = revision or "none"
        if not tables:
            conn.exec_driver_sql(f"PRAGMA application_id={_APPLICATION_ID}")

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()
            super().close()

    # --- connections and transactions -----------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[Any]:
        with self.lock:
            yield self.conn

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self.lock:
            conn, raw = self.conn, self.raw  # BEGIN and COMMIT straight to sqlite3: the hot path
            try:
                raw.execute("BEGIN IMMEDIATE")
            except Exception as exc:
                raise self.translate(exc) from None
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
                if isinstance(exc, self.database_errors):
                    raise self.translate(exc) from None
                raise

    @contextmanager
    def schema_transaction(self) -> Iterator[Any]:
        with self.lock:
            self.conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.exec_driver_sql("COMMIT")
            except BaseException:
                if self.raw.in_transaction:
                    self.conn.exec_driver_sql("ROLLBACK")
                raise

    def prepare(self, key: Any, statement: Any) -> Any:
        # Compiled once to SQL text and run on the raw sqlite3 connection: the hot path of every step commit.
        compiled = statement.compile(dialect=self.engine.dialect)
        if compiled.positiontup is None or "POSTCOMPILE" in str(compiled):
            raise StoreError(f"statement {key!r} cannot be compiled once (an expanding IN?); run it with _read")
        defaults = {name: bind.effective_value for name, bind in compiled.binds.items()}  # literals; None for the rest
        return str(compiled), tuple(compiled.positiontup), defaults

    def execute(self, conn: Any, prepared: Any, params: dict[str, Any]) -> Any:
        sql, names, defaults = prepared
        return self.raw.execute(sql, [params[n] if n in params else defaults[n] for n in names])

    # --- locking: the write transaction already excludes every other writer -----------------------

    def lock_row(self, select: Any) -> Any:
        return select

    def skip_locked(self, select: Any, *, of: Any) -> Any:
        return select

    # --- errors -----------------------------------------------------------------------------------

    @property
    def database_errors(self) -> tuple[type[BaseException], ...]:
        return (*super().database_errors, sqlite3.Error)

    @property
    def integrity_errors(self) -> tuple[type[BaseException], ...]:
        return (*super().integrity_errors, sqlite3.IntegrityError)

    def translate(self, exc: BaseException) -> StoreError:
        text = str(getattr(exc, "orig", None) or exc)
        where = str(self.db.path)
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

    # --- diagnostics ----------------------------------------------------------------------------

    def checkpoint(self) -> None:
        with self.lock:
            self.conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            path = Path(str(self.db.file) + suffix)
            if path.exists():
                total += path.stat().st_size
        return total

    @property
    def raw_connection(self) -> Any:
        return self.conn.connection.dbapi_connection if self.conn is not None else None


def _revision(raw: Any) -> str | None:
    """The Alembic revision of an SQLite store read through a plain sqlite3 connection."""
    try:
        row = raw.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None

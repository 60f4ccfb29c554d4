"""What differs between database backends, asked of one small strategy object per backend.

The store's core (:mod:`vm.store.database`, the runs, leases, library and transfer parts) never
names a backend: it asks its :class:`Dialect` how to open the database, run a write transaction,
lock a row, whether an error is worth a retry, and what to tell the user about an error.
:class:`ServerDialect` is what PostgreSQL and MySQL (MariaDB, TiDB) share: a pool of connections
to a server, retried after a lost connection or a deadlock. A new backend is a module with a
subclass (of :class:`ServerDialect`, or of an existing backend's dialect) and one line in
:data:`vm.store.dialects.DIALECTS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from vm.errors import StoreError, StoreUnavailable
from vm.redact import redact
from vm.store.locations import _driver_text

if TYPE_CHECKING:
    from vm.store.database import Database

__all__ = ["Dialect", "Retry", "ServerDialect"]

#: What a failed database operation deserves: run again at once (a deadlock: nothing of it was
#: written), again after a backoff (the connection was lost), or neither (None: report it).
Retry = Literal["deadlock", "disconnected"] | None


class Dialect:
    """One backend's ways. Made by :class:`~vm.store.database.Database` for its URL; holds the
    connection (or pool) and reads the store's settings (``path``, ``readonly``, ``retry_seconds``)
    from it."""

    #: The backend's name (``RunStore.dialect``): SQLAlchemy's name for its dialect.
    name: ClassVar[str] = ""
    #: URL schemes that select this dialect (``postgresql://…``); the first is its canonical one.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: The SQLAlchemy URL scheme (with its driver) a scheme without a driver is given.
    driver: ClassVar[str] = ""
    #: SQLAlchemy dialect names whose long text needs a type of its own (see :meth:`long_text`).
    sqlalchemy_names: ClassVar[tuple[str, ...]] = ()
    #: A database server (its location is kept out of messages; lost connections are retried).
    server: ClassVar[bool] = True
    #: Whether a write transaction must lock rows to exclude other writers (``FOR UPDATE``); False
    #: where a write transaction already excludes every other writer (SQLite).
    locks_rows: ClassVar[bool] = True
    #: Whether opening a store behind this planvm's schema upgrades it (else: ``planvm store upgrade``).
    upgrades_on_open: ClassVar[bool] = False
    #: How many threads may usefully call the store at once (1: its writers are serialized anyway).
    parallel_calls: ClassVar[int] = 8
    #: Whether migrations alter a table by copying it (Alembic's batch mode: SQLite's ALTER TABLE is limited).
    alters_in_batches: ClassVar[bool] = False

    def __init__(self, db: Database) -> None:
        self.db = db
        self.engine: Any = None  # the SQLAlchemy engine

    # --- opening and closing --------------------------------------------------------------------

    def open(self, timeout: float, *, upgrade: bool) -> None:
        """Connect (and make or check the schema); set ``db.upgraded_from`` when it migrated."""
        raise NotImplementedError

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    # --- connections and transactions -----------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[Any]:
        """A connection to read with (autocommit)."""
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One write transaction, committed when the block ends, rolled back whole on an error."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def schema_transaction(self) -> Iterator[Any]:
        """The transaction migrations run in."""
        with self.engine.begin() as conn:
            yield conn

    def prepare(self, key: Any, statement: Any) -> Any:
        """What :meth:`execute` runs for ``statement`` (the store keeps it under ``key``)."""
        return statement

    def execute(self, conn: Any, prepared: Any, params: dict[str, Any]) -> Any:
        """Run a prepared statement; a cursor (``rowcount``, ``fetchone()``, ``fetchall()``)."""
        return conn.execute(prepared, params)

    # --- locking --------------------------------------------------------------------------------

    def lock_row(self, select: Any) -> Any:
        """``select`` holding the rows it reads until the transaction ends (a status read before
        it changes; a run's row while a call starts or a cancel reads it)."""
        return select.with_for_update()

    def skip_locked(self, select: Any, *, of: Any) -> Any:
        """``select`` taking the rows no other transaction holds (a queue: two workers never take
        one run); ``of``: the table whose rows are locked, where the backend can say so."""
        return select.with_for_update(skip_locked=True)

    # --- errors -----------------------------------------------------------------------------------

    @property
    def database_errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions that come from the database (others pass through the store untouched)."""
        import sqlalchemy as sa

        return (sa.exc.DBAPIError,)

    @property
    def integrity_errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions of a broken constraint (a step recorded twice at one position)."""
        import sqlalchemy as sa

        return (sa.exc.IntegrityError,)

    def retry(self, exc: BaseException) -> Retry:
        """Whether ``exc`` (one of :attr:`database_errors`) is worth running the operation again."""
        return None

    def translate(self, exc: BaseException) -> StoreError:
        """The one error the user sees for a database error: what happened and what to do."""
        raise NotImplementedError

    # --- types and diagnostics ------------------------------------------------------------------

    @classmethod
    def long_text(cls) -> Any:
        """The column type of long text on this backend (None: SQL's TEXT holds enough)."""
        return None

    @classmethod
    def connect_args(cls, timeout: float, retry_seconds: float) -> dict[str, Any]:
        """The driver's connection arguments: no connection attempt waits past the retry budget."""
        return {"connect_timeout": max(1, int(min(timeout, retry_seconds)))}

    def checkpoint(self) -> None:
        """Fold a write-ahead log into the main file, where the backend keeps one."""

    def size_bytes(self) -> int:
        """Bytes the store takes on this machine's disk (0 for a database server)."""
        return 0

    @property
    def raw_connection(self) -> Any:
        """The driver's connection, where the store has exactly one (SQLite); else None."""
        return None


OPEN_RETRY_SECONDS = 3.0  # a store that cannot be reached when it is opened is reported soon


class ServerDialect(Dialect):
    """A database server reached through a pool of connections (PostgreSQL, MySQL, MariaDB)."""

    def open(self, timeout: float, *, upgrade: bool) -> None:
        import sqlalchemy as sa

        db = self.db
        try:
            self.engine = sa.create_engine(db.url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                                           connect_args=self.connect_args(timeout, db.retry_seconds))
        except (ImportError, sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
            raise StoreError(
                f"cannot use the store {db.path}: {exc}; install the database driver with pip install 'planvm[db]'",
                path=str(db.path),
            ) from None
        db.dialect = self.engine.dialect.name
        if db.readonly:
            if not db._retrying(db._has_runs_table, OPEN_RETRY_SECONDS):
                raise StoreError(f"no run store at {db.path} yet (nothing has been recorded there); run a plan first", path=str(db.path))
            return
        head = db.schema_head()
        revision = db._retrying(db._revision, OPEN_RETRY_SECONDS)
        if revision is None and not db._retrying(db._has_runs_table, OPEN_RETRY_SECONDS):
            db._retrying(db._migrate)  # a new, empty database: make the tables
        elif revision != head:
            if not upgrade:
                raise StoreError(
                    f"the run store {db.path} has schema version {revision or 'unknown'}, this planvm needs "
                    f"{head}; run `planvm store upgrade --store URL` once",
                    path=str(db.path),
                )
            db._retrying(db._migrate)
            db.upgraded_from = revision or "none"

    def deadlocked(self, exc: BaseException) -> bool:
        """Whether the server rolled the transaction back to break a deadlock: nothing of it was
        written, and it may be run again."""
        return False

    def retry(self, exc: BaseException) -> Retry:
        if self.deadlocked(exc):
            # Two transactions each waited for the other (a cancel and a step commit of one run can meet so).
            return "deadlock"
        return "disconnected" if _disconnected(exc) else None

    def translate(self, exc: BaseException) -> StoreError:
        orig = getattr(exc, "orig", None) or exc
        db = self.db
        where = str(db.path)
        # The message names no URL, host or port: it may reach an HTTP client or a run's record.
        said = db.public(_driver_text(redact(str(orig).strip()), db._where[1]))
        if _disconnected(exc):
            first = said.splitlines()[0] if said else type(orig).__name__
            return StoreUnavailable(f"cannot reach the run store ({first}); is the database server running and reachable?", path=where)
        return StoreError(f"the run store refused the operation: {said}", path=where)


def _disconnected(exc: BaseException) -> bool:
    """Whether a database error means the connection is gone (worth retrying)."""
    if getattr(exc, "connection_invalidated", False):
        return True
    text = str(getattr(exc, "orig", exc)).lower()
    return any(phrase in text for phrase in _GONE)


_GONE = ("connection refused", "could not connect", "server closed the connection", "connection is closed",
         "lost connection", "can't connect", "gone away", "terminating connection", "connection timed out",
         "the database system is starting up", "the database system is shutting down", "broken pipe",
         "connection reset", "consuming input failed", "server closed", "timeout expired",
         "timed out", "no route to host", "network is unreachable", "connection is lost",
         "connection failed", "could not receive data", "could not send data", "eof detected",
         "connection already closed")


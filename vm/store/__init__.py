"""The run store: every run, step by step, in SQLite (default), PostgreSQL or MySQL (MariaDB, TiDB).

``RunStore(location)`` takes a URL — ``sqlite:///path``, ``postgresql://user@host/db``,
``mysql://user@host/db`` (MariaDB and TiDB too) — or a bare file path (SQLite). Default location:
``$PLANVM_HOME/runs.sqlite``, or ``runs.sqlite`` in the user's data directory. One schema for all
(SQLAlchemy Core, :mod:`vm.store.schema`), versioned by Alembic migrations
(``vm/store/migrations``): an SQLite store made by older code is upgraded when it is opened; a
database server's store with ``planvm store upgrade``.

Each executed step is one transaction, so a process killed at any moment (SIGKILL included)
leaves every completed step stored and nothing half-written. SQLite uses WAL mode with
synchronous NORMAL: durable across process crashes; a power cut may lose the last steps, never
the file's consistency.

**Leases.** A run being executed is owned by a worker (``host:pid:tag``) whose lease runs out
``lease_seconds`` after its last renewal; the VM renews it while the run goes on, and every step
commit checks it in the same transaction. While a lease is live, others get ``RunBusy``; once it
has run out (or its owner, on this host, has died), anyone may resume the run. A worker that lost
its lease cannot commit another step (``LeaseLost``). Steps are unique per (run, position).

Steps are stored as deltas: each row holds what that step set (``outputs``), its resolved
``inputs``, the raw tool reply (``result``) and LLM exchanges. The variables at any step are
derived by replaying the deltas over the run's initial variables. Values are stored as JSON.
"""

from __future__ import annotations

import array
import json
import os
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic_core import to_jsonable_python

from vm.errors import LeaseLost, RunBusy, RunCancelled, RunNotFound, RunStateError, StoreError, StoreUnavailable
from vm.jsonsafe import clean_text
from vm.redact import mask_secrets, redact

__all__ = ["RunStore", "StoredRun", "StoredStep", "default_store_path", "store_missing", "store_url"]

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
OPEN_RETRY_SECONDS = 3.0  # a store that cannot be reached when it is opened is reported soon
_SERVER_SCHEMES = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg", "mysql": "mysql+pymysql",
                   "mariadb": "mysql+pymysql", "tidb": "mysql+pymysql"}


def default_store_path() -> Path:
    home = os.environ.get("PLANVM_HOME")
    if home:
        return Path(home) / "runs.sqlite"
    import platformdirs

    return Path(platformdirs.user_data_dir("planvm")) / "runs.sqlite"


def store_url(location: str | Path | None) -> tuple[str, Path | None]:
    """(SQLAlchemy URL, SQLite file or None) for a store location: a URL or a file path."""
    if location is None:
        path = default_store_path()
        return f"sqlite:///{path}", path
    text = str(location)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return f"sqlite:///{Path(text)}", Path(text)
    base, _, driver = scheme.partition("+")
    base = base.lower()
    if base == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise StoreError(f"{text}: an SQLite store URL is sqlite:///relative/path or sqlite:////absolute/path")
        return text, Path(rest[1:])
    if base in _SERVER_SCHEMES:
        return (f"{scheme}://{rest}" if driver else f"{_SERVER_SCHEMES[base]}://{rest}"), None
    raise StoreError(
        f"'{redact(text)}' is not a store location planvm knows: give a file path, sqlite:///path, postgresql://… or "
        f"mysql://… (MariaDB and TiDB too)"
    )


def store_missing(location: str | Path | None) -> Path | None:
    """The SQLite file ``location`` names when it does not exist yet (nothing recorded there);
    None for an existing file or a database server."""
    _url, file = store_url(location)
    return file if file is not None and not file.exists() else None


def _worker_id() -> str:
    """This process's owner name for leases: host, pid and a random tag (pids get reused)."""
    global _WORKER
    if _WORKER is None or _WORKER[0] != os.getpid():
        _WORKER = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")
    return _WORKER[1]


_WORKER: tuple[int, str] | None = None


def _owner_dead(owner: str) -> bool:
    """Whether ``owner`` is a process of this host that no longer exists (its lease need not be
    waited out). Owners on other hosts are judged by their lease alone."""
    parts = owner.split(":")
    if len(parts) < 2 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return owner != _worker_id()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _dumps(value: Any) -> str:
    # Values reach the store through vm.jsonsafe.storable; this is the last guard for the rest
    # (LLM exchanges, inputs): no NaN, no text SQLite cannot encode.
    return mask_secrets(clean_text(json.dumps(value, ensure_ascii=False, default=to_jsonable_python)))


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass(slots=True)
class StoredStep:
    index: int
    seq_no: int
    type: str
    tool: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    llm_calls: list[dict[str, Any]] = field(default_factory=list)
    next_seq: int | None = None
    duration_s: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seq_no": self.seq_no,
            "type": self.type,
            "tool": self.tool,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "result": self.result,
            "llm_calls": self.llm_calls,
            "next_seq": self.next_seq,
            "duration_s": self.duration_s,
            "error": self.error,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredStep:
        """A step from an export; raises ``ValueError`` naming the field that is not as written."""
        if not isinstance(data, dict):
            raise ValueError(f"a step is a JSON object, got {type(data).__name__}")

        def field_of(name: str, kind: type | tuple[type, ...], default: Any) -> Any:
            value = data.get(name)
            if value is None:
                return default
            if not isinstance(value, kind) or isinstance(value, bool):  # no field of a step is a bool
                kinds = kind if isinstance(kind, tuple) else (kind,)
                wanted = " or ".join(k.__name__ for k in kinds)
                raise ValueError(f"'{name}' should be {wanted}, got {type(value).__name__}")
            return value

        for name in ("index", "seq_no", "type"):
            if name not in data:
                raise ValueError(f"'{name}' is missing")
        calls = field_of("llm_calls", list, [])
        if not all(isinstance(c, dict) for c in calls):
            raise ValueError("'llm_calls' should be a list of objects")
        return cls(
            index=field_of("index", int, 0),
            seq_no=field_of("seq_no", int, 0),
            type=field_of("type", str, ""),
            tool=field_of("tool", str, None),
            inputs=field_of("inputs", dict, {}),
            outputs=field_of("outputs", dict, {}),
            result=data.get("result"),
            llm_calls=calls,
            next_seq=field_of("next_seq", int, None),
            duration_s=float(field_of("duration_s", (int, float), 0.0)),
            error=field_of("error", str, None),
            notes=[str(n) for n in field_of("notes", list, [])],
        )


@dataclass(slots=True)
class StoredRun:
    id: str
    status: str
    plan: list[Any]
    variables: dict[str, Any]
    steps: list[StoredStep]
    created_at: float = 0.0
    updated_at: float = 0.0
    goal: str | None = None
    metadata: dict[str, Any] | None = None
    parent_id: str | None = None
    fork_seq: int | None = None
    final_answer: Any = None
    error: str | None = None
    owner: str | None = None  # the worker whose lease it is, while a run is executed
    lease_expires_at: float | None = None
    limits: dict[str, Any] | None = None  # the run's Limits (None in runs recorded before they were kept)
    planning: dict[str, Any] | None = None  # how the plan was made (planner, reasoning, model, tokens)
    pending: dict[str, Any] | None = None  # a waiting run's call: {seq_no, tool, tool_params, index}
    approve_tools: list[str] | None = None
    judgement: dict[str, Any] | None = None  # the judge's grade (`planvm judge`), None until judged
    best_of: str | None = None  # set when a plan search from that run chose this one as its best

    @property
    def score(self) -> float | None:
        value = (self.judgement or {}).get("score")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def token_totals(self) -> dict[str, dict[str, int]]:
        """Prompt and completion tokens per model role (planner, answer, condition), and in all."""
        totals: dict[str, dict[str, int]] = {}

        def add(role: str, prompt: Any, completion: Any) -> None:
            for key in (role, "total"):
                row = totals.setdefault(key, {"prompt_tokens": 0, "completion_tokens": 0})
                row["prompt_tokens"] += prompt if isinstance(prompt, int) else 0
                row["completion_tokens"] += completion if isinstance(completion, int) else 0

        if self.planning:
            add("planner", self.planning.get("prompt_tokens"), self.planning.get("completion_tokens"))
        for step in self.steps:
            for call in step.llm_calls:
                add(str(call.get("role") or ("condition" if step.type == "jmp" else "answer")),
                    call.get("prompt_tokens"), call.get("completion_tokens"))
        return totals

    def variables_at(self, step: int | None = None) -> dict[str, Any]:
        """The variables before trace position ``step`` (None: after the last step)."""
        state = dict(self.variables)
        for s in self.steps[: step if step is not None else len(self.steps)]:
            state.update(s.outputs)
        return state

    def to_dict(self) -> dict[str, Any]:
        """The run as one JSON-ready document (the format ``planvm runs export`` writes)."""
        return {
            "format": "planvm-run/1",
            "run": {
                "id": self.id,
                "status": self.status,
                "goal": self.goal,
                "metadata": self.metadata,
                "parent_id": self.parent_id,
                "fork_seq": self.fork_seq,
                "created_at": self.created_at,
                "updated_at": self.updated_at,
                "final_answer": self.final_answer,
                "error": self.error,
                "variables": self.variables,
                "limits": self.limits,
                "planning": self.planning,
                "judgement": self.judgement,
                "best_of": self.best_of,
            },
            "plan": self.plan,
            "steps": [s.to_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredRun:
        """A run from an export (``planvm runs export``); raises ``StoreError`` naming what is wrong."""
        if not isinstance(data, dict) or data.get("format") != "planvm-run/1":
            raise StoreError("not a planvm run export (expected a JSON object with \"format\": \"planvm-run/1\")")

        def bad(what: str) -> StoreError:
            return StoreError(f"not a usable planvm run export: {what}; export the run again with `planvm runs export`")

        run = data.get("run") or {}
        if not isinstance(run, dict):
            raise bad(f"'run' should be an object, got {type(run).__name__}")
        plan = data.get("plan") or []
        if isinstance(plan, str):
            try:
                plan = json.loads(plan)
            except (ValueError, RecursionError):
                raise bad("'plan' is text that is not a JSON array") from None
        if not isinstance(plan, list):
            raise bad(f"'plan' should be an array of instructions, got {type(plan).__name__}")
        variables = run.get("variables") or {}
        if not isinstance(variables, dict):
            raise bad(f"'run.variables' should be an object, got {type(variables).__name__}")
        metadata = run.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise bad(f"'run.metadata' should be an object, got {type(metadata).__name__}")
        raw_steps = data.get("steps") or []
        if not isinstance(raw_steps, list):
            raise bad(f"'steps' should be an array, got {type(raw_steps).__name__}")
        steps = []
        for i, raw in enumerate(raw_steps):
            try:
                steps.append(StoredStep.from_dict(raw))
            except (ValueError, TypeError) as exc:
                raise bad(f"steps[{i}]: {exc}") from None

        def text(name: str) -> str | None:
            value = run.get(name)
            return value if isinstance(value, str) else None

        def number(name: str) -> float:
            value = run.get(name)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

        fork_seq = run.get("fork_seq")
        limits = run.get("limits")
        if limits is not None and not isinstance(limits, dict):
            raise bad(f"'run.limits' should be an object, got {type(limits).__name__}")
        return cls(
            id=text("id") or "exported",
            status=text("status") or "unknown",
            plan=plan,
            variables=variables,
            steps=steps,
            created_at=number("created_at"),
            updated_at=number("updated_at"),
            goal=text("goal"),
            metadata=metadata,
            parent_id=text("parent_id"),
            fork_seq=fork_seq if isinstance(fork_seq, int) and not isinstance(fork_seq, bool) else None,
            final_answer=run.get("final_answer"),
            error=text("error"),
            limits=limits,
            planning=run.get("planning") if isinstance(run.get("planning"), dict) else None,
            judgement=run.get("judgement") if isinstance(run.get("judgement"), dict) else None,
            best_of=text("best_of"),
        )



class RunStore:
    """Runs and their steps in a database. Safe to share between threads and processes.

    ``location``: a URL or an SQLite file path (see :func:`store_url`). ``readonly`` opens an
    existing store only to read it (an SQLite file in a folder this process may not write
    included). ``lease_seconds``: how long a run this process executes stays its own without a
    renewal. ``retry_seconds``: how long a lost database connection is retried (with backoff)
    before an operation fails. ``owner``: the name this store's leases are taken under (default:
    ``host:pid:tag`` of this process; two stores with different owners act as two processes).

    A run's status changes only through :mod:`vm.store.lifecycle`'s table of transitions.
    """

    def __init__(
        self,
        location: str | Path | None = None,
        *,
        timeout: float = 10.0,
        readonly: bool = False,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retry_seconds: float = 30.0,
        upgrade: bool | None = None,
        owner: str | None = None,
    ) -> None:
        self.url, self.file = store_url(location)
        self._owner = owner  # the lease owner name (default: host:pid:tag of this process)
        self.path: Any = self.file if self.file is not None else redact(_masked(str(location)))
        self.readonly = readonly
        self.lease_seconds = lease_seconds
        self.retry_seconds = retry_seconds
        self.timeout = timeout
        self._lock = threading.RLock()
        self.upgraded_from: str | None = None  # the schema revision this opening migrated from
        self._engine: Any = None
        self._conn: Any = None  # SQLite: the one connection, used under the lock
        if self.file is not None:
            self.dialect = "sqlite"
            self._open_sqlite(timeout)
        else:
            self._open_server(timeout, upgrade=bool(upgrade))

    # --- opening --------------------------------------------------------------------------------

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

        connect_args: dict[str, Any] = {"connect_timeout": max(1, int(timeout))}
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

    # --- errors and transactions ------------------------------------------------------------------

    def _translate(self, exc: Exception) -> StoreError:
        orig = getattr(exc, "orig", None) or exc
        text = str(orig)
        where = str(self.path)
        if self.file is None:
            if _disconnected(exc):
                return StoreUnavailable(
                    f"cannot reach the run store {where} ({redact(text.strip().splitlines()[0] if text.strip() else type(orig).__name__)}); "
                    f"is the database server running and reachable?",
                    path=where,
                )
            return StoreError(f"run store {where}: {redact(text.strip())}", path=where)
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
            except sa.exc.DBAPIError as exc:
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
                conn = self._conn
                raw = conn.connection.dbapi_connection  # BEGIN and COMMIT straight to sqlite3: the hot path
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

    def _read(self, statement: Any) -> list[Any]:
        def attempt() -> list[Any]:
            if self._conn is not None:
                with self._lock:
                    return list(self._conn.execute(statement))
            with self._engine.connect() as conn:
                return list(conn.execute(statement))

        return self._retrying(attempt)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            if self._engine is not None:
                self._engine.dispose()

    @property
    def sqlite_connection(self) -> Any:
        """The sqlite3 connection of an SQLite store (None for a database server), for diagnostics."""
        return self._conn.connection.dbapi_connection if self._conn is not None else None

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Rows of a read-only SQL query (named parameters ``:name``), for diagnostics and tests."""
        import sqlalchemy as sa

        return self._read(sa.text(sql).bindparams(**(params or {})))

    # --- leases -----------------------------------------------------------------------------------

    @property
    def worker_id(self) -> str:
        return self._owner or _worker_id()

    def _change(self, conn: Any, run_id: str, event: str, **values: Any) -> str:
        """Apply a lifecycle event to ``run_id`` in ``conn``'s transaction (see :mod:`vm.store.lifecycle`)."""
        from vm.store.lifecycle import transition

        return transition(conn, _schema(), run_id, event, worker=self.worker_id, path=str(self.path), lease_dead=_owner_dead,
                          locking=self.dialect != "sqlite", **values)

    def _take_lease(self, conn: Any, run_id: str, now: float) -> None:
        t = _schema()
        conn.execute(t.leases.delete().where(t.leases.c.run_id == run_id))
        conn.execute(t.leases.insert().values(run_id=run_id, owner=self.worker_id, expires_at=now + self.lease_seconds))

    def _renew_in(self, conn: Any, run_id: str, now: float, *, running: bool = False) -> bool:
        """Extend this process's live lease; ``running``: only while the run is ``running`` (a step
        commit: a planning, waiting or cancelled run takes no step)."""
        statement = _hot().renew_running if running else _hot().renew
        done = conn.execute(statement, {"r": run_id, "o": self.worker_id, "now": now, "until": now + self.lease_seconds})
        return done.rowcount == 1

    def renew(self, run_id: str) -> bool:
        """Extend this process's lease on ``run_id``; False when it no longer holds it."""
        return self._write(lambda conn: self._renew_in(conn, run_id, time.time()))

    def _lost(self, run_id: str) -> LeaseLost:
        return LeaseLost(run_id, self.worker_id, str(self.path))

    def _why_lost(self, conn: Any, run_id: str) -> StoreError:
        """Why this process may not write ``run_id`` any more: cancelled, or its lease gone."""
        import sqlalchemy as sa

        t = _schema()
        status = conn.execute(sa.select(t.runs.c.status).where(t.runs.c.id == run_id)).scalar()
        return RunCancelled(run_id, str(self.path)) if status == "cancelled" else self._lost(run_id)

    # --- writing ----------------------------------------------------------------------------------

    def create_run(
        self,
        plan: list[Any] | None,
        *,
        variables: dict[str, Any] | None = None,
        goal: str | None = None,
        metadata: dict[str, Any] | None = None,
        parent_id: str | None = None,
        fork_seq: int | None = None,
        inherit_steps: int = 0,
        limits: dict[str, Any] | None = None,
        planning: dict[str, Any] | None = None,
        approve_tools: list[str] | None = None,
        status: str = "running",
        error: str | None = None,
    ) -> str:
        """Start a run owned by this process (``status="queued"``: store it for a worker, owned by
        no one; ``plan`` None: a goal the worker plans; ``"failed"`` with ``error``: a goal whose
        planning failed, kept with its attempts); a fork copies its parent's first
        ``inherit_steps`` steps."""
        if status not in ("running", "queued", "failed", "planning"):
            raise ValueError(f"a run starts running, queued, planning or failed (planning failed), not {status!r}")
        import sqlalchemy as sa

        t = _schema()
        run_id = uuid.uuid4().hex[:16]
        now = time.time()

        def body(conn: Any) -> None:
            conn.execute(t.runs.insert().values(
                id=run_id, created_at=now, updated_at=now, status=status, goal=clean_text(goal) if goal else goal,
                metadata=_dumps(metadata) if metadata is not None else None, plan=_dumps(plan), variables=_dumps(variables or {}),
                parent_id=parent_id, fork_seq=fork_seq, steps=inherit_steps, limits=_dumps(limits) if limits is not None else None,
                planning=_dumps(planning) if planning is not None else None, approve_tools=_dumps(approve_tools) if approve_tools else None,
                error=redact(clean_text(error)) if error else None,
            ))
            if status in ("running", "planning"):  # this process is at work on it
                self._take_lease(conn, run_id, now)
            if parent_id is not None and inherit_steps:
                s = t.steps
                copied = sa.select(
                    sa.literal(run_id, sa.String(32)), s.c.idx, s.c.seq_no, s.c.type, s.c.tool, s.c.inputs, s.c.outputs,
                    s.c.result, s.c.llm_calls, s.c.next_seq, s.c.duration_s, s.c.error, s.c.notes,
                ).where(s.c.run_id == parent_id, s.c.idx < inherit_steps)
                conn.execute(s.insert().from_select(
                    ["run_id", "idx", "seq_no", "type", "tool", "inputs", "outputs", "result", "llm_calls", "next_seq", "duration_s", "error",
                     "notes"],
                    copied,
                ))

        self._write(body, lambda conn: conn.execute(sa.select(t.runs.c.id).where(t.runs.c.id == run_id)).first() is not None)
        return run_id

    def fail_planning(self, run_id: str, error: str, planning: dict[str, Any] | None) -> None:
        """End a ``planning`` run whose planning failed, keeping how it went (``RunCancelled``
        when it was cancelled meanwhile)."""
        self._write(lambda conn: self._change(
            conn, run_id, "fail", error=redact(clean_text(error)), owner=None,
            planning=_dumps(planning) if planning is not None else None))

    def set_plan(self, run_id: str, plan: list[Any], planning: dict[str, Any] | None) -> None:
        """Give a goal its plan (a worker, or the service, planned it); ``RunCancelled`` when the
        run was cancelled meanwhile (nothing is written then)."""
        t = _schema()

        def body(conn: Any) -> None:
            done = conn.execute(
                t.runs.update().where(t.runs.c.id == run_id, t.runs.c.status.in_(("queued", "running", "planning"))).values(
                    plan=_dumps(plan), planning=_dumps(planning) if planning is not None else None, updated_at=time.time()))
            if done.rowcount != 1:
                raise self._why_lost(conn, run_id)

        self._write(body)

    def record_step(self, run_id: str, index: int, record: Any) -> None:
        """Write one executed step (a :class:`vm.StepRecord`) in its own transaction, if this
        process still holds the run's lease (``LeaseLost`` otherwise: nothing is written)."""
        import sqlalchemy as sa

        row = dict(
            run_id=run_id, idx=index, seq_no=record.seq_no, type=record.type, tool=record.tool, inputs=_dumps(dict(record.inputs)),
            outputs=_dumps(dict(record.outputs)), result=_dumps(record.result), llm_calls=_dumps(list(record.llm_calls)),
            next_seq=record.next_seq, duration_s=record.duration_s, error=redact(clean_text(record.error)) if record.error else None,
            notes=_dumps(list(record.notes)) if record.notes else None,
        )

        def body(conn: Any) -> None:
            if not self._renew_in(conn, run_id, time.time(), running=True):
                raise self._why_lost(conn, run_id)
            try:
                conn.execute(_hot().insert_step, row)
            except sa.exc.IntegrityError:
                raise self._lost(run_id) from None  # another process recorded this position: it owns the run
            # No UPDATE of the runs row here: it holds the plan, and rewriting it per step would make
            # recording cost grow with the plan's size. Step counts are read from the steps table.

        def landed(conn: Any) -> bool:
            s = _schema().steps.c
            found = conn.execute(sa.select(s.seq_no, s.type).where(s.run_id == run_id, s.idx == index)).first()
            return found is not None and (found[0], found[1]) == (record.seq_no, record.type)

        self._write(body, landed)

    _FINISH_EVENTS = {"completed": "complete", "failed": "fail", "interrupted": "interrupt"}

    def finish(self, run_id: str, status: str, *, final_answer: Any = None, error: str | None = None) -> None:
        """End the run this process executes: ``completed``, ``failed`` or ``interrupted``
        (``RunCancelled`` when it was cancelled meanwhile: nothing is written)."""
        event = self._FINISH_EVENTS.get(status)
        if event is None:
            raise ValueError(f"finish() takes completed, failed or interrupted, not {status!r} (cancel() cancels)")
        self._write(lambda conn: self._change(
            conn, run_id, event, final_answer=_dumps(final_answer) if final_answer is not None else None,
            error=redact(clean_text(error)) if error else None, owner=None,
        ), self._status_is(status, run_id))

    def wait(self, run_id: str, pending: dict[str, Any]) -> None:
        """Stop a run to wait for a person to approve the call ``pending`` describes."""
        self._write(lambda conn: self._change(conn, run_id, "wait", pending=_dumps(pending), owner=None), self._status_is("waiting", run_id))

    def release(self, run_id: str) -> None:
        """Give a run this process holds back to the queue (a worker stopping), steps kept."""
        self._write(lambda conn: self._change(conn, run_id, "release", owner=None), self._status_is("queued", run_id))

    def cancel(self, run_id: str, reason: str = "cancelled") -> str:
        """Cancel ``run_id`` (its full id or a unique prefix) from any process, whoever executes
        it: a queued, running, waiting or interrupted run becomes ``cancelled`` at once, and its
        executor stops at its next step commit. Returns the status it had; ``RunStateError`` for
        a completed or cancelled run."""
        run_id = self.resolve(run_id)
        self._write(lambda conn: self._change(conn, run_id, "cancel", error=redact(clean_text(reason)), pending=None, owner=None),
                    self._status_is("cancelled", run_id))
        return run_id

    def mark_abandoned(self) -> list[str]:
        """Mark runs left ``running`` by a process that is gone (its lease ran out, or it died on
        this host) as ``interrupted``; return their ids. Runs of live processes are left alone."""
        t = _schema()
        now = time.time()
        rows = self._read(_running_with_leases(t))
        dead = []
        for row in rows:
            if not (row.owner is None or row.expires_at < now or _owner_dead(row.owner)):
                continue
            try:
                self._write(lambda conn, run_id=row.id: self._change(
                    conn, run_id, "abandon", owner=None, error="the process running it ended before the run did; resume it"))
            except RunStateError:
                continue  # taken or ended by another process meanwhile
            dead.append(row.id)
        return dead

    def resolve(self, run_id: str) -> str:
        """The full id of the run ``run_id`` names: the id itself, or a unique prefix of one."""
        import sqlalchemy as sa

        t = _schema()
        if self._read(sa.select(t.runs.c.id).where(t.runs.c.id == run_id)):
            return run_id
        if run_id and all(c in "0123456789abcdef" for c in run_id) and len(run_id) < 32:
            rows = self._read(
                sa.select(t.runs.c.id).where(t.runs.c.id >= run_id, t.runs.c.id < run_id + "g").order_by(t.runs.c.id).limit(2)
            )
            if len(rows) == 1:
                return rows[0][0]
            if len(rows) > 1:
                raise StoreError(
                    f"'{run_id}' is the start of several run ids ({rows[0][0]}, {rows[1][0]}…); give more of the id",
                    path=str(self.path),
                )
        raise RunNotFound(run_id, str(self.path))

    def _claim_in(self, conn: Any, run_id: str, held: bool = False, approving: bool = False) -> None:
        import sqlalchemy as sa

        t = _schema()
        now = time.time()
        lease = conn.execute(sa_select_lease(t, run_id)).first()
        mine = lease is not None and lease.owner == self.worker_id
        if lease is not None and lease.expires_at >= now and not (mine and held) and not _owner_dead(lease.owner):
            raise RunBusy(run_id, f"{lease.owner}, lease for {lease.expires_at - now:.0f} s more", str(self.path))
        self._change(conn, run_id, "approve" if approving else "claim", error=None, pending=None)
        first_error = conn.execute(
            sa.select(sa.func.min(t.steps.c.idx)).where(t.steps.c.run_id == run_id, t.steps.c.error.is_not(None))
        ).scalar()
        if first_error is not None:
            conn.execute(t.steps.delete().where(t.steps.c.run_id == run_id, t.steps.c.idx >= first_error))
        self._take_lease(conn, run_id, now)

    def claim(self, run_id: str, *, held: bool = False, approving: bool = False) -> StoredRun:
        """Take over a run to execute it (queued) or resume it: refused while a lease on it is
        live (``held=True``: unless it is this process's own, taken by :meth:`claim_next`), and
        for a completed or cancelled run (``RunStateError``). ``approving``: the run is waiting
        for an approval, and only a waiting run is taken. Steps after the last completed one (a
        step that failed) are dropped: resuming runs them again."""
        run_id = self.resolve(run_id)
        def landed(conn: Any) -> bool:
            lease = conn.execute(sa_select_lease(_schema(), run_id)).first()
            return lease is not None and lease.owner == self.worker_id and self._status_is("running", run_id)(conn)

        self._write(lambda conn: self._claim_in(conn, run_id, held, approving), landed)
        return self.get(run_id)

    def claim_next(self) -> str | None:
        """Take a running run whose lease ran out (its worker died), else the oldest queued run,
        for this process (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL and MySQL; SQLite's write lock
        serializes workers on one machine). None when there is none."""
        import sqlalchemy as sa

        t = _schema()

        def body(conn: Any) -> str | None:
            now = time.time()
            locking = self.dialect != "sqlite"
            # Runs whose worker died come first: they were taken before anything queued now.
            stale = (
                sa.select(t.runs.c.id)
                .select_from(t.runs.outerjoin(t.leases, t.leases.c.run_id == t.runs.c.id))
                .where(t.runs.c.status == "running", sa.or_(t.leases.c.run_id.is_(None), t.leases.c.expires_at < now))
                .order_by(t.runs.c.created_at)
                .limit(1)
            )
            if locking:  # PostgreSQL locks only the runs row (a lease row may be missing); MariaDB knows no OF
                of = {"of": t.runs} if self.dialect == "postgresql" else {}
                stale = stale.with_for_update(skip_locked=True, **of)
            found = conn.execute(stale).scalar()
            if found is None:
                queued = sa.select(t.runs.c.id).where(t.runs.c.status == "queued").order_by(t.runs.c.created_at).limit(1)
                if locking:
                    queued = queued.with_for_update(skip_locked=True)
                found = conn.execute(queued).scalar()
            if found is None:
                return None
            self._claim_in(conn, found)
            return found

        return self._write(body)

    # --- reading ----------------------------------------------------------------------------------

    def get(self, run_id: str, *, steps: bool = True) -> StoredRun:
        """The run ``run_id`` (its full id or a unique prefix), with its steps (``steps=False``:
        without them; read them a page at a time with :meth:`steps_page`)."""
        import sqlalchemy as sa

        t = _schema()
        run_id = self.resolve(run_id)
        r = t.runs.c
        rows = self._read(
            sa.select(r.id, r.status, r.plan, r.variables, r.created_at, r.updated_at, r.goal, r["metadata"], r.parent_id, r.fork_seq,
                      r.final_answer, r.error, t.leases.c.owner, t.leases.c.expires_at, r.limits, r.planning, r.pending, r.approve_tools,
                      r.judgement, r.best_of)
            .select_from(t.runs.outerjoin(t.leases, t.leases.c.run_id == r.id))
            .where(r.id == run_id)
        )
        if not rows:
            raise RunNotFound(run_id, str(self.path))
        row = rows[0]
        return StoredRun(
            id=row[0], status=row[1], plan=_loads(row[2]), variables=_loads(row[3]),
            steps=self.steps_page(run_id) if steps else [], created_at=row[4],
            updated_at=row[5], goal=row[6], metadata=_loads(row[7]), parent_id=row[8], fork_seq=row[9],
            final_answer=_loads(row[10]), error=row[11], owner=row[12], lease_expires_at=row[13], limits=_loads(row[14]),
            planning=_loads(row[15]), pending=_loads(row[16]), approve_tools=_loads(row[17]), judgement=_loads(row[18]),
            best_of=row[19],
        )

    def steps_page(self, run_id: str, start: int = 0, limit: int | None = None, *, max_bytes: int | None = None) -> list[StoredStep]:
        """The steps of ``run_id`` (a full id) from trace position ``start`` on, ``limit`` of
        them at most (all when None): what a stream reads as a run goes on, never the whole run.
        ``max_bytes``: fewer steps, so that their stored text is about that size (one at least)."""
        import sqlalchemy as sa

        s = _schema().steps.c
        if max_bytes is not None:
            size = sa.func.coalesce(sa.func.length(s.inputs), 0) + sa.func.coalesce(sa.func.length(s.outputs), 0) + \
                sa.func.coalesce(sa.func.length(s.result), 0) + sa.func.coalesce(sa.func.length(s.llm_calls), 0)
            sizes = self._read(sa.select(s.idx, size).where(s.run_id == run_id, s.idx >= start).order_by(s.idx).limit(limit or 1000))
            total, taken = 0, 0
            for _idx, bytes_ in sizes:
                if taken and total + (bytes_ or 0) > max_bytes:
                    break
                total += bytes_ or 0
                taken += 1
            limit = max(taken, 1)
        statement = (
            sa.select(s.idx, s.seq_no, s.type, s.tool, s.inputs, s.outputs, s.result, s.llm_calls, s.next_seq, s.duration_s, s.error,
                      s.notes)
            .where(s.run_id == run_id, s.idx >= start).order_by(s.idx)
        )
        if limit is not None:
            statement = statement.limit(limit)
        return [
            StoredStep(x.idx, x.seq_no, x.type, x.tool, _loads(x.inputs) or {}, _loads(x.outputs) or {}, _loads(x.result),
                       _loads(x.llm_calls) or [], x.next_seq, x.duration_s or 0.0, x.error, _loads(x.notes) or [])
            for x in self._read(statement)
        ]

    def head(self, run_id: str) -> dict[str, Any]:
        """What a watcher polls, cheaply: status, error, pending call, step count, updated_at,
        and the lease (owner, expires_at) while one is held."""
        import sqlalchemy as sa

        t = _schema()
        r = t.runs.c
        counted = sa.select(sa.func.count()).where(t.steps.c.run_id == r.id).scalar_subquery()
        rows = self._read(
            sa.select(r.status, r.error, r.pending, counted, r.updated_at, t.leases.c.owner, t.leases.c.expires_at)
            .select_from(t.runs.outerjoin(t.leases, t.leases.c.run_id == r.id)).where(r.id == run_id)
        )
        if not rows:
            raise RunNotFound(run_id, str(self.path))
        status, error, pending, steps, updated_at, owner, expires_at = rows[0]
        return {"status": status, "error": error, "pending": _loads(pending), "steps": steps, "updated_at": updated_at,
                "owner": owner, "lease_expires_at": expires_at}

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

    def list_runs(
        self, limit: int = 50, *, status: str | None = None, query: str | None = None, before: tuple[float, str] | None = None,
        judged: bool = False, min_score: float | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first: id, status, created_at, steps, goal, parent_id, fork_seq, plan_file (for
        runs of a plan file), owner and lease_expires_at (of runs being executed), score, accept and
        best_of. ``status``, ``query`` (text in the goal or the start of the id), ``judged`` and
        ``min_score`` (judged runs scoring at least that) filter; ``before`` (created_at, id) pages:
        the runs after that one in this order."""
        import sqlalchemy as sa

        t = _schema()
        r = t.runs.c
        counted = sa.select(sa.func.count()).where(t.steps.c.run_id == r.id).scalar_subquery()
        statement = sa.select(r.id, r.status, r.created_at, counted, r.goal, r.parent_id, r.fork_seq, r["metadata"],
                              t.leases.c.owner, t.leases.c.expires_at, r.score, r.judgement, r.best_of).select_from(
            t.runs.outerjoin(t.leases, t.leases.c.run_id == r.id))
        if status:
            statement = statement.where(r.status == status)
        if query:
            statement = statement.where(sa.or_(r.goal.contains(query, autoescape=True), r.id.startswith(query, autoescape=True)))
        if judged or min_score is not None:
            statement = statement.where(r.score.is_not(None))
        if min_score is not None:
            statement = statement.where(r.score >= min_score)
        if before is not None:
            statement = statement.where(sa.or_(r.created_at < before[0], sa.and_(r.created_at == before[0], r.id < before[1])))
        rows = self._read(statement.order_by(r.created_at.desc(), r.id.desc()).limit(limit))
        runs = []
        for row in rows:
            metadata = _loads(row[7])
            plan_file = metadata.get("plan_file") if isinstance(metadata, dict) else None
            runs.append({
                "id": row[0], "status": row[1], "created_at": row[2], "steps": row[3], "goal": row[4], "parent_id": row[5],
                "fork_seq": row[6], "plan_file": plan_file if isinstance(plan_file, str) else None,
                "owner": row[8], "lease_expires_at": row[9], "score": row[10],
                "accept": (_loads(row[11]) or {}).get("accept") if row[11] else None, "best_of": row[12],
            })
        return runs

    # --- judgements, marks and the plan library -------------------------------------------------

    def set_judgement(self, run_id: str, judgement: dict[str, Any]) -> None:
        """Keep the judge's grade with the run (a later grade replaces it)."""
        t = _schema()
        score = judgement.get("score")
        self._write(lambda conn: conn.execute(t.runs.update().where(t.runs.c.id == run_id).values(
            judgement=_dumps(judgement), score=float(score) if isinstance(score, (int, float)) else None)))

    def mark_best(self, run_id: str, of: str) -> None:
        """Mark ``run_id`` as the best run a plan search from ``of`` found (clearing any earlier mark of that search)."""
        t = _schema()

        def body(conn: Any) -> None:
            conn.execute(t.runs.update().where(t.runs.c.best_of == of).values(best_of=None))
            conn.execute(t.runs.update().where(t.runs.c.id == run_id).values(best_of=of))

        self._write(body)

    def completed_runs(self, since: float | None = None) -> list[dict[str, Any]]:
        """Every completed run with a goal (oldest first): what a training export chooses from."""
        import sqlalchemy as sa

        t = _schema()
        r = t.runs.c
        statement = sa.select(r.id, r.created_at, r.goal, r["metadata"], r.plan, r.planning, r.final_answer, r.score, r.judgement,
                              r.best_of).where(r.status == "completed", r.goal.is_not(None))
        if since is not None:
            statement = statement.where(r.created_at >= since)
        return [
            {"id": row[0], "created_at": row[1], "goal": row[2], "metadata": _loads(row[3]), "plan": _loads(row[4]),
             "planning": _loads(row[5]), "final_answer": _loads(row[6]), "score": row[7], "judgement": _loads(row[8]),
             "best_of": row[9]}
            for row in self._read(statement.order_by(r.created_at, r.id))
        ]

    def library_put(self, entry: dict[str, Any]) -> tuple[str, list[str]]:
        """Keep a best plan; an entry for the same goal and response language is replaced. Returns
        (the new entry's id, the ids it replaced)."""
        import sqlalchemy as sa

        t = _schema()
        lib = t.plan_library
        entry_id = uuid.uuid4().hex[:16]

        def body(conn: Any) -> list[str]:
            same = sa.and_(lib.c.goal_key == entry["goal_key"],
                           lib.c.language.is_(None) if entry.get("language") is None else lib.c.language == entry["language"])
            replaced = [row[0] for row in conn.execute(sa.select(lib.c.id).where(same))]
            if replaced:
                conn.execute(lib.delete().where(lib.c.id.in_(replaced)))
            conn.execute(lib.insert().values(
                id=entry_id, created_at=time.time(), run_id=entry.get("run_id"), goal=entry["goal"], goal_key=entry["goal_key"],
                metadata=_dumps(entry.get("metadata")) if entry.get("metadata") is not None else None, language=entry.get("language"),
                label=entry.get("label"), tools=_dumps(entry.get("tools") or []), plan=_dumps(entry["plan"]),
                reasoning=entry.get("reasoning"), final_answer=_dumps(entry.get("final_answer")),
                score=entry.get("score"), embedding=_floats_to_bytes(entry["embedding"]) if entry.get("embedding") is not None else None,
            ))
            return replaced

        return entry_id, self._write(body)

    def library_entries(
        self, goal_key: str | None = None, *, ids: list[str] | None = None, light: bool = False
    ) -> list[dict[str, Any]]:
        """Every kept best plan (or those for one normalised goal, or with these ids), oldest
        first, with its goal embedding when one was made. ``light``: only what choosing among
        them needs (id, run_id, goal, goal_key, language, label, tools, embedding), not the plans."""
        import sqlalchemy as sa

        lib = _schema().plan_library
        names = ["id", "run_id", "goal", "goal_key", "language", "label", "tools", "embedding"]
        if not light:
            names += ["created_at", "metadata", "plan", "reasoning", "final_answer", "score"]
        statement = sa.select(*(lib.c[n] for n in names))
        if goal_key is not None:
            statement = statement.where(lib.c.goal_key == goal_key)
        if ids is not None:
            statement = statement.where(lib.c.id.in_(ids))
        rows = self._read(statement.order_by(lib.c.created_at, lib.c.id))
        entries = []
        for row in rows:
            entry = dict(zip(names, row, strict=True))
            for key in ("metadata", "tools", "plan", "final_answer"):
                if key in entry:
                    entry[key] = _loads(entry[key])
            entry["embedding"] = _bytes_to_floats(entry["embedding"]) if entry["embedding"] is not None else None
            entries.append(entry)
        return entries

    def library_signature(self) -> tuple[int, float | None]:
        """(entries, newest entry's time): changes whenever an entry is kept or removed."""
        import sqlalchemy as sa

        lib = _schema().plan_library
        count, newest = self._read(sa.select(sa.func.count(), sa.func.max(lib.c.created_at)))[0]
        return int(count), newest

    def library_remove(self, entry_id: str) -> str:
        """Remove the best plan ``entry_id`` (or a unique prefix of it); returns its full id."""
        import sqlalchemy as sa

        lib = _schema().plan_library
        found = [row[0] for row in self._read(sa.select(lib.c.id).where(lib.c.id.startswith(entry_id, autoescape=True)).limit(2))]
        if not entry_id or not found:
            raise StoreError(f"no best plan '{entry_id}' in the library; see `planvm library list`", path=str(self.path))
        if len(found) > 1:
            raise StoreError(f"'{entry_id}' is the start of several best plans' ids; give more of it", path=str(self.path))
        self._write(lambda conn: conn.execute(lib.delete().where(lib.c.id == found[0])))
        return found[0]

    def step_count(self, run_id: str) -> int:
        import sqlalchemy as sa

        t = _schema()
        return self._read(sa.select(sa.func.count()).select_from(t.steps).where(t.steps.c.run_id == run_id))[0][0]

    def status_of(self, run_id: str) -> str:
        """The run's status alone (cheap: the service polls it while streaming)."""
        import sqlalchemy as sa

        t = _schema()
        rows = self._read(sa.select(t.runs.c.status).where(t.runs.c.id == run_id))
        if not rows:
            raise RunNotFound(run_id, str(self.path))
        return rows[0][0]

    def children(self, run_id: str) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        t = _schema()
        r = t.runs.c
        rows = self._read(sa.select(r.id, r.status, r.fork_seq, r.score, r.best_of).where(r.parent_id == run_id).order_by(r.created_at))
        return [{"id": i, "status": s, "fork_seq": f, "score": sc, "best_of": b} for i, s, f, sc, b in rows]

    def lineage(self, run_id: str) -> list[str]:
        """The run's ancestors, oldest first, ending with the run itself."""
        import sqlalchemy as sa

        t = _schema()
        chain = [run_id]
        seen = {run_id}
        while True:
            rows = self._read(sa.select(t.runs.c.parent_id).where(t.runs.c.id == chain[0]))
            if not rows or rows[0][0] is None or rows[0][0] in seen:
                return chain
            chain.insert(0, rows[0][0])
            seen.add(rows[0][0])

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


def _floats_to_bytes(values: Any) -> bytes:
    """float32, little-endian: an embedding in a quarter of its JSON size, read back without parsing."""
    packed = array.array("f", (float(v) for v in values))
    if sys.byteorder == "big":  # pragma: no cover - the stored form is little-endian everywhere
        packed.byteswap()
    return packed.tobytes()


def _bytes_to_floats(data: bytes) -> list[float]:
    packed = array.array("f")
    packed.frombytes(bytes(data))
    if sys.byteorder == "big":  # pragma: no cover
        packed.byteswap()
    return packed.tolist()


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


class _HotStatements:
    """The statements of every step commit, built once (building one costs more than running it)."""

    def __init__(self) -> None:
        import sqlalchemy as sa

        t = _schema()
        self.renew = (
            t.leases.update()
            .where(t.leases.c.run_id == sa.bindparam("r"), t.leases.c.owner == sa.bindparam("o"), t.leases.c.expires_at >= sa.bindparam("now"))
            .values(expires_at=sa.bindparam("until"))
        )
        self.renew_running = self.renew.where(
            sa.exists().where(t.runs.c.id == sa.bindparam("r"), t.runs.c.status == "running"))
        self.insert_step = t.steps.insert()


_HOT: _HotStatements | None = None


def _hot() -> _HotStatements:
    global _HOT
    if _HOT is None:
        _HOT = _HotStatements()
    return _HOT


def sa_select_lease(t: Any, run_id: str) -> Any:
    import sqlalchemy as sa

    return sa.select(t.leases.c.owner, t.leases.c.expires_at).where(t.leases.c.run_id == run_id)


def _running_with_leases(t: Any) -> Any:
    import sqlalchemy as sa

    return (
        sa.select(t.runs.c.id, t.leases.c.owner, t.leases.c.expires_at)
        .select_from(t.runs.outerjoin(t.leases, t.leases.c.run_id == t.runs.c.id))
        .where(t.runs.c.status == "running")
    )


def _masked(url: str) -> str:
    """The URL with its password replaced (for messages)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


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

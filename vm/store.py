"""The run store: every run, step by step, in one SQLite file.

Default location: ``$PLANVM_HOME/runs.sqlite``, or ``runs.sqlite`` in the user's data directory
(``platformdirs.user_data_dir("planvm")``). The file uses WAL mode and writes one transaction
per executed step, so a process killed at any moment (SIGKILL included) leaves every completed
step on disk and nothing half-written. Synchronous mode is NORMAL: durable across process
crashes; a power cut may lose the last steps, never the file's consistency.

Steps are stored as deltas: each row holds what that step set (``outputs``), its resolved
``inputs``, the raw tool reply (``result``) and LLM exchanges. The variables at any step are
derived by replaying the deltas over the run's initial variables.

Values are stored as JSON; a value JSON cannot hold (a Python object a tool returned) is stored
as its JSON-able form (pydantic_core's ``to_jsonable_python``).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from vm.errors import RunBusy, RunNotFound, StoreError
from vm.jsonsafe import clean_text
from vm.redact import redact

__all__ = ["RunStore", "StoredRun", "StoredStep", "default_store_path"]

_APPLICATION_ID = 0x706C766D  # "plvm"
_SCHEMA_VERSION = 3
# Each step from version N to N+1, applied in order to a store made by older code.
_MIGRATIONS = {
    2: ["ALTER TABLE runs ADD COLUMN limits TEXT"],  # the run's Limits, so a replay keeps them
    3: [  # how the plan was made; approvals
        "ALTER TABLE runs ADD COLUMN planning TEXT",
        "ALTER TABLE runs ADD COLUMN pending TEXT",
        "ALTER TABLE runs ADD COLUMN approve_tools TEXT",
    ],
}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id           TEXT PRIMARY KEY,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    status       TEXT NOT NULL,            -- running | waiting | completed | failed | interrupted
    goal         TEXT,
    metadata     TEXT,                     -- JSON
    plan         TEXT NOT NULL,            -- JSON array
    variables    TEXT NOT NULL,            -- JSON object: the variables the run started with
    parent_id    TEXT REFERENCES runs(id),
    fork_seq     INTEGER,                  -- the seq_no the fork continued from
    final_answer TEXT,                     -- JSON
    error        TEXT,
    owner        TEXT,                     -- host:pid of the process executing it, while it runs
    steps        INTEGER NOT NULL DEFAULT 0,
    limits       TEXT,                     -- JSON: the Limits the run was started with
    planning     TEXT,                     -- JSON: planner, reasoning, model, tokens, attempts
    pending      TEXT,                     -- JSON: the tool call a waiting run waits to have approved
    approve_tools TEXT                     -- JSON array: tools whose calls need approval in this run
);
CREATE TABLE IF NOT EXISTS steps (
    run_id     TEXT NOT NULL REFERENCES runs(id),
    idx        INTEGER NOT NULL,           -- 0-based position in the run's trace
    seq_no     INTEGER NOT NULL,
    type       TEXT NOT NULL,
    tool       TEXT,
    inputs     TEXT,                       -- JSON
    outputs    TEXT,                       -- JSON object: the variables this step set
    result     TEXT,                       -- JSON: raw tool reply, or a jump's verdict
    llm_calls  TEXT,                       -- JSON array
    next_seq   INTEGER,
    duration_s REAL,
    error      TEXT,
    PRIMARY KEY (run_id, idx)
);
CREATE INDEX IF NOT EXISTS runs_parent ON runs(parent_id);
"""


def default_store_path() -> Path:
    home = os.environ.get("PLANVM_HOME")
    if home:
        return Path(home) / "runs.sqlite"
    import platformdirs

    return Path(platformdirs.user_data_dir("planvm")) / "runs.sqlite"


def _dumps(value: Any) -> str:
    # Values reach the store through vm.jsonsafe.storable; this is the last guard for the rest
    # (LLM exchanges, inputs): no NaN, no text SQLite cannot encode.
    return clean_text(json.dumps(value, ensure_ascii=False, default=to_jsonable_python))


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
    owner: str | None = None
    limits: dict[str, Any] | None = None  # the run's Limits (None in runs recorded before they were kept)
    planning: dict[str, Any] | None = None  # how the plan was made (planner, reasoning, model, tokens)
    pending: dict[str, Any] | None = None  # a waiting run's call: {seq_no, tool, tool_params, index}
    approve_tools: list[str] | None = None

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
        )


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str) -> bool:
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine: assume alive (it clears the owner when it ends)
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    """Runs and their steps in one SQLite file. Safe to share between threads and processes."""

    def __init__(self, path: str | Path | None = None, *, timeout: float = 10.0, readonly: bool = False) -> None:
        """Open (creating it if needed) the store at ``path``; ``readonly`` opens an existing store
        only to read it, which works in a folder or on a file this process may not write."""
        self.path = Path(path) if path is not None else default_store_path()
        self.readonly = readonly
        self._lock = threading.RLock()
        if readonly:
            self._conn = self._open_readonly(timeout)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the run store's folder {self.path.parent} ({exc.strerror or exc}); choose another "
                f"location with --store or PLANVM_HOME",
                path=str(self.path),
            ) from None
        try:
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._setup()
        except sqlite3.Error as exc:
            raise self._translate(exc) from None

    def _open_readonly(self, timeout: float) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(
                f"no run store at {self.path} yet (nothing has been recorded there); run a plan first, or pass "
                f"--store",
                path=str(self.path),
            )
        uri = self.path.resolve().as_uri()
        last: sqlite3.Error | None = None
        # mode=ro reads a store another process may be writing; a folder this process cannot write
        # (so no shared-memory file can be made) falls back to reading the file as it is.
        for query in ("mode=ro", "mode=ro&immutable=1"):
            conn = None
            try:
                conn = sqlite3.connect(f"{uri}?{query}", uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                if app_id != _APPLICATION_ID:
                    conn.close()
                    raise StoreError(
                        f"{self.path} is not a planvm run store; choose another with --store or PLANVM_HOME",
                        path=str(self.path),
                    )
                conn.execute("SELECT count(*) FROM runs").fetchone()
                return conn
            except sqlite3.Error as exc:
                if conn is not None:
                    conn.close()
                last = exc
        assert last is not None
        raise self._translate(last) from None

    def _translate(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        where = str(self.path)
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
            return StoreError(
                f"the run store {self.path} stayed locked by another process ({text}); try again when it is done",
                path=str(self.path),
            )
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return StoreError(
                f"{self.path} is not a usable planvm run store ({text}); move it away, or choose another "
                f"location with PLANVM_HOME or --store",
                path=str(self.path),
            )
        return StoreError(f"run store {self.path}: {text}", path=str(self.path))

    def _setup(self) -> None:
        conn = self._conn
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables and app_id != _APPLICATION_ID:
            raise StoreError(
                f"{self.path} is an SQLite file, but not a planvm run store; choose another location with "
                f"PLANVM_HOME or --store",
                path=str(self.path),
            )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        if not tables:
            with self._transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            return
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer planvm (store version {version}); upgrade planvm to use it",
                path=str(self.path),
            )
        if version < _SCHEMA_VERSION:
            with self._transaction():
                for step in range(version + 1, _SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[step]:
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE), committed or rolled back whole."""
        if self.readonly:
            raise StoreError(f"the run store {self.path} was opened to read only", path=str(self.path))
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._translate(exc) from None
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                # SQLite may already have rolled back (a full disk does): roll back only what is open,
                # so the first error is the one reported.
                if self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc) from None
                raise

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self._translate(exc) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- writing --------------------------------------------------------------------------------

    def create_run(
        self,
        plan: list[Any],
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
    ) -> str:
        """Start a run owned by this process; a fork copies its parent's first ``inherit_steps`` steps."""
        run_id = uuid.uuid4().hex[:16]
        now = time.time()
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO runs (id, created_at, updated_at, status, goal, metadata, plan, variables, parent_id, "
                "fork_seq, owner, steps, limits, planning, approve_tools) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, now, now, clean_text(goal) if goal else goal, _dumps(metadata) if metadata is not None else None, _dumps(plan),
                 _dumps(variables or {}), parent_id, fork_seq, _owner(), inherit_steps,
                 _dumps(limits) if limits is not None else None, _dumps(planning) if planning is not None else None,
                 _dumps(approve_tools) if approve_tools else None),
            )
            if parent_id is not None and inherit_steps:
                conn.execute(
                    "INSERT INTO steps SELECT ?, idx, seq_no, type, tool, inputs, outputs, result, llm_calls, next_seq, "
                    "duration_s, error FROM steps WHERE run_id = ? AND idx < ?",
                    (run_id, parent_id, inherit_steps),
                )
        return run_id

    def record_step(self, run_id: str, index: int, record: Any) -> None:
        """Write one executed step (a :class:`vm.StepRecord`) in its own transaction."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO steps (run_id, idx, seq_no, type, tool, inputs, outputs, result, llm_calls, "
                "next_seq, duration_s, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, index, record.seq_no, record.type, record.tool, _dumps(dict(record.inputs)),
                 _dumps(dict(record.outputs)), _dumps(record.result), _dumps(list(record.llm_calls)),
                 record.next_seq, record.duration_s, redact(clean_text(record.error)) if record.error else None),
            )
            # No UPDATE of the runs row here: it holds the plan, and rewriting it per step would make
            # recording cost grow with the plan's size. Step counts are read from the steps table.

    def finish(self, run_id: str, status: str, *, final_answer: Any = None, error: str | None = None) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, final_answer = ?, error = ?, owner = NULL, updated_at = ? WHERE id = ?",
                (status, _dumps(final_answer) if final_answer is not None else None, redact(clean_text(error)) if error else None,
                 time.time(), run_id),
            )

    def wait(self, run_id: str, pending: dict[str, Any]) -> None:
        """Stop a run to wait for a person to approve the call ``pending`` describes."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE runs SET status = 'waiting', pending = ?, owner = NULL, updated_at = ? WHERE id = ?",
                (_dumps(pending), time.time(), run_id),
            )

    def mark_abandoned(self) -> list[str]:
        """Mark runs left ``running`` by a process that has died as ``interrupted`` (a server does
        this when it starts); return their ids. Runs of live processes are left alone."""
        rows = self._read("SELECT id, owner FROM runs WHERE status = 'running'")
        dead = [run_id for run_id, owner in rows if owner is None or not _owner_alive(owner)]
        if dead:
            with self._transaction() as conn:
                for run_id in dead:
                    conn.execute(
                        "UPDATE runs SET status = 'interrupted', owner = NULL, error = ?, updated_at = ? WHERE id = ? "
                        "AND status = 'running'",
                        ("the process running it ended before the run did; resume it", time.time(), run_id),
                    )
        return dead

    def resolve(self, run_id: str) -> str:
        """The full id of the run ``run_id`` names: the id itself, or a unique prefix of one."""
        rows = self._read("SELECT id FROM runs WHERE id = ?", (run_id,))
        if rows:
            return rows[0][0]
        if run_id and all(c in "0123456789abcdef" for c in run_id):
            rows = self._read("SELECT id FROM runs WHERE id >= ? AND id < ? ORDER BY id LIMIT 2", (run_id, run_id + "g"))
            if len(rows) == 1:
                return rows[0][0]
            if len(rows) > 1:
                raise StoreError(
                    f"'{run_id}' is the start of several run ids ({rows[0][0]}, {rows[1][0]}…); give more of the id",
                    path=str(self.path),
                )
        raise RunNotFound(run_id, str(self.path))

    def claim(self, run_id: str) -> StoredRun:
        """Take over a run to resume it: refused while another live process executes it.

        Steps after the last completed one (a step that failed) are dropped: resuming runs them again.
        """
        run_id = self.resolve(run_id)
        with self._transaction() as conn:
            row = conn.execute("SELECT status, owner FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(run_id, str(self.path))
            status, owner = row
            if owner is not None and _owner_alive(owner):
                raise RunBusy(run_id, owner, str(self.path))
            if status == "completed":
                raise StoreError(
                    f"run '{run_id}' already completed; nothing to resume (replay it, or fork it from a step)",
                    path=str(self.path),
                )
            first_error = conn.execute(
                "SELECT min(idx) FROM steps WHERE run_id = ? AND error IS NOT NULL", (run_id,)
            ).fetchone()[0]
            if first_error is not None:
                conn.execute("DELETE FROM steps WHERE run_id = ? AND idx >= ?", (run_id, first_error))
                conn.execute("UPDATE runs SET steps = ? WHERE id = ?", (first_error, run_id))
            conn.execute(
                "UPDATE runs SET owner = ?, status = 'running', error = NULL, pending = NULL, updated_at = ? WHERE id = ?",
                (_owner(), time.time(), run_id),
            )
        return self.get(run_id)

    # --- reading --------------------------------------------------------------------------------

    def get(self, run_id: str) -> StoredRun:
        """The run ``run_id`` (its full id or a unique prefix), with its steps."""
        run_id = self.resolve(run_id)
        rows = self._read(
            "SELECT id, status, plan, variables, created_at, updated_at, goal, metadata, parent_id, fork_seq, "
            "final_answer, error, owner, limits, planning, pending, approve_tools FROM runs WHERE id = ?",
            (run_id,),
        )
        if not rows:
            raise RunNotFound(run_id, str(self.path))
        r = rows[0]
        steps = [
            StoredStep(idx, seq, typ, tool, _loads(inputs) or {}, _loads(outputs) or {}, _loads(result),
                       _loads(llm) or [], nxt, dur or 0.0, err)
            for idx, seq, typ, tool, inputs, outputs, result, llm, nxt, dur, err in self._read(
                "SELECT idx, seq_no, type, tool, inputs, outputs, result, llm_calls, next_seq, duration_s, error "
                "FROM steps WHERE run_id = ? ORDER BY idx",
                (run_id,),
            )
        ]
        return StoredRun(
            id=r[0], status=r[1], plan=_loads(r[2]), variables=_loads(r[3]), steps=steps, created_at=r[4],
            updated_at=r[5], goal=r[6], metadata=_loads(r[7]), parent_id=r[8], fork_seq=r[9],
            final_answer=_loads(r[10]), error=r[11], owner=r[12], limits=_loads(r[13]), planning=_loads(r[14]),
            pending=_loads(r[15]), approve_tools=_loads(r[16]),
        )

    def list_runs(
        self, limit: int = 50, *, status: str | None = None, query: str | None = None, before: tuple[float, str] | None = None
    ) -> list[dict[str, Any]]:
        """Newest first: id, status, created_at, steps, goal, parent_id, fork_seq, plan_file (for
        runs of a plan file). ``status`` and ``query`` (text in the goal or the id) filter;
        ``before`` (created_at, id) pages: the runs after that one in this order."""
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if query:
            escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("(goal LIKE ? ESCAPE '\\' OR id LIKE ? ESCAPE '\\')")
            args += [f"%{escaped}%", f"{escaped}%"]
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [before[0], before[0], before[1]]
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._read(
            "SELECT id, status, created_at, (SELECT count(*) FROM steps WHERE steps.run_id = runs.id), goal, parent_id, "
            f"fork_seq, metadata FROM runs {clause}ORDER BY created_at DESC, id DESC LIMIT ?",
            (*args, limit),
        )
        keys = ("id", "status", "created_at", "steps", "goal", "parent_id", "fork_seq")
        runs = []
        for row in rows:
            run = dict(zip(keys, row[:-1], strict=True))
            metadata = _loads(row[-1])
            plan_file = metadata.get("plan_file") if isinstance(metadata, dict) else None
            run["plan_file"] = plan_file if isinstance(plan_file, str) else None
            runs.append(run)
        return runs

    def step_count(self, run_id: str) -> int:
        return self._read("SELECT count(*) FROM steps WHERE run_id = ?", (run_id,))[0][0]

    def status_of(self, run_id: str) -> str:
        """The run's status alone (cheap: the service polls it while streaming)."""
        rows = self._read("SELECT status FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFound(run_id, str(self.path))
        return rows[0][0]

    def children(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._read("SELECT id, status, fork_seq FROM runs WHERE parent_id = ? ORDER BY created_at", (run_id,))
        return [{"id": i, "status": s, "fork_seq": f} for i, s, f in rows]

    def lineage(self, run_id: str) -> list[str]:
        """The run's ancestors, oldest first, ending with the run itself."""
        chain = [run_id]
        seen = {run_id}
        while True:
            rows = self._read("SELECT parent_id FROM runs WHERE id = ?", (chain[0],))
            if not rows or rows[0][0] is None or rows[0][0] in seen:
                return chain
            chain.insert(0, rows[0][0])
            seen.add(rows[0][0])

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the main file (SQLite also does this on its own)."""
        self._read("PRAGMA wal_checkpoint(TRUNCATE)")

    def size_bytes(self) -> int:
        """Bytes on disk, the write-ahead log included."""
        total = 0
        for suffix in ("", "-wal"):
            path = Path(str(self.path) + suffix)
            if path.exists():
                total += path.stat().st_size
        return total

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

The store is split by concern: :mod:`~vm.store.interface` (:class:`Store`: what the VM and the
engine call), :mod:`~vm.store.locations` (where a store is), :mod:`~vm.store.records` (what it
keeps), :mod:`~vm.store.database` (opening, migrations, retries, transactions),
:mod:`~vm.store.dialects` (what differs between backends: one strategy per backend),
:mod:`~vm.store.runs`, :mod:`~vm.store.leases` (leases and the queue), :mod:`~vm.store.library`
(judgements and the plan library), :mod:`~vm.store.transfer` (import, delete) and
:mod:`~vm.store.lifecycle` (the table of status transitions).

Importing this package loads neither the store's implementation nor a database library:
``RunStore`` and ``DEFAULT_LEASE_SECONDS`` are loaded when first named, and :func:`open_store`
opens one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vm.store.interface import Store
from vm.store.locations import default_store_path, store_missing, store_url
from vm.store.records import StoredRun, StoredStep

__all__ = [
    "DEFAULT_LEASE_SECONDS", "RunStore", "Store", "StoredRun", "StoredStep", "default_store_path", "open_store", "store_missing",
    "store_url",
]


def open_store(location: str | Path | None = None, **options: Any) -> Store:
    """Open the run store at ``location`` (a URL or an SQLite file; None: the default one) with
    :class:`RunStore`'s options: the one place code outside the store makes one."""
    from vm.store.store import RunStore

    return RunStore(location, **options)


def __getattr__(name: str) -> Any:
    if name == "RunStore":
        from vm.store.store import RunStore

        return RunStore
    if name == "DEFAULT_LEASE_SECONDS":
        from vm.store.database import DEFAULT_LEASE_SECONDS

        return DEFAULT_LEASE_SECONDS
    raise AttributeError(f"module 'vm.store' has no attribute {name!r}")

"""The run store as the VM and the engine see it: :class:`Store`, every operation they call.

The VM (:mod:`vm.machine`) and the engine depend on this interface, not on the store that
implements it (:class:`vm.store.RunStore`, on any backend of :mod:`vm.store.dialects`); every
backend passes the same conformance suite (``tests/store/test_conformance.py``). A run's status
changes only as :mod:`vm.store.lifecycle`'s table allows; errors are :mod:`vm.errors`'
(``RunNotFound``, ``RunBusy``, ``RunStateError``, ``RunCancelled``, ``LeaseLost``, ``StoreError``,
``StoreUnavailable``), each with a message that says what to do.

A store is seen from one namespace (:attr:`Store.namespace`, ``default`` unless told): every
read and write names it, so a run, step, judgement or library entry of another namespace is not
there for it (``RunNotFound``); :meth:`Store.in_namespace` gives another namespace's view of the
same database, with that namespace's quotas (``QuotaExceeded`` when admitting a run passes one).

Writes are atomic (one transaction each) and safe to retry: a write whose connection was lost
after the database committed is not applied twice. Methods taking ``run_id`` accept a full id;
those that say so also take a unique prefix of one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from vm.store.records import StoredRun, StoredStep

__all__ = ["Store"]


@runtime_checkable
class Store(Protocol):
    """Runs and their steps, leases, the queue, judgements and the plan library, shared by threads
    and processes."""

    #: Where the store is, for messages (an SQLite file, or a server URL without its password).
    path: Path | str
    #: Opened to read only: every write raises ``StoreError``.
    readonly: bool
    #: Seconds a run this process executes stays its own without a renewal.
    lease_seconds: float
    #: The backend's name: ``sqlite``, ``postgresql``, ``mysql`` (``mariadb``)...
    dialect: str
    #: The schema revision opening this store migrated from (None: it was up to date).
    upgraded_from: str | None
    #: The namespace this store reads and writes.
    namespace: str
    #: Its quotas (None: none): runs planning, queued, running or waiting at once; tokens a day (UTC).
    max_active_runs: int | None
    tokens_per_day: int | None

    def in_namespace(self, namespace: str, *, max_active_runs: int | None = None, tokens_per_day: int | None = None) -> Store:
        """This store seen from ``namespace`` (same database and connections), under its quotas.
        Creating a run that would pass ``max_active_runs``, resuming a stopped one then, or
        either once the day's tokens are spent raises ``QuotaExceeded``; two processes admitting
        runs at once are counted one after the other."""
        ...

    def count_tokens(self, tokens: int) -> None:
        """Add ``tokens`` to this namespace's count of today (steps and planning records add theirs)."""
        ...

    def tokens_today(self) -> int:
        """Tokens this namespace's runs used today (UTC)."""
        ...

    def tokens_left(self) -> int | None:
        """What is left of the daily token quota (None: no quota)."""
        ...

    @property
    def worker_id(self) -> str:
        """The name this store's leases are taken under (``host:pid:tag``)."""
        ...

    @property
    def parallel_calls(self) -> int:
        """How many threads may usefully call the store at once (1: its writers are serialized)."""
        ...

    # --- a run's life: writes made by the process executing it --------------------------------

    def create_run(
        self, plan: list[Any] | None, *, variables: dict[str, Any] | None = None, goal: str | None = None,
        metadata: dict[str, Any] | None = None, parent_id: str | None = None, fork_seq: int | None = None,
        inherit_steps: int = 0, limits: dict[str, Any] | None = None, planning: dict[str, Any] | None = None,
        approve_tools: list[str] | None = None, status: str = "running", error: str | None = None,
        tools: dict[str, Any] | None = None,
    ) -> str:
        """Store a new run; return its id. ``status``: ``running`` or ``planning`` (this process
        holds its lease), ``queued`` (for a worker; owned by no one) or ``failed`` (with
        ``error``: a goal whose planning failed). A fork (``parent_id``) copies its parent's
        first ``inherit_steps`` steps. ``ValueError`` for another status."""
        ...

    def record_step(self, run_id: str, index: int, record: Any) -> None:
        """Write step ``index`` (a :class:`vm.StepRecord`) and renew the lease, in one transaction,
        only while this process holds the lease of a ``running`` run: else ``LeaseLost`` (another
        holds it, or recorded that position) or ``RunCancelled``; nothing is written then."""
        ...

    def start_call(self, run_id: str, seq_no: int, tool: str) -> None:
        """Claim the approved call at ``seq_no`` before its tool starts (the run still this
        process's and ``running``); a cancel before it means the tool never starts
        (``RunCancelled``; ``LeaseLost`` when another holds the run); a cancel after it names it."""
        ...

    def set_plan(self, run_id: str, plan: list[Any], planning: dict[str, Any] | None) -> None:
        """Give a queued, planning or running run its plan; ``RunCancelled`` when cancelled meanwhile."""
        ...

    def fail_planning(self, run_id: str, error: str, planning: dict[str, Any] | None) -> None:
        """End a ``planning`` run as ``failed``, keeping how the planning went."""
        ...

    def finish(
        self, run_id: str, status: str, *, final_answer: Any = None, error: str | None = None, step: tuple[int, Any] | None = None
    ) -> None:
        """End the run this process executes: ``completed``, ``failed`` or ``interrupted``
        (``ValueError`` for another status; ``RunCancelled`` when cancelled meanwhile: nothing
        is written). The lease is dropped. ``step``: (index, record) of the run's last step,
        written as :meth:`record_step` writes it, in the same transaction."""
        ...

    def wait(self, run_id: str, pending: dict[str, Any]) -> None:
        """Stop a ``running`` run to wait for approval of the call ``pending`` describes (``waiting``)."""
        ...

    def release(self, run_id: str) -> None:
        """Give a run this process holds back to the queue (``queued``), its steps kept."""
        ...

    def renew(self, run_id: str) -> bool:
        """Extend this process's live lease on ``run_id``; False when it no longer holds it."""
        ...

    # --- taking runs: any process -----------------------------------------------------------------

    def claim(self, run_id: str, *, held: bool = False, approving: bool = False) -> StoredRun:
        """Take ``run_id`` (or a unique prefix) to execute or resume it and return it: a queued,
        planning, failed or interrupted run (``approving``: only a waiting one) becomes
        ``running`` under this process's lease. ``RunBusy`` while another live process holds it
        (``held``: unless it is this process's own); ``RunStateError`` for a completed or
        cancelled run. Steps from the first failed one on are dropped (resuming runs them again)."""
        ...

    def claim_next(self) -> str | None:
        """Take the next run for this process and return its id: a run whose executor died
        (oldest first), else the oldest queued run; None when there is none. Two processes
        claiming at once never get the same run."""
        ...

    def mark_abandoned(self) -> list[str]:
        """Mark runs whose executor is gone (lease ran out, or its process died on this host)
        ``interrupted``; return their ids. Runs of live processes are left alone."""
        ...

    def cancel(self, run_id: str, reason: str = "cancelled") -> str:
        """Cancel ``run_id`` (or a unique prefix) from any process: a planning, queued, running,
        waiting or interrupted run becomes ``cancelled`` and its executor stops at its next
        commit. Returns the full id; ``RunStateError`` for a completed or cancelled run."""
        ...

    # --- reading ------------------------------------------------------------------------------

    def resolve(self, run_id: str) -> str:
        """The full id ``run_id`` (a full id or a unique prefix) names; ``RunNotFound``, or
        ``StoreError`` for a prefix of several."""
        ...

    def get(self, run_id: str, *, steps: bool = True) -> StoredRun:
        """The run (full id or unique prefix), with its steps unless ``steps=False``; ``RunNotFound``."""
        ...

    def steps_page(self, run_id: str, start: int = 0, limit: int | None = None, *, max_bytes: int | None = None) -> list[StoredStep]:
        """The steps of ``run_id`` from position ``start`` on, in order, ``limit`` at most (all
        when None); ``max_bytes``: fewer, so that their stored text is about that size (one at least)."""
        ...

    def head(self, run_id: str) -> dict[str, Any]:
        """What a watcher polls: status, error, pending, steps (a count), updated_at, owner,
        lease_expires_at. ``RunNotFound``."""
        ...

    def status_of(self, run_id: str) -> str:
        """The run's status alone; ``RunNotFound``."""
        ...

    def step_count(self, run_id: str) -> int:
        """How many steps of ``run_id`` are stored."""
        ...

    def list_runs(
        self, limit: int = 50, *, status: str | None = None, query: str | None = None, before: tuple[float, str] | None = None,
        judged: bool = False, min_score: float | None = None,
    ) -> list[dict[str, Any]]:
        """Runs newest first (created_at, then id, descending), ``limit`` at most, as dicts (id,
        status, created_at, steps, goal, parent_id, fork_seq, plan_file, owner, lease_expires_at,
        score, accept, best_of, updated_at). Filters: ``status``, ``query`` (in the goal, or the
        start of the id), ``judged``, ``min_score``. ``before=(created_at, id)`` of the last run
        of a page gives the next page: no run is skipped or repeated."""
        ...

    def children(self, run_id: str) -> list[dict[str, Any]]:
        """The runs forked from ``run_id``, oldest first (id, status, fork_seq, score, best_of)."""
        ...

    def lineage(self, run_id: str) -> list[str]:
        """The run's ancestors, oldest first, ending with the run itself."""
        ...

    # --- judgements and the plan library ------------------------------------------------------

    def set_judgement(self, run_id: str, judgement: dict[str, Any]) -> None:
        """Keep the judge's grade (its ``score`` filterable) with the run; a later one replaces it."""
        ...

    def mark_best(self, run_id: str, of: str) -> None:
        """Mark ``run_id`` the best run of a plan search from ``of`` (clearing the search's earlier mark)."""
        ...

    def completed_runs(self, since: float | None = None) -> list[dict[str, Any]]:
        """Every completed run with a goal, oldest first (created at ``since`` or later)."""
        ...

    def library_put(self, entry: dict[str, Any]) -> tuple[str, list[str]]:
        """Keep a best plan (goal, goal_key, plan, tools; language, label, embedding...); an
        entry of the same goal_key and language is replaced. Returns (its id, the ids replaced)."""
        ...

    def library_entries(self, goal_key: str | None = None, *, ids: list[str] | None = None, light: bool = False) -> list[dict[str, Any]]:
        """Kept plans, oldest first (those of ``goal_key``, or with ``ids``); ``light``: without
        the plans, only what choosing among them needs. Embeddings read back as lists of floats."""
        ...

    def library_signature(self) -> tuple[int, float | None]:
        """(entries, newest entry's time): changes whenever an entry is kept or removed."""
        ...

    def library_remove(self, entry_id: str) -> str:
        """Remove the entry ``entry_id`` (or a unique prefix); its full id. ``StoreError`` when
        none or several match."""
        ...

    # --- moving runs in and out ---------------------------------------------------------------

    def import_run(self, run: StoredRun) -> str:
        """Store an exported run with its steps under its own id (one in progress as
        ``interrupted``); ``StoreError`` when that id is here already (nothing is written)."""
        ...

    def delete_run(self, run_id: str, *, force: bool = False) -> list[str]:
        """Delete a run (or unique prefix) with its steps and forks, in one transaction; the
        deleted ids, the run first. ``RunStateError`` for one that may be executing, unless ``force``."""
        ...

    # --- the store itself ---------------------------------------------------------------------

    def upgrade(self) -> tuple[str | None, str]:
        """Apply the migrations the store lacks; (revision before, revision now)."""
        ...

    def ping(self) -> None:
        """One round trip to the database, not retried (``StoreError`` when it does not answer)."""
        ...

    def public(self, text: str) -> str:
        """``text`` without where the store is (its file or URL, a server's host and port)."""
        ...

    def close(self) -> None:
        """Release the store's connections."""
        ...

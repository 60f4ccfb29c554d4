"""A run's lifecycle: every status change a run can make, as one table, applied compare-and-set.

::

    (new) ──start──▶ running ──wait──▶ waiting ──approve──▶ running
    (new) ──enqueue─▶ queued ──claim──▶ running ──complete──▶ completed
    (new) ──open────▶ planning ──claim──▶ running       (a goal planned after its id was given out)
                      planning ──fail───▶ failed        (planning failed; its attempts kept)
                      planning ──interrupt─▶ interrupted (its planner stopped: Ctrl-C; resume plans it again)
                      planning ──abandon───▶ interrupted (its process died while planning)
                                        running ──fail──────▶ failed ──claim (resume)──▶ running
                                        running ──release───▶ queued         (a worker stopping)
                                        running ──interrupt─▶ interrupted    (its executor stopped)
                                        running ──abandon───▶ interrupted    (its executor died)
                                    interrupted ──claim─────▶ running
    planning | queued | running | waiting | interrupted ──cancel──▶ cancelled

``completed`` and ``cancelled`` are final (fork a run to go on from one of its steps). The status
in the store is the only truth about a run: a process changes it only through :func:`transition`,
in the transaction of the change, and only when the run is still in one of the statuses the
event starts from (so two processes racing, e.g. an approval and a cancel, cannot both win).

Events marked ``executor`` are made by the process executing the run and need its lease (a
process whose lease another live process took gets ``LeaseLost``); the others (cancel, claim,
abandon) may be made by any process. A cancel removes the run's lease, so its executor learns of
it at its next step commit (``RunCancelled``) and writes nothing more. A tool that needs approval
starts only after its executor claimed the call (``RunStore.start_call``: the run's row locked, its
status and lease checked, the call written on the lease, in one transaction), so a cancel either
comes first (the tool never starts) or finds the call on the lease and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from vm.errors import LeaseLost, RunCancelled, RunNotFound, RunStateError

__all__ = ["STATUSES", "TRANSITIONS", "Transition", "transition"]

STATUSES = frozenset({"planning", "queued", "running", "waiting", "completed", "failed", "cancelled", "interrupted"})


@dataclass(frozen=True, slots=True)
class Transition:
    sources: frozenset[str]
    target: str
    executor: bool  # made by the lease holder (its lease is checked)
    refusal: str  # what to tell someone whose run is in another status


def _t(sources: str, target: str, *, executor: bool = False, refusal: str = "") -> Transition:
    return Transition(frozenset(sources.split()), target, executor, refusal)


TRANSITIONS: dict[str, Transition] = {
    "claim": _t("planning queued running failed interrupted", "running",
                refusal="only a queued, interrupted or failed run can be resumed"),
    "approve": _t("waiting", "running", refusal="only a waiting run can be approved or rejected"),
    "wait": _t("running", "waiting", executor=True),
    "complete": _t("running", "completed", executor=True),
    "fail": _t("running planning", "failed", executor=True),
    "interrupt": _t("running planning", "interrupted", executor=True),
    "release": _t("running", "queued", executor=True),
    "abandon": _t("running planning", "interrupted"),
    "cancel": _t("planning queued running waiting interrupted", "cancelled",
                 refusal="a completed or cancelled run cannot be cancelled"),
}

_HINTS = {
    "completed": "it already completed; replay it, or fork it from a step",
    "cancelled": "it was cancelled; fork it from a step to go on",
    "failed": "it failed; resume it to run its failed step again",
    "waiting": "it waits for an approval; approve or reject its pending call, or cancel it",
    "running": "it is running",
    "planning": "its plan is being written",
    "queued": "it waits in the queue for a worker",
    "interrupted": "its executor stopped before it ended; resume it",
}


def transition(
    conn: Any, tables: Any, run_id: str, event: str, *, worker: str, path: str | None, lease_dead: Any = None,
    lock_row: Any = None, sql: Any = None, namespace: str = "default", **values: Any
) -> str:
    """Apply ``event`` to ``run_id`` inside the caller's transaction; return the status it left.

    Raises ``RunNotFound``; ``RunCancelled`` to an executor whose run was cancelled;
    ``RunStateError`` when the run's status is not one the event starts from; ``LeaseLost`` when an
    executor event comes from a process that no longer holds the lease. ``values`` are the other
    columns the change sets. ``lease_dead(owner)`` tells whether a lease owner's process is gone
    (for events that may take a run whose lease is still recorded). ``lock_row(select)``: the
    status read holding the run's row (the store's dialect: ``FOR UPDATE`` on a database server;
    SQLite's write transaction already excludes others), so of two processes racing the second
    sees the first one's change. ``namespace``: the run is found only in it (another
    namespace's run is ``RunNotFound``). ``sql(conn, key, build,
    params)`` runs a statement built once per key (the store's :meth:`~vm.store.database.Database._sql`;
    default: built each time)."""
    import sqlalchemy as sa

    if sql is None:
        def sql(conn: Any, _key: Any, build: Any, params: Any = None) -> Any:
            return conn.execute(build(), params or {})

    rule = TRANSITIONS[event]
    runs, leases = tables.runs, tables.leases
    rid = sa.bindparam("rid")

    def read_status() -> Any:
        read = sa.select(runs.c.status).where(runs.c.id == rid, runs.c.namespace == sa.bindparam("ns"))
        return lock_row(read) if lock_row is not None else read

    row = sql(conn, "status", read_status, {"rid": run_id, "ns": namespace}).fetchone()
    if row is None:
        raise RunNotFound(run_id, path)
    status = row[0]
    if status not in rule.sources:
        if rule.executor and status == "cancelled":
            raise RunCancelled(run_id, path)
        if rule.executor:
            raise LeaseLost(run_id, worker, path)
        raise RunStateError(
            f"run '{run_id}' is {status}: {_HINTS.get(status, '')}" + (f" ({rule.refusal})" if rule.refusal else ""),
            run_id=run_id, status=status, path=path,
        )
    now = time.time()
    lease = sql(conn, "lease", lambda: sa.select(leases.c.owner, leases.c.expires_at).where(leases.c.run_id == rid),
                {"rid": run_id}).fetchone()
    owner, expires_at = (lease[0], lease[1]) if lease is not None else (None, None)
    if rule.executor and lease is not None and owner != worker and expires_at >= now:
        raise LeaseLost(run_id, worker, path)
    if event == "abandon" and lease is not None and expires_at >= now and not (lease_dead and lease_dead(owner)):
        raise RunStateError(f"run '{run_id}' is running under a live lease ({owner})", run_id=run_id, status=status, path=path)
    if rule.target != "running":  # claim and approve take the lease next, in the same transaction
        sql(conn, "lease-drop", lambda: leases.delete().where(leases.c.run_id == sa.bindparam("r")), {"r": run_id})
    names = tuple(sorted(values))

    def update() -> Any:
        return runs.update().where(runs.c.id == rid, runs.c.status == sa.bindparam("old")).values(
            {"status": sa.bindparam("new"), "updated_at": sa.bindparam("now"), **{n: sa.bindparam(f"v_{n}") for n in names}})

    changed = sql(conn, ("change", names), update,
                  {"rid": run_id, "old": status, "new": rule.target, "now": now, **{f"v_{n}": v for n, v in values.items()}})
    if changed.rowcount != 1:  # another process changed it between our read and our write
        raise RunStateError(f"run '{run_id}' changed status while this request acted on it; try again", run_id=run_id,
                            status=status, path=path)
    return status

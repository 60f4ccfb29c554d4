"""Leases and the queue: who executes a run, taking a queued run or a dead worker's, and the
lifecycle transitions (:mod:`vm.store.lifecycle`) applied in a transaction."""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

from vm.errors import LeaseLost, RunBusy, RunCancelled, RunStateError, StoreError
from vm.store.database import _schema
from vm.store.records import StoredRun, busy_seconds

__all__ = ["EXECUTED", "Leases"]

#: The statuses of a run some process is executing under a lease: when that process is gone, the
#: run is abandoned (``interrupted``) or taken by a worker. A planning run is planned again.
EXECUTED = ("running", "planning")


class Leases:
    """The lease and queue operations of :class:`vm.store.RunStore` (a part of it, not a store of its own)."""

    @property
    def worker_id(self) -> str:
        return self._owner or _worker_id()

    def _change(self, conn: Any, run_id: str, event: str, **values: Any) -> str:
        """Apply a lifecycle event to ``run_id`` in ``conn``'s transaction (see :mod:`vm.store.lifecycle`)."""
        from vm.store.lifecycle import transition

        return transition(conn, _schema(), run_id, event, worker=self.worker_id, path=str(self.path), lease_dead=_owner_dead,
                          lock_row=self.backend.lock_row, sql=self._sql, namespace=self.namespace, **values)

    def _take_lease(self, conn: Any, run_id: str, now: float) -> None:
        t = _schema()
        self._sql(conn, "lease-drop", lambda: t.leases.delete().where(t.leases.c.run_id == sa_param("r")), {"r": run_id})
        self._sql(conn, "lease-take", lambda: t.leases.insert().values(
            run_id=sa_param("r"), owner=sa_param("o"), expires_at=sa_param("until")),
            {"r": run_id, "o": self.worker_id, "until": now + self.lease_seconds})

    def _renew_in(self, conn: Any, run_id: str, now: float, *, running: bool = False) -> bool:
        """Extend this process's live lease; ``running``: only while the run is ``running`` (a step
        commit: a planning, waiting or cancelled run takes no step)."""
        key = "renew-running" if running else "renew"
        build = (lambda: _hot().renew_running) if running else (lambda: _hot().renew)
        params = {"r": run_id, "o": self.worker_id, "now": now, "until": now + self.lease_seconds}
        if running:
            params["ns"] = self.namespace
        done = self._sql(conn, key, build, params)
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

    def mark_abandoned(self) -> list[str]:
        """Mark runs left ``running`` or ``planning`` by a process that is gone (its lease ran
        out, or it died on this host) as ``interrupted``; return their ids (resuming one that was
        being planned plans it again). Runs of live processes are left alone. (A ``queued``,
        ``waiting`` or ``interrupted`` run has no executor to lose.)"""
        t = _schema()
        now = time.time()
        rows = self._read(_running_with_leases(t).where(t.runs.c.namespace == self.namespace))
        dead = []
        for row in rows:
            if not (row.owner is None or row.expires_at < now or _owner_dead(row.owner)):
                continue
            try:
                why = ("the process planning it ended before its plan was written; resume it to plan it again"
                       if row.status == "planning" else "the process running it ended before the run did; resume it")
                self._write(lambda conn, run_id=row.id, why=why: self._change(conn, run_id, "abandon", owner=None, error=why))
            except RunStateError:
                continue  # taken or ended by another process meanwhile
            dead.append(row.id)
        return dead

    def _claim_in(self, conn: Any, run_id: str, held: bool = False, approving: bool = False) -> None:
        import sqlalchemy as sa

        t = _schema()
        if self.has_quota:  # (first: see _lock_namespace)
            self._lock_namespace(conn)
        now = time.time()
        lease = conn.execute(sa_select_lease(t, run_id)).first()
        mine = lease is not None and lease.owner == self.worker_id
        if lease is not None and lease.expires_at >= now and not (mine and held) and not _owner_dead(lease.owner):
            raise RunBusy(run_id, f"{lease.owner}, lease for {lease.expires_at - now:.0f} s more", str(self.path))
        was = self._change(conn, run_id, "approve" if approving else "claim", error=None, pending=None)
        if self.has_quota and was in ("failed", "interrupted"):  # a stopped run admitted again
            self._admit(conn, adding=0, lock=False)
        first_error = conn.execute(
            sa.select(sa.func.min(t.steps.c.idx)).where(t.steps.c.run_id == run_id, t.steps.c.error.is_not(None))
        ).scalar()
        if first_error is not None:
            dropped = t.steps.c.run_id == run_id, t.steps.c.idx >= first_error
            spans = conn.execute(sa.select(t.steps.c.started_at, t.steps.c.duration_s).where(*dropped)).fetchall()
            # The time those steps took stays counted against the run's max_seconds.
            spent = conn.execute(sa.select(t.runs.c.spent_s).where(t.runs.c.id == run_id)).scalar() or 0.0
            conn.execute(t.runs.update().where(t.runs.c.id == run_id).values(spent_s=spent + busy_seconds(spans)))
            conn.execute(t.steps.delete().where(*dropped))
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
        for this process (``SELECT … FOR UPDATE SKIP LOCKED`` on a database server; SQLite's write
        lock serializes workers on one machine: see the dialect's ``skip_locked``). None when there is none."""
        import sqlalchemy as sa

        t = _schema()

        def body(conn: Any) -> str | None:
            now = time.time()
            # Runs whose worker died come first (running, or being planned: planned again): they
            # were taken before anything queued now.
            stale = (
                sa.select(t.runs.c.id)
                .select_from(t.runs.outerjoin(t.leases, t.leases.c.run_id == t.runs.c.id))
                .where(t.runs.c.namespace == self.namespace, t.runs.c.status.in_(EXECUTED),
                       sa.or_(t.leases.c.run_id.is_(None), t.leases.c.expires_at < now))
                .order_by(t.runs.c.created_at)
                .limit(1)
            )
            found = conn.execute(self.backend.skip_locked(stale, of=t.runs)).scalar()
            if found is None:
                queued = (sa.select(t.runs.c.id).where(t.runs.c.namespace == self.namespace, t.runs.c.status == "queued")
                          .order_by(t.runs.c.created_at).limit(1))
                found = conn.execute(self.backend.skip_locked(queued, of=t.runs)).scalar()
            if found is None:
                return None
            self._claim_in(conn, found)
            return found

        return self._write(body)


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
        running = sa.exists().where(t.runs.c.id == sa.bindparam("r"), t.runs.c.status == "running",
                                    t.runs.c.namespace == sa.bindparam("ns"))
        self.renew_running = self.renew.where(running)
        self.start_call = self.renew.where(running).values(expires_at=sa.bindparam("until"), calling=sa.bindparam("calling"))
        self.insert_step = t.steps.insert()


_HOT: _HotStatements | None = None


def _hot() -> _HotStatements:
    global _HOT
    if _HOT is None:
        _HOT = _HotStatements()
    return _HOT


def sa_param(name: str) -> Any:
    import sqlalchemy as sa

    return sa.bindparam(name)


def sa_select_lease(t: Any, run_id: str) -> Any:
    import sqlalchemy as sa

    return sa.select(t.leases.c.owner, t.leases.c.expires_at).where(t.leases.c.run_id == run_id)


def _running_with_leases(t: Any) -> Any:
    import sqlalchemy as sa

    return (
        sa.select(t.runs.c.id, t.leases.c.owner, t.leases.c.expires_at, t.runs.c.status)
        .select_from(t.runs.outerjoin(t.leases, t.leases.c.run_id == t.runs.c.id))
        .where(t.runs.c.status.in_(EXECUTED))
    )


def sa_select_calling(t: Any) -> Any:
    import sqlalchemy as sa

    return sa.select(t.leases.c.calling).where(t.leases.c.run_id == sa.bindparam("r"))


def _under_way(calling: str) -> str:
    """What a cancel says of the approved call its run's executor had started ("<seq_no> <tool>")
    since it took the run: it may be under way, or done."""
    seq, _, tool = calling.partition(" ")
    return f"the approved call at seq_no {seq} to '{tool}' had already started; it may have taken effect"

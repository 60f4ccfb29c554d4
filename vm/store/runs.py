"""Runs and their steps: creating, recording, ending and reading them."""

from __future__ import annotations

import time
import uuid
from typing import Any

from vm.errors import RunNotFound, StoreError
from vm.jsonsafe import clean_text
from vm.redact import redact
from vm.store.database import _schema
from vm.store.leases import _hot, _under_way, sa_select_calling
from vm.store.records import StoredRun, StoredStep, _dumps, _loads

__all__ = ["Runs"]


class Runs:
    """The run and step operations of :class:`vm.store.RunStore`."""

    # --- writing ------------------------------------------------------------------------------

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
        tools: dict[str, Any] | None = None,
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

        row = dict(
            id=run_id, created_at=now, updated_at=now, status=status, goal=clean_text(goal) if goal else goal,
            metadata=_dumps(metadata) if metadata is not None else None, plan=_dumps(plan), variables=_dumps(variables or {}),
            parent_id=parent_id, fork_seq=fork_seq, steps=inherit_steps, limits=_dumps(limits) if limits is not None else None,
            planning=_dumps(planning) if planning is not None else None, approve_tools=_dumps(approve_tools) if approve_tools else None,
            error=redact(clean_text(error)) if error else None, tools=_dumps(tools) if tools is not None else None,
            namespace=self.namespace,
        )

        def body(conn: Any) -> None:
            if status != "failed" and self.has_quota:
                self._admit(conn)
            if parent_id is not None and self._sql(conn, "run-in-ns", lambda: _in_namespace(t), {"rid": parent_id, "ns": self.namespace}).fetchone() is None:
                raise RunNotFound(parent_id, str(self.path))  # (a fork never crosses namespaces)
            self._sql(conn, "run-insert", t.runs.insert, row)
            if status in ("running", "planning"):  # this process is at work on it
                self._take_lease(conn, run_id, now)
            if parent_id is not None and inherit_steps:
                s = t.steps
                copied = sa.select(
                    sa.literal(run_id, sa.String(32)), s.c.idx, s.c.seq_no, s.c.type, s.c.tool, s.c.inputs, s.c.outputs,
                    s.c.result, s.c.llm_calls, s.c.next_seq, s.c.duration_s, s.c.error, s.c.notes, s.c.started_at,
                ).where(s.c.run_id == parent_id, s.c.idx < inherit_steps)
                conn.execute(s.insert().from_select(
                    ["run_id", "idx", "seq_no", "type", "tool", "inputs", "outputs", "result", "llm_calls", "next_seq", "duration_s", "error",
                     "notes", "started_at"],
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
        self.count_tokens(_planning_tokens(planning))

    def set_plan(self, run_id: str, plan: list[Any], planning: dict[str, Any] | None) -> None:
        """Give a goal its plan (a worker, or the service, planned it); ``RunCancelled`` when the
        run was cancelled meanwhile (nothing is written then)."""
        t = _schema()

        def body(conn: Any) -> None:
            done = conn.execute(
                t.runs.update().where(t.runs.c.id == run_id, t.runs.c.namespace == self.namespace,
                                      t.runs.c.status.in_(("queued", "running", "planning"))).values(
                    plan=_dumps(plan), planning=_dumps(planning) if planning is not None else None, updated_at=time.time()))
            if done.rowcount != 1:
                raise self._why_lost(conn, run_id)

        self._write(body)
        self.count_tokens(_planning_tokens(planning))

    def record_step(self, run_id: str, index: int, record: Any) -> None:
        """Write one executed step (a :class:`vm.StepRecord`) in its own transaction, if this
        process still holds the run's lease (``LeaseLost`` otherwise: nothing is written)."""
        self._write(self._step_writer(run_id, index, record), self._step_landed(run_id, index, record))
        self.count_tokens(_call_tokens(record.llm_calls))

    def _step_writer(self, run_id: str, index: int, record: Any) -> Any:
        """The body of a step commit: the lease check and renewal, then the step's row."""
        row = dict(
            run_id=run_id, idx=index, seq_no=record.seq_no, type=record.type, tool=record.tool, inputs=_dumps(dict(record.inputs)),
            outputs=_dumps(dict(record.outputs)), result=_dumps(record.result), llm_calls=_dumps(list(record.llm_calls)),
            next_seq=record.next_seq, duration_s=record.duration_s, error=redact(clean_text(record.error)) if record.error else None,
            notes=_dumps(list(record.notes)) if record.notes else None, started_at=getattr(record, "started_at", None),
        )

        def body(conn: Any) -> None:
            if not self._renew_in(conn, run_id, time.time(), running=True):
                raise self._why_lost(conn, run_id)
            try:
                self._sql(conn, "step-insert", lambda: _hot().insert_step, row)
            except self.backend.integrity_errors:
                raise self._lost(run_id) from None  # another process recorded this position: it owns the run
            # No UPDATE of the runs row here: it holds the plan, and rewriting it per step would make
            # recording cost grow with the plan's size. Step counts are read from the steps table.

        return body

    @staticmethod
    def _step_landed(run_id: str, index: int, record: Any) -> Any:
        import sqlalchemy as sa

        def landed(conn: Any) -> bool:
            s = _schema().steps.c
            found = conn.execute(sa.select(s.seq_no, s.type).where(s.run_id == run_id, s.idx == index)).first()
            return found is not None and (found[0], found[1]) == (record.seq_no, record.type)

        return landed

    _FINISH_EVENTS = {"completed": "complete", "failed": "fail", "interrupted": "interrupt"}

    def finish(
        self, run_id: str, status: str, *, final_answer: Any = None, error: str | None = None, step: tuple[int, Any] | None = None
    ) -> None:
        """End the run this process executes: ``completed``, ``failed`` or ``interrupted``
        (``RunCancelled`` when it was cancelled meanwhile: nothing is written). ``step``: (index,
        record) of the run's last step, written first in the same transaction as
        :meth:`record_step` writes it (one commit instead of two for the step that ends a run)."""
        event = self._FINISH_EVENTS.get(status)
        if event is None:
            raise ValueError(f"finish() takes completed, failed or interrupted, not {status!r} (cancel() cancels)")
        answer = _dumps(final_answer) if final_answer is not None else None
        why = redact(clean_text(error)) if error else None
        write_step = self._step_writer(run_id, *step) if step is not None else None

        def body(conn: Any) -> None:
            if write_step is not None:
                write_step(conn)
            self._change(conn, run_id, event, final_answer=answer, error=why, owner=None)

        self._write(body, self._status_is(status, run_id))
        if step is not None:
            self.count_tokens(_call_tokens(step[1].llm_calls))

    def wait(self, run_id: str, pending: dict[str, Any]) -> None:
        """Stop a run to wait for a person to approve the call ``pending`` describes."""
        self._write(lambda conn: self._change(conn, run_id, "wait", pending=_dumps(pending), owner=None), self._status_is("waiting", run_id))

    def release(self, run_id: str) -> None:
        """Give a run this process holds back to the queue (a worker stopping), steps kept."""
        self._write(lambda conn: self._change(conn, run_id, "release", owner=None), self._status_is("queued", run_id))

    def cancel(self, run_id: str, reason: str = "cancelled") -> str:
        """Cancel ``run_id`` (its full id or a unique prefix) from any process, whoever executes
        it: a planning, queued, running, waiting or interrupted run becomes ``cancelled`` at once,
        and its executor stops at its next step commit. An approved call its executor had
        already claimed (see :meth:`start_call`) is named in the run's error after ``reason``.
        Returns the run's full id; ``RunStateError`` for a completed or cancelled run."""
        run_id = self.resolve(run_id)

        def body(conn: Any) -> None:
            # The run's row locked first (a database server), so the call its executor may be
            # starting is either recorded before this reads it, or never starts (see start_call).
            self._lock_run(conn, run_id)
            started = self._sql(conn, "lease-calling", lambda: sa_select_calling(_schema()), {"r": run_id}).fetchone()
            why = reason if started is None or not started[0] else f"{reason} ({_under_way(started[0])})"
            self._change(conn, run_id, "cancel", error=redact(clean_text(why)), pending=None, owner=None)

        self._write(body, self._status_is("cancelled", run_id))
        return run_id

    def start_call(self, run_id: str, seq_no: int, tool: str) -> None:
        """Claim the call at ``seq_no`` before its tool starts, in one transaction with the check
        that the run is still this process's and ``running``: a cancel made before it means the
        tool never starts (``RunCancelled``; ``LeaseLost`` when another process holds the run).
        A cancel made after it (while this process holds the run) says the call had started."""
        def body(conn: Any) -> None:
            self._lock_run(conn, run_id)
            now = time.time()
            done = self._sql(conn, "call-start", lambda: _hot().start_call,
                             {"r": run_id, "o": self.worker_id, "now": now, "until": now + self.lease_seconds,
                              "calling": f"{seq_no} {tool}"[:255], "ns": self.namespace})
            if done.rowcount != 1:
                raise self._why_lost(conn, run_id)

        self._write(body)

    def _lock_run(self, conn: Any, run_id: str) -> None:
        """Hold the run's row until the transaction ends (the dialect's ``lock_row``: ``FOR UPDATE``,
        ``FOR NO KEY UPDATE`` on PostgreSQL; nothing where a write transaction already excludes
        every other writer, as SQLite's does)."""
        if self.backend.locks_rows:
            import sqlalchemy as sa

            runs = _schema().runs
            self._sql(conn, "run-lock", lambda: self.backend.lock_row(sa.select(runs.c.id).where(runs.c.id == sa.bindparam("r"))),
                      {"r": run_id})

    def resolve(self, run_id: str) -> str:
        """The full id of the run ``run_id`` names: the id itself, or a unique prefix of one."""
        import sqlalchemy as sa

        t = _schema()
        if self._read_sql("run-exists", lambda: _in_namespace(t), {"rid": run_id, "ns": self.namespace}):
            return run_id
        if run_id and all(c in "0123456789abcdef" for c in run_id) and len(run_id) < 32:
            rows = self._read(
                sa.select(t.runs.c.id).where(t.runs.c.id >= run_id, t.runs.c.id < run_id + "g", t.runs.c.namespace == self.namespace)
                .order_by(t.runs.c.id).limit(2)
            )
            if len(rows) == 1:
                return rows[0][0]
            if len(rows) > 1:
                raise StoreError(
                    f"'{run_id}' is the start of several run ids ({rows[0][0]}, {rows[1][0]}…); give more of the id",
                    path=str(self.path),
                )
        raise RunNotFound(run_id, str(self.path))

    # --- reading ------------------------------------------------------------------------------

    def get(self, run_id: str, *, steps: bool = True) -> StoredRun:
        """The run ``run_id`` (its full id or a unique prefix), with its steps (``steps=False``:
        without them; read them a page at a time with :meth:`steps_page`)."""
        import sqlalchemy as sa

        t = _schema()
        run_id = self.resolve(run_id)
        r = t.runs.c
        rows = self._read_sql("run-get", lambda: (
            sa.select(r.id, r.status, r.plan, r.variables, r.created_at, r.updated_at, r.goal, r["metadata"], r.parent_id, r.fork_seq,
                      r.final_answer, r.error, t.leases.c.owner, t.leases.c.expires_at, r.limits, r.planning, r.pending, r.approve_tools,
                      r.judgement, r.best_of, r.tools, r.spent_s)
            .select_from(t.runs.outerjoin(t.leases, t.leases.c.run_id == r.id))
            .where(r.id == sa.bindparam("rid"), r.namespace == sa.bindparam("ns"))
        ), {"rid": run_id, "ns": self.namespace})
        if not rows:
            raise RunNotFound(run_id, str(self.path))
        row = rows[0]
        return StoredRun(
            id=row[0], status=row[1], plan=_loads(row[2]), variables=_loads(row[3]),
            steps=self.steps_page(run_id) if steps else [], created_at=row[4],
            updated_at=row[5], goal=row[6], metadata=_loads(row[7]), parent_id=row[8], fork_seq=row[9],
            final_answer=_loads(row[10]), error=row[11], owner=row[12], lease_expires_at=row[13], limits=_loads(row[14]),
            planning=_loads(row[15]), pending=_loads(row[16]), approve_tools=_loads(row[17]), judgement=_loads(row[18]),
            best_of=row[19], tools=_loads(row[20]), spent_s=row[21] or 0.0,
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
            sizes = self._read(sa.select(s.idx, size).where(s.run_id == run_id, s.idx >= start, _ns_owns(s.run_id, self.namespace))
                               .order_by(s.idx).limit(limit or 1000))
            total, taken = 0, 0
            for _idx, bytes_ in sizes:
                if taken and total + (bytes_ or 0) > max_bytes:
                    break
                total += bytes_ or 0
                taken += 1
            limit = max(taken, 1)
        def page() -> Any:
            statement = (
                sa.select(s.idx, s.seq_no, s.type, s.tool, s.inputs, s.outputs, s.result, s.llm_calls, s.next_seq, s.duration_s, s.error,
                          s.notes, s.started_at)
                .where(s.run_id == sa.bindparam("rid"), s.idx >= sa.bindparam("start"), _ns_owns(s.run_id, sa.bindparam("ns")))
                .order_by(s.idx)
            )
            return statement if limit is None else statement.limit(sa.bindparam("lim", type_=sa.Integer))

        rows = self._read_sql(("steps-page", limit is None), page, {"rid": run_id, "start": start, "lim": limit, "ns": self.namespace})
        return [
            StoredStep(x[0], x[1], x[2], x[3], _loads(x[4]) or {}, _loads(x[5]) or {}, _loads(x[6]), _loads(x[7]) or [], x[8],
                       x[9] or 0.0, x[10], _loads(x[11]) or [], x[12])
            for x in rows
        ]

    def head(self, run_id: str) -> dict[str, Any]:
        """What a watcher polls, cheaply: status, error, pending call, step count, updated_at,
        and the lease (owner, expires_at) while one is held."""
        import sqlalchemy as sa

        t = _schema()
        r = t.runs.c
        def statement() -> Any:
            counted = sa.select(sa.func.count()).where(t.steps.c.run_id == r.id).scalar_subquery()
            return (sa.select(r.status, r.error, r.pending, counted, r.updated_at, t.leases.c.owner, t.leases.c.expires_at)
                    .select_from(t.runs.outerjoin(t.leases, t.leases.c.run_id == r.id))
                    .where(r.id == sa.bindparam("rid"), r.namespace == sa.bindparam("ns")))

        rows = self._read_sql("run-head", statement, {"rid": run_id, "ns": self.namespace})
        if not rows:
            raise RunNotFound(run_id, str(self.path))
        status, error, pending, steps, updated_at, owner, expires_at = rows[0]
        return {"status": status, "error": error, "pending": _loads(pending), "steps": steps, "updated_at": updated_at,
                "owner": owner, "lease_expires_at": expires_at}

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
                              t.leases.c.owner, t.leases.c.expires_at, r.score, r.judgement, r.best_of, r.updated_at).select_from(
            t.runs.outerjoin(t.leases, t.leases.c.run_id == r.id)).where(r.namespace == self.namespace)
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
                "accept": (_loads(row[11]) or {}).get("accept") if row[11] else None, "best_of": row[12], "updated_at": row[13],
            })
        return runs

    def step_count(self, run_id: str) -> int:
        import sqlalchemy as sa

        t = _schema()
        return self._read(sa.select(sa.func.count()).select_from(t.steps).where(
            t.steps.c.run_id == run_id, _ns_owns(t.steps.c.run_id, self.namespace)))[0][0]

    def status_of(self, run_id: str) -> str:
        """The run's status alone (cheap: the service polls it while streaming)."""
        import sqlalchemy as sa

        t = _schema()
        rows = self._read_sql("run-status", lambda: sa.select(t.runs.c.status).where(
            t.runs.c.id == sa.bindparam("rid"), t.runs.c.namespace == sa.bindparam("ns")), {"rid": run_id, "ns": self.namespace})
        if not rows:
            raise RunNotFound(run_id, str(self.path))
        return rows[0][0]

    def children(self, run_id: str) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        t = _schema()
        r = t.runs.c
        rows = self._read(sa.select(r.id, r.status, r.fork_seq, r.score, r.best_of).where(r.parent_id == run_id, r.namespace == self.namespace)
                          .order_by(r.created_at))
        return [{"id": i, "status": s, "fork_seq": f, "score": sc, "best_of": b} for i, s, f, sc, b in rows]

    def lineage(self, run_id: str) -> list[str]:
        """The run's ancestors, oldest first, ending with the run itself."""
        import sqlalchemy as sa

        t = _schema()
        chain = [run_id]
        seen = {run_id}
        while True:
            rows = self._read(sa.select(t.runs.c.parent_id).where(t.runs.c.id == chain[0], t.runs.c.namespace == self.namespace))
            if not rows or rows[0][0] is None or rows[0][0] in seen:
                return chain
            chain.insert(0, rows[0][0])
            seen.add(rows[0][0])


def _in_namespace(t: Any) -> Any:
    """The run ``:rid`` if it is in namespace ``:ns`` (its id, else no row)."""
    import sqlalchemy as sa

    return sa.select(t.runs.c.id).where(t.runs.c.id == sa.bindparam("rid"), t.runs.c.namespace == sa.bindparam("ns"))


def _ns_owns(run_id_column: Any, namespace: Any) -> Any:
    """A condition: the run a step row names is in ``namespace`` (a value or a bind parameter)."""
    import sqlalchemy as sa

    runs = _schema().runs
    return sa.exists().where(runs.c.id == run_id_column, runs.c.namespace == namespace)


def _call_tokens(calls: Any) -> int:
    """Prompt plus completion tokens of a step's LLM exchanges (what a namespace's daily quota counts)."""
    total = 0
    for call in calls or ():
        if isinstance(call, dict):
            for key in ("prompt_tokens", "completion_tokens"):
                value = call.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    total += value
    return total


def _planning_tokens(planning: Any) -> int:
    """Tokens the planner's attempts used (a planning record's prompt and completion tokens)."""
    return _call_tokens([planning]) if isinstance(planning, dict) else 0

"""Moving runs in and out of a store: importing an exported run, deleting a run with its forks."""

from __future__ import annotations

import time
from typing import Any

from vm.errors import RunStateError, StoreError
from vm.jsonsafe import clean_text
from vm.redact import redact
from vm.store.database import _schema
from vm.store.records import StoredRun, _dumps

__all__ = ["Transfers"]

# Statuses in which some process may be executing the run right now.
_ACTIVE = frozenset({"running", "planning", "waiting", "queued"})
_FINAL = frozenset({"completed", "failed", "cancelled", "interrupted"})


class Transfers:
    """Import and delete operations of :class:`vm.store.RunStore`."""

    def import_run(self, run: StoredRun) -> str:
        """Store an exported run (``planvm runs export``) with its steps, under its own id.

        A run that was still in progress where it was exported (queued, planning, running,
        waiting) is stored as ``interrupted``: nothing executes it here, and ``resume`` continues
        it. Its parent is kept when the parent is in this store too. ``StoreError`` when a run
        with that id is already here (nothing is written)."""
        import sqlalchemy as sa

        t = _schema()
        if run.id in ("", "exported") or len(run.id) > 32:
            raise StoreError("the export has no usable run id; export the run again with `planvm runs export`")
        status = run.status if run.status in _FINAL else "interrupted"
        now = time.time()
        judgement = run.judgement if isinstance(run.judgement, dict) else None
        score = judgement.get("score") if judgement else None
        row = dict(
            id=run.id, created_at=run.created_at or now, updated_at=now, status=status,
            goal=clean_text(run.goal) if run.goal else run.goal, metadata=_dumps(run.metadata) if run.metadata is not None else None,
            plan=_dumps(run.plan), variables=_dumps(run.variables or {}), parent_id=None, fork_seq=run.fork_seq,
            final_answer=_dumps(run.final_answer) if run.final_answer is not None else None,
            error=redact(clean_text(run.error)) if run.error else None, steps=len(run.steps),
            limits=_dumps(run.limits) if run.limits is not None else None,
            planning=_dumps(run.planning) if run.planning is not None else None,
            judgement=_dumps(judgement) if judgement is not None else None,
            score=float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None,
            best_of=None, tools=_dumps(run.tools) if run.tools is not None else None, namespace=self.namespace,
        )
        step_rows = [
            dict(run_id=run.id, idx=i, seq_no=s.seq_no, type=s.type, tool=s.tool, inputs=_dumps(dict(s.inputs)),
                 outputs=_dumps(dict(s.outputs)), result=_dumps(s.result), llm_calls=_dumps(list(s.llm_calls)), next_seq=s.next_seq,
                 duration_s=s.duration_s, error=redact(clean_text(s.error)) if s.error else None,
                 notes=_dumps(list(s.notes)) if getattr(s, "notes", None) else None, started_at=getattr(s, "started_at", None))
            for i, s in enumerate(run.steps)
        ]

        def body(conn: Any) -> None:
            r = t.runs.c
            if conn.execute(sa.select(r.id).where(r.id == run.id)).first() is not None:
                raise StoreError(
                    f"a run with id '{run.id}' is already in {self.path}; it was imported before (delete it first with "
                    f"`planvm runs delete {run.id}` to import it again)", path=str(self.path))
            if run.parent_id and conn.execute(sa.select(r.id).where(r.id == run.parent_id, r.namespace == self.namespace)).first() is not None:
                row["parent_id"] = run.parent_id
            conn.execute(t.runs.insert(), row)
            if step_rows:
                conn.execute(t.steps.insert(), step_rows)

        self._write(body, lambda conn: conn.execute(sa.select(t.runs.c.id).where(t.runs.c.id == run.id)).first() is not None)
        return run.id

    def delete_run(self, run_id: str, *, force: bool = False) -> list[str]:
        """Delete ``run_id`` (or a unique prefix of it) with its steps and every run forked from
        it, in one transaction. A run that may be executing (queued, planning, running or
        waiting, itself or a fork) is refused with ``RunStateError`` unless ``force``: cancel it
        first. Returns the deleted ids, the run first. Library entries made from it are kept."""
        import sqlalchemy as sa

        t = _schema()
        run_id = self.resolve(run_id)

        def body(conn: Any) -> list[str]:
            r = t.runs.c
            doomed = [run_id]
            frontier = [run_id]
            while frontier:
                children = [row[0] for row in conn.execute(sa.select(r.id).where(r.parent_id.in_(frontier), r.namespace == self.namespace))]
                children = [c for c in children if c not in doomed]
                doomed.extend(children)
                frontier = children
            if not force:
                busy = conn.execute(sa.select(r.id, r.status).where(r.id.in_(doomed), r.status.in_(_ACTIVE))).first()
                if busy is not None:
                    which = "it" if busy[0] == run_id else f"its fork {busy[0]}"
                    raise RunStateError(
                        f"run '{run_id}' cannot be deleted: {which} is {busy[1]}; cancel it first (`planvm runs cancel "
                        f"{busy[0]}`), or pass --force", run_id=run_id, status=busy[1], path=str(self.path))
            # Children first: a fork's row names its parent.
            for rid in reversed(doomed):
                conn.execute(t.steps.delete().where(t.steps.c.run_id == rid))
                conn.execute(t.leases.delete().where(t.leases.c.run_id == rid))
                conn.execute(t.runs.update().where(r.best_of == rid).values(best_of=None))
                conn.execute(t.runs.delete().where(r.id == rid))
            return doomed

        deleted = self._write(body, lambda conn: conn.execute(sa.select(t.runs.c.id).where(t.runs.c.id == run_id)).first() is None)
        return deleted if deleted is not None else [run_id]  # None: a retry found the first attempt had committed

"""Judgements, best-run marks and the plan library kept in a store."""

from __future__ import annotations

import time
import uuid
from typing import Any

from vm.errors import StoreError
from vm.store.database import _schema
from vm.store.records import _bytes_to_floats, _dumps, _floats_to_bytes, _loads

__all__ = ["Judgements"]


class Judgements:
    """The judgement and plan-library operations of :class:`vm.store.RunStore`."""

    def set_judgement(self, run_id: str, judgement: dict[str, Any]) -> None:
        """Keep the judge's grade with the run (a later grade replaces it)."""
        t = _schema()
        score = judgement.get("score")
        self._write(lambda conn: conn.execute(t.runs.update().where(t.runs.c.id == run_id, t.runs.c.namespace == self.namespace).values(
            judgement=_dumps(judgement), score=float(score) if isinstance(score, (int, float)) else None)))

    def mark_best(self, run_id: str, of: str) -> None:
        """Mark ``run_id`` as the best run a plan search from ``of`` found (clearing any earlier mark of that search)."""
        t = _schema()

        def body(conn: Any) -> None:
            mine = t.runs.c.namespace == self.namespace
            conn.execute(t.runs.update().where(t.runs.c.best_of == of, mine).values(best_of=None))
            conn.execute(t.runs.update().where(t.runs.c.id == run_id, mine).values(best_of=of))

        self._write(body)

    def completed_runs(self, since: float | None = None) -> list[dict[str, Any]]:
        """Every completed run with a goal (oldest first): what a training export chooses from."""
        import sqlalchemy as sa

        t = _schema()
        r = t.runs.c
        statement = sa.select(r.id, r.created_at, r.goal, r["metadata"], r.plan, r.planning, r.final_answer, r.score, r.judgement,
                              r.best_of).where(r.status == "completed", r.goal.is_not(None), r.namespace == self.namespace)
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
            same = sa.and_(lib.c.namespace == self.namespace, lib.c.goal_key == entry["goal_key"],
                           lib.c.language.is_(None) if entry.get("language") is None else lib.c.language == entry["language"])
            replaced = [row[0] for row in conn.execute(sa.select(lib.c.id).where(same))]
            if replaced:
                conn.execute(lib.delete().where(lib.c.id.in_(replaced)))
            conn.execute(lib.insert().values(
                id=entry_id, created_at=time.time(), run_id=entry.get("run_id"), goal=entry["goal"], goal_key=entry["goal_key"],
                metadata=_dumps(entry.get("metadata")) if entry.get("metadata") is not None else None, language=entry.get("language"),
                label=entry.get("label"), tools=_dumps(entry.get("tools") or []), plan=_dumps(entry["plan"]),
                reasoning=entry.get("reasoning"), final_answer=_dumps(entry.get("final_answer")),
                score=entry.get("score"), namespace=self.namespace, embedding=_floats_to_bytes(entry["embedding"]) if entry.get("embedding") is not None else None,
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
        statement = sa.select(*(lib.c[n] for n in names)).where(lib.c.namespace == self.namespace)
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
        count, newest = self._read(sa.select(sa.func.count(), sa.func.max(lib.c.created_at)).where(lib.c.namespace == self.namespace))[0]
        return int(count), newest

    def library_remove(self, entry_id: str) -> str:
        """Remove the best plan ``entry_id`` (or a unique prefix of it); returns its full id."""
        import sqlalchemy as sa

        lib = _schema().plan_library
        found = [row[0] for row in self._read(sa.select(lib.c.id).where(
            lib.c.id.startswith(entry_id, autoescape=True), lib.c.namespace == self.namespace).limit(2))]
        if not entry_id or not found:
            raise StoreError(f"no best plan '{entry_id}' in the library; see `planvm library list`", path=str(self.path))
        if len(found) > 1:
            raise StoreError(f"'{entry_id}' is the start of several best plans' ids; give more of it", path=str(self.path))
        self._write(lambda conn: conn.execute(lib.delete().where(lib.c.id == found[0], lib.c.namespace == self.namespace)))
        return found[0]

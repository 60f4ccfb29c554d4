"""Reading the run store, for every front end, in the engine's shapes.

``planvm runs …``, ``GET /v1/runs…``, the page and MCP's ``get_run`` read runs, steps, variables
and the plan library only through these methods (mixed into :class:`planvm.engine.Engine`). An
engine built with ``readonly=True`` opens the store only to read, on first use, and builds no
tools, models or VM: listing a store in a read-only folder stays cheap.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from vm.errors import BadInput, PlanVMError

__all__ = ["decode_cursor", "encode_cursor"]


def encode_cursor(created_at: float, run_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, run_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created_at, run_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(created_at), str(run_id)
    except (ValueError, TypeError):
        raise BadInput("cursor is not one this server gave out; use next_cursor from the previous page") from None


class _Reads:
    """Read operations (mixed into the engine)."""

    store: Any
    config: Any
    _read_store: Any

    def _reader(self, *, missing_ok: bool = False) -> Any:
        """The store to read: the engine's, or (an engine that records nothing, or reads only) one
        opened read-only on first use. ``missing_ok``: None when no store exists yet."""
        if self.store is not None:
            return self.store
        if self._read_store is None:
            from vm import RunStore
            from vm.store import store_missing

            if missing_ok and store_missing(self.config.store):
                return None
            self._read_store = RunStore(self.config.store, readonly=True, retry_seconds=self.config.store_retry_seconds,
                                        namespace=self.config.namespace)
        return self._read_store

    def _store(self) -> Any:
        if self.store is None:
            if getattr(self, "readonly", False):
                raise PlanVMError("this engine only reads the run store; build it without readonly=True to change runs")
            raise PlanVMError("this command does not record runs")
        return self.store

    # --- runs -----------------------------------------------------------------------------------

    def list_runs(
        self, limit: int = 50, *, status: str | None = None, query: str | None = None, cursor: str | None = None,
        judged: bool = False, min_score: float | None = None,
    ) -> Any:
        """Runs, newest first (a :class:`RunPage` of :class:`RunSummary`), filtered and paged:
        ``cursor`` is the ``next_cursor`` of the page before. No store yet: no runs."""
        from planvm.engine.shapes import RunPage

        store = self._reader(missing_ok=True)
        if store is None:
            return RunPage(runs=[], next_cursor=None)
        rows = store.list_runs(limit + 1, status=status, query=query, before=decode_cursor(cursor) if cursor else None,
                               judged=judged, min_score=min_score)
        more, rows = len(rows) > limit, rows[:limit]
        return RunPage(runs=rows, next_cursor=encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None)

    def get_run(self, run_id: str, *, steps: bool = False, step: int | None = None) -> Any:
        """A stored run as every front end shows it (a :class:`RunDetail`); ``steps``: with its
        trace; ``step``: with the variables after that trace position."""
        from planvm.engine.shapes import RunDetail

        store = self._reader()
        run = store.get(run_id)
        if step is not None and not 0 <= step < len(run.steps):
            raise BadInput(f"run '{run.id}' has {len(run.steps)} steps (idx 0 to {len(run.steps) - 1}); ask for one of those")
        return RunDetail.of(run, lineage=store.lineage(run.id), children=store.children(run.id), trace=steps, step=step)

    def stored(self, run_id: str, *, steps: bool = True) -> Any:
        """A stored run as recorded (a :class:`vm.StoredRun`: what replay and export take)."""
        return self._reader().get(run_id, steps=steps)

    def export(self, run_id: str) -> dict[str, Any]:
        """A run's export document (``planvm runs export``; :meth:`import_run` takes it back)."""
        return self.stored(run_id).to_dict()

    def outcome(self, run_id: str) -> Any:
        """How a stored run ended (a :class:`RunOutcome`)."""
        from planvm.engine.shapes import RunOutcome

        return RunOutcome.from_stored(self._reader().get(run_id))

    def steps(self, run_id: str) -> dict[str, Any]:
        """A run's steps, as recorded: ``{"run_id", "steps"}``."""
        run = self._reader().get(run_id)
        return {"run_id": run.id, "steps": [s.to_dict() for s in run.steps]}

    def variables(self, run_id: str, step: int | None = None) -> dict[str, Any]:
        """The variables after trace position ``step`` (-1: before the first step; None: after all)."""
        run = self._reader().get(run_id)
        if step is not None and step >= len(run.steps):
            raise BadInput(f"run '{run.id}' has {len(run.steps)} steps (idx 0 to {len(run.steps) - 1}); ask for one of those")
        return {"run_id": run.id, "step": step, "variables": run.variables_at(None if step is None else step + 1)}

    def resolve(self, run_id: str) -> str:
        """The full id of the run ``run_id`` names (a unique start of one is enough)."""
        return self._reader().resolve(run_id)

    def status_of(self, run_id: str) -> str:
        return self._reader().status_of(run_id)

    def ping(self) -> None:
        """Whether the run store answers (raises when it does not)."""
        self._reader().ping()

    def public(self, message: str) -> str:
        """A message as a remote client may see it: without the store's file path, URL or host."""
        store = self.store or self._read_store
        return store.public(message) if store is not None else message

    def store_path(self) -> str:
        """Where the runs are (a file, or a database URL without its password), for messages."""
        from vm.store import store_url

        store = self.store or self._read_store
        if store is not None:
            return str(store.path)
        _url, file = store_url(self.config.store)
        return str(file) if file is not None else "the configured database"

    def worker_id(self) -> str:
        """The name this process holds runs' leases under."""
        return self._store().worker_id

    def store_upgrade(self) -> tuple[str, str | None, str]:
        """Bring the store's schema up to this planvm: (where, schema version before, now)."""
        from vm import RunStore

        with RunStore(self.config.store, upgrade=True, retry_seconds=self.config.store_retry_seconds) as store:
            before, now = store.upgrade()
            return str(store.path), before, now

    # --- the plan library -----------------------------------------------------------------------

    def library_entries(self) -> list[dict[str, Any]]:
        """Every kept best plan, oldest first, without its embedding. No store yet: none."""
        store = self._reader(missing_ok=True)
        return [] if store is None else [{k: v for k, v in e.items() if k != "embedding"} for e in store.library_entries()]

    def library_remove(self, entry_id: str) -> str:
        """Remove a kept best plan (its id, or a unique start of it); its full id is returned."""
        return self._store().library_remove(entry_id)

    def keep_best(self, run_id: str, *, label: str | None = None) -> tuple[str, list[str], str]:
        """Keep a run's plan as the best plan for its goal: (entry id, entries it replaced, run id)."""
        from planner.library import PlanLibrary

        store = self._store()
        run = store.get(run_id)
        entry_id, replaced = PlanLibrary.for_settings(store, self.config).keep(run, label=label)
        return entry_id, replaced, run.id

    def training_rows(self, **filters: Any) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """Training rows, one per goal from its best-scoring completed run, and the runs left out
        with why (see :func:`planvm.improve.training_rows`)."""
        from planvm.improve import training_rows
        from vm.store import store_missing

        missing = store_missing(self.config.store)
        if missing:
            raise BadInput(f"no run store at {missing} yet: there are no runs to export; run some goals first (planvm run)")
        return training_rows(self._reader(), self.registry, **filters)  # type: ignore[attr-defined]

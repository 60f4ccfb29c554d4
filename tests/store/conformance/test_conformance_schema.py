"""Conformance: the interface every backend's store implements, migrations from an older schema,
and idempotent retries (a write whose answer was lost after it committed is not made twice), on
every backend."""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from store_suite import PLAN, location, store  # noqa: F401  (fixtures)

from vm import RunStore, StepRecord, StoreError
from vm.store import Store, open_store, store_url
from vm.store.interface import Store as Interface

ROOT = Path(__file__).resolve().parents[3]
OLD_RUN = "0123456789abcdef"


def test_the_store_implements_the_interface(store: Store) -> None:
    assert isinstance(store, Store)
    attributes = set(Interface.__annotations__)
    members = sorted({n for n in dir(Interface) if not n.startswith("_")} | attributes)
    assert len(members) > 40
    for name in members:
        wanted = getattr(Interface, name, None)
        if callable(wanted):
            assert inspect.signature(getattr(type(store), name)) == inspect.signature(wanted), name
        else:
            assert hasattr(store, name), name


def _old_store(location: str, revision: str) -> None:
    """Make the store at ``location`` as planvm made it at schema ``revision``, with one
    completed run of one step."""
    from alembic import command
    from alembic.config import Config

    url, file = store_url(location)
    engine = sa.create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(ROOT / "vm" / "store" / "migrations"))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        conn.execute(sa.text(
            "INSERT INTO runs (id, created_at, updated_at, status, goal, plan, variables, final_answer, steps, limits) "
            "VALUES (:id, 1.0, 2.0, 'completed', 'an old run', :plan, '{}', '1', 1, '{\"max_steps\": 10}')"),
            {"id": OLD_RUN, "plan": '[{"seq_no": 0, "type": "assign", "parameters": {"final_answer": 1}}]'})
        conn.execute(sa.text("INSERT INTO steps (run_id, idx, seq_no, type, outputs, next_seq) VALUES (:id, 0, 0, 'assign', :out, 1)"),
                     {"id": OLD_RUN, "out": '{"final_answer": 1}'})
        if file is not None:
            conn.exec_driver_sql("PRAGMA application_id=1886156397")  # a planvm SQLite file says so in its header
    engine.dispose()


def test_a_store_at_an_older_schema_is_upgraded_and_keeps_its_runs(location: str) -> None:
    _old_store(location, "0001")
    try:
        store = open_store(location)  # SQLite upgrades as it opens; a server asks for `planvm store upgrade`
    except StoreError as exc:
        assert "planvm store upgrade" in str(exc) and "0001" in str(exc)
        store = open_store(location, upgrade=True)
    try:
        assert store.upgraded_from == "0001" and store.upgrade() == ("0001", RunStore.schema_head())
        old = store.get(OLD_RUN[:6])
        assert (old.status, old.goal, old.final_answer, old.limits) == ("completed", "an old run", 1, {"max_steps": 10})
        assert [s.outputs for s in old.steps] == [{"final_answer": 1}] and old.judgement is None and old.spent_s == 0.0
        # What the migrations added works: judgements, the library, leases, step notes.
        store.set_judgement(OLD_RUN, {"score": 7})
        assert store.list_runs(min_score=7)[0]["id"] == OLD_RUN
        assert store.library_put({"goal": "g", "goal_key": "g", "tools": [], "plan": PLAN})[1] == []
        run_id = store.create_run(PLAN)
        record = StepRecord(0, "assign")
        record.notes = ["a note"]
        store.record_step(run_id, 0, record)
        assert store.get(run_id).steps[0].notes == ["a note"] and store.head(run_id)["owner"] == store.worker_id
    finally:
        store.close()
    again = open_store(location)
    assert again.upgraded_from is None
    again.close()


LOST = sa.exc.OperationalError("COMMIT", None, Exception("server closed the connection unexpectedly"))


def test_a_write_whose_answer_was_lost_is_not_made_twice(store: Store) -> None:
    """The database committed, then the connection died before its answer came. A backend that
    retries after a lost connection finds the write already there (its ``landed`` check) and does
    not make it again, nor fails with LeaseLost; one that does not retry reports a StoreError. The
    write is there once either way."""
    retried = store.backend.retry(LOST) is not None  # type: ignore[attr-defined]
    original = store._transaction  # type: ignore[attr-defined]
    lost = {"next": False}

    @contextmanager
    def answer_lost_once():
        with original() as conn:
            yield conn
        if lost["next"]:  # committed; now the answer is lost
            lost["next"] = False
            raise LOST

    def once(action):
        lost["next"] = True
        if retried:
            return action()
        with pytest.raises(StoreError):
            action()
        return None

    store._transaction = answer_lost_once  # type: ignore[attr-defined]
    run_id = store.create_run(PLAN)
    record = StepRecord(0, "assign")
    record.outputs = {"final_answer": 1}
    once(lambda: store.record_step(run_id, 0, record))
    once(lambda: store.finish(run_id, "completed", final_answer=1))
    once(lambda: store.create_run(PLAN, status="queued", goal="queued once"))
    queued = [r["id"] for r in store.list_runs(query="queued once")]
    assert len(queued) == 1
    assert once(lambda: store.cancel(queued[0])) in (queued[0], None)
    store._transaction = original  # type: ignore[attr-defined]
    run = store.get(run_id)
    assert run.status == "completed" and len(run.steps) == 1 and run.final_answer == 1
    assert store.status_of(queued[0]) == "cancelled"

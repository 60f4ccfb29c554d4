"""Conformance: reading a store a page at a time (runs, steps), judgements and the plan library,
and moving runs in and out (import, delete), on every backend."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import assign, call
from store_suite import PLAN, location, store  # noqa: F401  (fixtures)

from tools import ToolRegistry
from vm import VM, RunNotFound, RunStateError, RunStore, StepRecord, StoreError, StoredRun, replay
from vm.store import Store

LIBRARY_PLAN = [
    assign(0, a=2, b=3),
    call(1, "add", "s", a="${a}", b="${b}"),
    call(2, "echo", ["x", "y"], value={"x": "${s}", "y": "why"}),
    assign(3, final_answer="${x} and ${y}"),
]
COUNT_PLAN = [assign(0, a=2), assign(1, b="${a} + 1"), assign(2, final_answer="${b}")]


def _exported(run_id: str, created_at: float) -> StoredRun:
    """A completed run as an export from elsewhere has it (its own id and creation time)."""
    return StoredRun(run_id, "completed", PLAN, {}, [], created_at=created_at, final_answer=1)


# --- paging ---------------------------------------------------------------------------------------


def test_runs_page_newest_first_and_a_cursor_skips_and_repeats_none(store: Store) -> None:
    # Seven runs, three sharing one creation time (the id breaks the tie).
    base = time.time() - 100
    ids = [f"{i:016x}" for i in range(7)]
    for i, run_id in enumerate(ids):
        store.import_run(_exported(run_id, base + (0 if i < 3 else i)))
    everything = [r["id"] for r in store.list_runs(limit=100)]
    assert everything == sorted(ids, key=lambda r: (base + (0 if int(r, 16) < 3 else int(r, 16)), r), reverse=True)
    pages, before = [], None
    while True:
        page = store.list_runs(limit=3, before=before)
        if not page:
            break
        assert len(page) <= 3
        pages.extend(r["id"] for r in page)
        before = (page[-1]["created_at"], page[-1]["id"])
    assert pages == everything
    assert [r["id"] for r in store.list_runs(limit=2)] == everything[:2]


def test_runs_are_filtered_by_status_and_query(store: Store) -> None:
    done = store.create_run(PLAN, goal="count the 100% of sheep_1")
    store.finish(done, "completed", final_answer=1)
    queued = store.create_run(PLAN, status="queued", goal="another goal")
    assert [r["id"] for r in store.list_runs(status="queued")] == [queued]
    assert [r["id"] for r in store.list_runs(query="100% of sheep_")] == [done]  # % and _ are no wildcards
    assert [r["id"] for r in store.list_runs(query=queued[:6])] == [queued]
    listed = store.list_runs(status="completed")[0]
    assert (listed["status"], listed["goal"], listed["owner"]) == ("completed", "count the 100% of sheep_1", None)


def test_steps_read_a_page_at_a_time(store: Store) -> None:
    run_id = store.create_run(PLAN)
    for i in range(6):
        record = StepRecord(i, "assign")
        record.outputs = {"text": "x" * 100 * (i + 1)}
        store.record_step(run_id, i, record)
    assert [s.index for s in store.steps_page(run_id)] == list(range(6))
    assert [s.index for s in store.steps_page(run_id, 2, 3)] == [2, 3, 4]
    assert store.steps_page(run_id, 6) == [] and store.step_count(run_id) == 6
    assert [s.index for s in store.steps_page(run_id, 0, 10, max_bytes=350)] == [0, 1]  # ~100 + ~200 bytes
    assert [s.index for s in store.steps_page(run_id, 5, max_bytes=1)] == [5]  # one at least
    assert store.steps_page(run_id, 3, 1)[0].outputs == {"text": "x" * 400}
    assert len(store.get(run_id).steps) == 6 and store.get(run_id, steps=False).steps == []


def test_a_run_is_found_by_a_unique_prefix_only(store: Store) -> None:
    for run_id in ("abc0000000000001", "abc0000000000002", "abd0000000000003"):
        store.import_run(_exported(run_id, time.time()))
    assert store.resolve("abd") == "abd0000000000003" and store.get("abc0000000000002").id == "abc0000000000002"
    with pytest.raises(StoreError, match="several"):
        store.resolve("abc")
    with pytest.raises(RunNotFound):
        store.get("fff")
    with pytest.raises(RunNotFound):
        store.head("abd")  # head and status_of take a full id
    with pytest.raises(RunNotFound):
        store.status_of("nothing")


# --- judgements and the plan library ------------------------------------------------------------


def test_judgements_marks_and_the_plan_library(store: Store) -> None:
    done = store.create_run(LIBRARY_PLAN, goal="What is two and three?", planning={"planner": "llm", "reasoning": "Add them."})
    store.finish(done, "completed", final_answer="5 and why")
    other = store.create_run(LIBRARY_PLAN, goal="Another goal")
    store.finish(other, "completed", final_answer="x")
    store.set_judgement(done, {"score": 8.5, "accept": True, "suggestion": "", "step_notes": []})
    store.mark_best(other, done)
    assert [r["id"] for r in store.list_runs(min_score=8)] == [done] and store.list_runs(judged=True)[0]["accept"] is True
    assert store.get(done).score == 8.5 and store.get(other).best_of == done
    assert {r["id"] for r in store.completed_runs()} == {done, other}

    vector = [0.25, -1.5, 3.0]
    first, replaced = store.library_put({"run_id": done, "goal": "What is two and three?", "goal_key": "what is two and three",
                                         "language": "English", "tools": ["add", "echo"], "plan": LIBRARY_PLAN, "embedding": vector})
    assert replaced == []
    second, replaced = store.library_put({"run_id": other, "goal": "what is two and three", "goal_key": "what is two and three",
                                          "language": "English", "tools": [], "plan": LIBRARY_PLAN, "embedding": None})
    assert replaced == [first] and store.library_signature()[0] == 1
    third, _ = store.library_put({"goal": "Zwei und drei?", "goal_key": "zwei und drei", "language": "German", "tools": ["add"],
                                  "plan": LIBRARY_PLAN, "embedding": vector, "label": "Maths > Sums"})
    light = store.library_entries(light=True)
    assert [e["id"] for e in light] == [second, third] and "plan" not in light[0] and light[1]["embedding"] == vector
    full = store.library_entries(ids=[third])
    assert full[0]["plan"] == LIBRARY_PLAN and full[0]["label"] == "Maths > Sums" and full[0]["tools"] == ["add"]
    assert [e["id"] for e in store.library_entries(goal_key="zwei und drei")] == [third]
    assert store.library_remove(third[:10]) == third and store.library_signature()[0] == 1
    with pytest.raises(StoreError, match="no best plan"):
        store.library_remove(third)


# --- moving runs in and out ---------------------------------------------------------------------


def test_an_exported_run_imports_whole_and_replays(store: Store, tmp_path: Path) -> None:
    source = RunStore(tmp_path / "source.sqlite")
    result = VM(ToolRegistry(), store=source).run(COUNT_PLAN, goal="count")
    document = json.loads(json.dumps(source.get(result.run_id).to_dict()))
    assert store.import_run(StoredRun.from_dict(document)) == result.run_id
    imported = store.get(result.run_id)
    assert (imported.status, imported.goal, imported.final_answer) == ("completed", "count", 3)
    assert [s.seq_no for s in imported.steps] == [0, 1, 2]
    assert replay(imported).ok
    with pytest.raises(StoreError, match="already in"):  # importing twice writes nothing
        store.import_run(StoredRun.from_dict(document))
    assert store.step_count(result.run_id) == 3


def test_a_run_exported_in_progress_imports_as_interrupted_and_resumes(store: Store, tmp_path: Path) -> None:
    source = RunStore(tmp_path / "source.sqlite")
    result = VM(ToolRegistry(), store=source).run(COUNT_PLAN)
    document = source.get(result.run_id).to_dict()
    document["run"]["status"] = "running"  # as exported while it ran
    document["steps"] = document["steps"][:1]
    document["run"]["final_answer"] = None
    store.import_run(StoredRun.from_dict(document))
    assert store.get(result.run_id).status == "interrupted"
    resumed = VM(ToolRegistry(), store=store).resume(result.run_id)
    assert resumed.ok and resumed.final_answer == 3
    assert [s.seq_no for s in store.get(result.run_id).steps] == [0, 1, 2]


def test_delete_takes_the_steps_and_the_forks_along(store: Store) -> None:
    vm = VM(ToolRegistry(), store=store)
    parent = vm.run(COUNT_PLAN)
    child = vm.fork(parent.run_id, 1, COUNT_PLAN)
    grandchild = vm.fork(child.run_id, 2, COUNT_PLAN)
    other = vm.run(COUNT_PLAN)
    assert store.delete_run(parent.run_id[:8]) == [parent.run_id, child.run_id, grandchild.run_id]
    for gone in (parent.run_id, child.run_id, grandchild.run_id):
        with pytest.raises(RunNotFound):
            store.get(gone)
    assert store.get(other.run_id).status == "completed" and store.step_count(other.run_id) == 3


def test_delete_refuses_a_run_that_may_be_executing_unless_forced(store: Store) -> None:
    run_id = store.create_run(COUNT_PLAN, status="queued")
    with pytest.raises(RunStateError, match="cancel it first"):
        store.delete_run(run_id)
    assert store.get(run_id).status == "queued"
    assert store.delete_run(run_id, force=True) == [run_id]

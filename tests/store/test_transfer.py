"""Importing an exported run and deleting a run with its forks, on SQLite, PostgreSQL and MariaDB,
and through `planvm runs import` / `planvm runs delete`. Real stores, real VM, no fakes."""

from __future__ import annotations

import json

import pytest
from conftest import assign, planvm
from databases import BACKENDS, store_url_for

from tools import ToolRegistry
from vm import VM, RunNotFound, RunStateError, RunStore, StoreError, StoredRun, replay

PLAN = [assign(0, a=2), assign(1, b="${a} + 1"), assign(2, final_answer="${b}")]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    with store_url_for(request.param, tmp_path) as url:
        s = RunStore(url)
        yield s
        s.close()


def test_an_exported_run_imports_whole_and_replays(store, tmp_path):
    source = RunStore(tmp_path / "source.sqlite")
    result = VM(ToolRegistry(), store=source).run(PLAN, goal="count")
    document = json.loads(json.dumps(source.get(result.run_id).to_dict()))
    assert store.import_run(StoredRun.from_dict(document)) == result.run_id
    imported = store.get(result.run_id)
    assert (imported.status, imported.goal, imported.final_answer) == ("completed", "count", 3)
    assert [s.seq_no for s in imported.steps] == [0, 1, 2]
    assert replay(imported).ok
    with pytest.raises(StoreError, match="already in"):  # importing twice writes nothing
        store.import_run(StoredRun.from_dict(document))
    assert store.step_count(result.run_id) == 3


def test_a_run_exported_in_progress_imports_as_interrupted_and_resumes(store, tmp_path):
    source = RunStore(tmp_path / "source.sqlite")
    result = VM(ToolRegistry(), store=source).run(PLAN)
    document = source.get(result.run_id).to_dict()
    document["run"]["status"] = "running"  # as exported while it ran
    document["steps"] = document["steps"][:1]
    document["run"]["final_answer"] = None
    store.import_run(StoredRun.from_dict(document))
    assert store.get(result.run_id).status == "interrupted"
    resumed = VM(ToolRegistry(), store=store).resume(result.run_id)
    assert resumed.ok and resumed.final_answer == 3
    assert [s.seq_no for s in store.get(result.run_id).steps] == [0, 1, 2]


def test_delete_takes_the_steps_and_the_forks_along(store):
    vm = VM(ToolRegistry(), store=store)
    parent = vm.run(PLAN)
    child = vm.fork(parent.run_id, 1, PLAN)
    grandchild = vm.fork(child.run_id, 2, PLAN)
    other = vm.run(PLAN)
    assert store.delete_run(parent.run_id[:8]) == [parent.run_id, child.run_id, grandchild.run_id]
    for gone in (parent.run_id, child.run_id, grandchild.run_id):
        with pytest.raises(RunNotFound):
            store.get(gone)
    assert store.get(other.run_id).status == "completed" and store.step_count(other.run_id) == 3


def test_delete_refuses_a_run_that_may_be_executing_unless_forced(store):
    run_id = store.create_run(PLAN, status="queued")
    with pytest.raises(RunStateError, match="cancel it first"):
        store.delete_run(run_id)
    assert store.get(run_id).status == "queued"
    assert store.delete_run(run_id, force=True) == [run_id]


def test_the_commands(tmp_path):
    db = str(tmp_path / "runs.sqlite")
    result = VM(ToolRegistry(), store=RunStore(db)).run(PLAN)
    export = tmp_path / "run.json"
    assert planvm("runs", "export", result.run_id, "--store", db, "--out", str(export)).returncode == 0
    other = str(tmp_path / "other.sqlite")
    imported = planvm("runs", "import", str(export), "--store", other)
    assert imported.returncode == 0 and f"imported run {result.run_id} (completed)" in imported.stdout
    again = planvm("runs", "import", str(export), "--store", other)
    assert again.returncode == 2 and "already in" in again.stderr and "Traceback" not in again.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "is not JSON" in planvm("runs", "import", str(bad), "--store", other).stderr
    deleted = planvm("runs", "delete", result.run_id[:6], "--store", other)
    assert deleted.returncode == 0 and f"deleted run {result.run_id}" in deleted.stdout
    assert planvm("runs", "show", result.run_id, "--store", other).returncode != 0
    helped = planvm("runs", "--help").stdout
    assert "import" in helped and "delete" in helped

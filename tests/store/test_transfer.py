"""Importing an exported run and deleting a run through `planvm runs import` / `planvm runs
delete`. (The store's import and delete, on every backend, are checked in
tests/store/conformance/test_conformance_data.py.) Real stores, real VM, no fakes."""

from __future__ import annotations

from conftest import assign, planvm

from tools import ToolRegistry
from vm import VM, RunStore

PLAN = [assign(0, a=2), assign(1, b="${a} + 1"), assign(2, final_answer="${b}")]


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
    unknown = planvm("runs", "delete", "0123abcd", "--store", other)
    assert unknown.returncode == 2 and "no run with id '0123abcd'" in unknown.stderr
    helped = planvm("runs", "--help").stdout
    assert "import" in helped and "delete" in helped

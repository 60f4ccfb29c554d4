"""Training exports take only what should teach a planner: completed runs that found their answer,
judged ones unless --include-unjudged (and they say what they left out). Real runs of the offline
path (template planner, extractive answers) on the example knowledge base; no fake."""

from __future__ import annotations

import asyncio
import json

from conftest import planvm

from planvm.engine import Engine

ANSWERABLE = "How do I resume a run that was killed?"
FAR_OFF = "What is the capital of France?"
ALSO_ANSWERABLE = "What does the assign instruction do?"


def test_exports_take_judged_runs_that_found_their_answer(example_kb, tmp_path):
    store = str(tmp_path / "runs.sqlite")
    with Engine({"store_path": store, "kb_path": str(example_kb)}) as engine:
        found, not_found, unjudged = (asyncio.run(engine.run_goal(goal)) for goal in (ANSWERABLE, FAR_OFF, ALSO_ANSWERABLE))
        for result in (found, not_found):
            engine.store.set_judgement(result.run_id, {"score": 8, "accept": True, "suggestion": "", "step_notes": []})
        assert engine.outcome(not_found.run_id).answer_found is False and engine.outcome(found.run_id).answer_found is True

    rows_file = tmp_path / "rows.jsonl"
    out = planvm("runs", "export", "--training", str(rows_file), "--store", store)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [found.run_id]
    assert f"run {not_found.run_id} left out: its answer was not found" in out.stderr
    assert "1 unjudged run(s) left out" in out.stderr and "--include-unjudged" in out.stderr

    out = planvm("runs", "export", "--training", str(rows_file), "--store", store, "--include-unjudged")
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(line)["task_id"] for line in rows_file.read_text().splitlines()) == sorted([found.run_id, unjudged.run_id])

    out = planvm("runs", "export", found.run_id, "--store", store, "--include-unjudged")
    assert out.returncode == 2 and "go with --training" in out.stderr

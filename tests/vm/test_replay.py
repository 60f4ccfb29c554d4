"""Offline replay serves every reply from the record; live replay diffs against real tools."""

from __future__ import annotations

import json

import pytest
from conftest import ScriptedLLM, assign, call, jmp

from tools import ToolRegistry, tool
from vm import VM, RunStore, StoredRun, replay, replay_live


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs.sqlite")


def counting_registry(counter: list[str], suffix: str = "") -> ToolRegistry:
    @tool
    def lookup(query: str) -> dict:
        """Look something up."""
        counter.append(query)
        return {"answer": f"{query}!{suffix}", "sources": [1, 2]}

    return ToolRegistry([lookup])


PLAN = [
    call(0, "lookup", "found", query="tidb"),
    jmp(1, condition_prompt="Is ${found.answer} enough?", jump_if_true=3, jump_if_false=2),
    call(2, "lookup", "found", query="more"),
    assign(3, final_answer="${found.answer} (${found.sources})"),
]


def recorded_run(store, replies=('{"result": false, "explanation": "no"}',)):
    calls: list[str] = []
    vm = VM(counting_registry(calls), llm=ScriptedLLM(*replies), store=store)
    result = vm.run(PLAN)
    assert result.ok
    return store.get(result.run_id), calls


def test_offline_replay_reproduces_every_step_without_tools_or_llm(store):
    run, calls = recorded_run(store)
    assert calls == ["tidb", "more"]
    report = replay(run)
    assert report.ok and report.mode == "offline"
    assert report.result.final_answer == run.final_answer == "more! ([1, 2])"
    assert [c.seq_no for c in report.checks] == [0, 1, 2, 3]
    assert all(c.matched for c in report.checks)
    assert calls == ["tidb", "more"]  # nothing was called again


def test_offline_replay_from_an_export_file(store, tmp_path):
    run, _ = recorded_run(store)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run.to_dict()))
    report = replay(StoredRun.from_dict(json.loads(path.read_text())))
    assert report.ok


def test_replay_names_the_step_where_an_edited_record_diverges(store):
    run, _ = recorded_run(store)
    data = run.to_dict()
    data["plan"][3]["parameters"]["final_answer"] = "${found.answer}!!"
    report = replay(StoredRun.from_dict(data))
    assert not report.ok
    (bad,) = report.mismatches
    assert bad.seq_no == 3 and bad.index == 3
    assert bad.differences == ['final_answer: "more! ([1, 2])" -> "more!!!"']


def test_replay_of_a_plan_calling_a_tool_the_record_lacks(store):
    run, _ = recorded_run(store)
    data = run.to_dict()
    data["plan"][3] = call(3, "lookup", "final_answer", query="extra")  # the record has an assign there
    report = replay(StoredRun.from_dict(data))
    assert not report.ok
    (bad,) = report.mismatches
    assert bad.index == 3 and bad.seq_no == 3
    assert any("calls 'lookup' one more time than the record holds" in d for d in bad.differences), bad.differences


def test_replay_reproduces_a_recorded_failure(store):
    @tool
    def boom(x: int) -> int:
        """Fails."""
        raise ValueError("bad x")

    result = VM(ToolRegistry([boom]), store=store).run([call(0, "boom", "y", x=1), assign(1, final_answer="${y}")])
    report = replay(store.get(result.run_id))
    assert report.ok  # the failure is reproduced at the same step
    assert report.result.status == "failed" and report.result.error.seq_no == 0


def test_live_replay_shows_a_per_step_diff(store):
    run, _ = recorded_run(store)
    calls: list[str] = []
    live_vm = VM(counting_registry(calls, suffix="v2"), llm=ScriptedLLM('{"result": false, "explanation": "no"}'))
    report = replay_live(run, live_vm)
    assert calls == ["tidb", "more"]  # really executed
    assert not report.ok
    by_seq = {c.seq_no: c.differences for c in report.checks}
    assert by_seq[0] == ['found: {"answer": "tidb!", "sources": [1, 2]} -> {"answer": "tidb!v2", "sources": [1, 2]}']
    assert by_seq[1] == []
    assert by_seq[3] == ['final_answer: "more! ([1, 2])" -> "more!v2 ([1, 2])"']


def test_live_replay_taking_another_branch(store):
    run, _ = recorded_run(store)
    report = replay_live(run, VM(counting_registry([]), llm=ScriptedLLM('{"result": true, "explanation": "yes"}')))
    diffs = {c.index: c.differences for c in report.checks}
    assert diffs[1] == ["jumped to seq_no 3, recorded 2"]
    assert diffs[2] == ["recorded seq_no 2 (calling), replay ran seq_no 3 (assign)"]
    assert diffs[3] == ["the replay ended before this recorded step"]

"""Deterministic ``jmp`` conditions: an expression over variables decides the jump, no LLM asked.
No fake is involved: the plans run with real tools and no LLM at all."""

from __future__ import annotations

import pytest
from conftest import EXAMPLES, assign, call, jmp

from tools import ToolRegistry, load_plugin, tool
from vm import VM, RunStore, replay


def counter_registry(calls: list[int]) -> ToolRegistry:
    @tool
    def fetch_page(page: int) -> list:
        """Fetch one page of items (empty past page 3)."""
        calls.append(page)
        return [f"item{page}a", f"item{page}b"] if page <= 3 else []

    return ToolRegistry([fetch_page])


PAGING = [
    assign(0, page=1, items=0),
    call(1, "fetch_page", "got", page="${page}"),
    assign(2, items="${items} + 2", page="${page} + 1"),
    jmp(3, condition="len(${got}) > 0 and ${page} <= 10", jump_if_true=1),
    assign(4, final_answer="${items} items over ${page} pages"),
]


def test_a_loop_runs_without_any_llm():
    calls: list[int] = []
    result = VM(counter_registry(calls)).run(PAGING)  # no llm given at all
    assert result.ok, result.error
    assert calls == [1, 2, 3, 4]
    assert result.final_answer == "8 items over 5 pages"
    jumps = [r for r in result.trace if r.type == "jmp"]
    assert [r.result["result"] for r in jumps] == [True, True, True, False]
    assert jumps[0].inputs == {"condition": "len(${got}) > 0 and ${page} <= 10"}
    assert all(not r.llm_calls for r in jumps)


def test_the_example_loop_plan_runs_offline():
    registry = ToolRegistry(load_plugin(EXAMPLES / "plugins" / "offline_tools.py"))
    result = VM(registry).run(EXAMPLES / "plans" / "widening_search.json")
    assert result.ok, result.error
    assert [r.seq_no for r in result.trace].count(1) == 3  # searched with top_k 1, 2, 3


@pytest.mark.parametrize(
    ("condition", "variables", "expected"),
    [
        ("${n} < 3", {"n": 2}, True),
        ("${n} < 3", {"n": "2"}, True),  # a string that is exactly a number counts as the number
        ("${n} >= 10 or ${s} == 'done'", {"n": 1, "s": "done"}, True),
        ("not (${s} == \"done\")", {"n": 1, "s": "done"}, False),
        ("'tidb' in ${s}", {"s": "about tidb operator"}, True),
        ("${n} * 2 + 1 == 7", {"n": 3}, True),
        ("${x.k[1]} != null", {"x": {"k": [0, None]}}, False),
        ("${flag}", {"flag": True}, True),
        ("${flag} == false", {"flag": False}, True),
    ],
)
def test_expressions(condition, variables, expected):
    plan = [assign(0, **variables), jmp(1, condition=condition, jump_if_true=3, jump_if_false=2),
            assign(2, final_answer="no"), assign(3, final_answer="yes")]
    result = VM(ToolRegistry()).run(plan)
    assert result.ok, result.error
    assert result.final_answer == ("yes" if expected else "no")


@pytest.mark.parametrize(
    ("parameters", "kind", "words"),
    [
        ({"condition": "${n} <", "jump_if_true": 2}, "bad_condition", "not a valid expression"),
        ({"condition": "count < 3", "jump_if_true": 2}, "bad_condition", "${count}"),
        ({"condition": "${n}.__class__ == 1", "jump_if_true": 2}, "bad_condition", "attribute"),
        ({"condition": "[c for c in 'ab']", "jump_if_true": 2}, "bad_condition", "listcomp"),
        ({"condition": "${missing} < 3", "jump_if_true": 2}, None, "missing"),
        ({"condition": "  ", "jump_if_true": 2}, "bad_condition", "the condition is empty"),
        ({"condition": "${n} < 3 and " * 200 + "true", "jump_if_true": 2}, "bad_condition", "longer than 2000 characters"),
        ({"condition": "${n.} < 3", "jump_if_true": 2}, None, "not a valid reference"),
        ({"condition": "${n} < 3", "condition_prompt": "Is it?", "jump_if_true": 2}, None, "not both"),
        ({"condition": "${n} < 3", "context": "x", "jump_if_true": 2}, None, "context belongs to condition_prompt"),
        ({"condition": "${n} < 3"}, None, "needs jump_if_true"),
    ],
)
def test_bad_conditions_are_found_before_the_run(parameters, kind, words):
    plan = [assign(0, n=1), jmp(1, **parameters), assign(2, final_answer="done")]
    problems = VM(ToolRegistry()).validate(plan)
    assert problems, "the plan should not validate"
    assert any(words in p.message for p in problems), [p.message for p in problems]
    if kind:
        assert any(p.code == kind and p.seq_no == 1 for p in problems)


@pytest.mark.parametrize(
    ("condition", "words"),
    [
        ("${n} + 1", "not true or false"),
        ("${s} < 3", "cannot be compared"),
        ("${n} / 0 > 1", "division by zero"),
        ("9 ** 9 ** 9 > 1", "too large"),
    ],
)
def test_conditions_that_fail_at_run_time_name_the_step(condition, words):
    plan = [assign(0, n=1, s="text"), jmp(1, condition=condition, jump_if_true=2), assign(2, final_answer="done")]
    result = VM(ToolRegistry()).run(plan)
    assert not result.ok
    assert words in str(result.error) and result.error.seq_no == 1


def test_a_run_with_conditions_replays_offline(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    calls: list[int] = []
    result = VM(counter_registry(calls), store=store).run(PAGING)
    report = replay(store.get(result.run_id))
    assert report.ok and report.result.final_answer == result.final_answer
    assert calls == [1, 2, 3, 4]  # the replay called nothing


def test_a_condition_loop_still_ends_at_the_step_limit():
    from vm import Limits

    plan = [assign(0, n=0), assign(1, n="${n} + 1"), jmp(2, condition="${n} > -1", jump_if_true=1), assign(3, final_answer="x")]
    result = VM(ToolRegistry(), limits=Limits(max_steps=50)).run(plan)
    assert not result.ok and type(result.error).__name__ == "StepLimitExceeded"


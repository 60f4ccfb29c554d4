"""Replays that must not report false mismatches, exports that must not crash, and a fuzz test
over hostile values: every completed or failed run replays to its record."""

from __future__ import annotations

import math
from typing import Any

import pytest
from conftest import ScriptedLLM, assign, call, jmp, make_registry
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tools import ToolRegistry, tool
from vm import VM, Limits, PlanError, RunStore, StepLimitExceeded, StoredRun, StoreError, replay


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs.sqlite")


def recorded(store: RunStore, plan: list[dict], **vm_options: Any) -> StoredRun:
    with VM(make_registry(), store=store, **vm_options) as machine:
        result = machine.run(plan)
    return store.get(result.run_id)


def test_a_run_stopped_by_its_step_budget_replays(store):
    plan = [assign(0, n=1), jmp(1, condition_prompt="again?", jump_if_true=0), assign(2, final_answer="never")]
    llm = ScriptedLLM(default='{"result": true, "explanation": "loop"}')
    run = recorded(store, plan, llm=llm, limits=Limits(max_steps=7))
    assert run.status == "failed" and "step budget" in run.error
    report = replay(run)
    assert report.ok, [c.differences for c in report.mismatches]
    assert isinstance(report.result.error, StepLimitExceeded)


def test_a_run_stopped_by_its_llm_budget_replays(store):
    plan = [jmp(i, condition_prompt=f"q{i}?", jump_if_true=i + 1) for i in range(3)] + [assign(3, final_answer="end")]
    llm = ScriptedLLM(default='{"result": true, "explanation": "ok"}')
    run = recorded(store, plan, llm=llm, limits=Limits(max_llm_calls=1))
    assert run.status == "failed" and "LLM-call budget" in run.error
    report = replay(run)
    assert report.ok, [c.differences for c in report.mismatches]
    assert report.result.error is not None and report.result.status == "failed"


def test_a_run_whose_jump_condition_failed_replays(store):
    plan = [jmp(0, condition_prompt="reachable?", jump_if_true=1), assign(1, final_answer="end")]
    run = recorded(store, plan, llm=ScriptedLLM())  # no reply scripted: the LLM call raises
    assert run.status == "failed" and run.steps[0].error
    report = replay(run)
    assert report.ok, [c.differences for c in report.mismatches]


def test_a_run_whose_condition_reply_was_unreadable_replays(store):
    plan = [jmp(0, condition_prompt="reachable?", jump_if_true=1), assign(1, final_answer="end")]
    run = recorded(store, plan, llm=ScriptedLLM("maybe", "perhaps"))
    assert run.status == "failed"
    assert replay(run).ok


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda d: d.update(steps=[1]), "steps[0]"),
        (lambda d: d["run"].update(variables=[1]), "run.variables"),
        (lambda d: d.update(run="x"), "'run' should be an object"),
        (lambda d: d.update(plan="not json"), "'plan'"),
        (lambda d: d.update(plan=5), "'plan'"),
        (lambda d: d["steps"][0].update(outputs=[1]), "'outputs'"),
        (lambda d: d["steps"][0].pop("seq_no"), "'seq_no' is missing"),
        (lambda d: d["steps"][0].update(llm_calls=["x"]), "llm_calls"),
        (lambda d: d["steps"][0].update(duration_s="slow"), "'duration_s' should be int or float"),
        (lambda d: d["run"].update(limits=[1]), "run.limits"),
    ],
)
def test_hostile_exports_are_refused_with_one_clear_error(store, mutate, words):
    data = recorded(store, [assign(0, a=1), assign(1, final_answer="${a}")]).to_dict()
    mutate(data)
    with pytest.raises(StoreError) as caught:
        StoredRun.from_dict(data)
    assert words in str(caught.value)


def test_an_export_whose_plan_is_json_text_replays(store):
    data = recorded(store, [assign(0, a=1), assign(1, final_answer="${a}")]).to_dict()
    import json

    data["plan"] = json.dumps(data["plan"])
    assert replay(StoredRun.from_dict(data)).ok


# --- fuzz ------------------------------------------------------------------------------------------

texts = st.text(
    st.characters(codec=None, exclude_categories=()),  # any code point, lone surrogates included
    max_size=40,
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**63 - 1, -(2**63), 2**63, 10**300, -(10**4299)]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(texts, inner, max_size=4),
        st.tuples(inner, inner),
    ),
    max_leaves=30,
)


def deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"k": value}
    return value


@tool
def give(value: Any = None) -> Any:
    """Return what the test put in the ``PAYLOAD`` box (any Python value)."""
    return PAYLOAD[0]


PAYLOAD: list[Any] = [None]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    literal=values,
    returned=st.one_of(values, st.integers(min_value=1, max_value=150).map(deep), st.just(10**5000), st.just(b"\xff")),
    size=st.sampled_from([0, 10, 5000]),
)
def test_fuzzed_values_never_crash_and_every_finished_run_replays(tmp_path_factory, literal, returned, size):
    store = RunStore(tmp_path_factory.mktemp("fuzz") / "runs.sqlite")
    PAYLOAD[0] = returned
    plan = [
        assign(0, lit=literal, pad="p" * size),
        call(1, "give", "got", value="${lit}"),
        assign(2, text="${lit} and ${got}"),
        assign(3, final_answer={"lit": "${lit}", "got": "${got}", "n": "${pad}"}),
    ]
    registry = ToolRegistry([give])
    with VM(registry, store=store, limits=Limits(max_value_bytes=64 * 1024)) as machine:
        try:
            result = machine.run(plan, goal="fuzz \ud800")
        except PlanError:
            event("refused before running")
            return  # a plan the VM refuses up front (too deep): nothing ran, nothing to replay
    event(f"run {result.status}" + (f": {type(result.error).__name__}" if result.error else ""))
    stored = store.get(result.run_id)
    assert stored.status in ("completed", "failed")
    if result.ok:
        assert result.final_answer == stored.final_answer
        assert not any(isinstance(x, float) and not math.isfinite(x) for x in _leaves(stored.final_answer))
    report = replay(stored)
    assert report.ok, [c.differences for c in report.mismatches]


def _leaves(value: Any):
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            yield item

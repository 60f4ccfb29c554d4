"""Bounded values, plans and validation: hostile plans and tool results end in one named error,
in bounded time and memory, and every value a run keeps is storable as JSON."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math

import pytest
from conftest import assign, call, jmp, make_registry

from tools import ToolRegistry, tool
from vm import (
    VM,
    Limits,
    PlanError,
    PlanLoadError,
    PlanValidationError,
    RunStore,
    UnstorableValue,
    ValueTooLarge,
    validate_plan,
)
from vm.jsonsafe import ValueLimitError, storable


def doubling(n: int = 40, *, as_list: bool = False) -> list[dict]:
    plan = [assign(0, s0="x" * 1024)]
    for i in range(1, n):
        value = ["${s%d}" % (i - 1)] * 2 if as_list else "${s%d}${s%d}" % (i - 1, i - 1)
        plan.append(assign(i, **{f"s{i}": value}))
    plan.append(assign(n, final_answer="${s%d}" % (n - 1)))
    return plan


@pytest.mark.parametrize("as_list", [False, True])
def test_doubling_values_stop_at_max_value_bytes(as_list):
    result = VM(make_registry(), limits=Limits(max_value_bytes=1 << 20)).run(doubling(as_list=as_list))
    assert result.status == "failed"
    assert isinstance(result.error, ValueTooLarge)
    assert result.error.limit == "max_value_bytes"
    assert "max_value_bytes" in str(result.error)
    # 1 KiB doubles past 1 MiB at the eleventh doubling: the run stops there, not 29 steps later.
    assert len(result.trace) <= 12


def test_a_template_of_many_references_stops_while_rendering():
    plan = [assign(0, s="y" * 100_000), assign(1, big="${s}" * 1000), assign(2, final_answer="${big}")]
    result = VM(make_registry()).run(plan)
    assert isinstance(result.error, ValueTooLarge)
    assert result.error.seq_no == 1


def test_values_within_the_limit_run():
    result = VM(make_registry()).run(doubling(8))
    assert result.ok and len(result.final_answer) == 1024 * 128


@tool
def huge(n: int) -> str:
    """Return n bytes of text."""
    return "z" * n


@tool
def weird(kind: str):
    """Return a value of an awkward kind."""
    if kind == "object":
        return object()
    if kind == "cycle":
        items: list = []
        items.append(items)
        return items
    if kind == "deep":
        value: list = []
        for _ in range(100_000):
            value = [value]
        return value
    if kind == "bigint":
        return 10**5000
    if kind == "bytes":
        return b"\xff\xfe"
    if kind == "nan":
        return {"x": math.nan, "y": [math.inf, -math.inf]}
    if kind == "mixed":
        @dataclasses.dataclass
        class Point:
            x: int
            y: tuple

        return {"when": datetime.date(2024, 10, 15), "p": Point(1, (2, 3)), 7: {"a", }, "s": "a\ud800b", "ok": b"text"}
    raise ValueError(kind)


@pytest.fixture
def odd_vm(tmp_path):
    registry = ToolRegistry([huge, weird])
    with VM(registry, store=RunStore(tmp_path / "runs.sqlite"), limits=Limits(max_value_bytes=1 << 20)) as machine:
        yield machine


def test_a_tool_result_over_the_limit_fails_the_step_naming_the_tool(odd_vm):
    result = odd_vm.run([call(0, "huge", "out", n=2_000_000), assign(1, final_answer="${out}")])
    assert isinstance(result.error, ValueTooLarge)
    assert "tool 'huge'" in str(result.error) and result.error.seq_no == 0
    assert odd_vm.store.get(result.run_id).status == "failed"


@pytest.mark.parametrize(
    ("kind", "error", "words"),
    [
        ("object", UnstorableValue, "no JSON form"),
        ("bigint", UnstorableValue, "4300 digits"),
        ("bytes", UnstorableValue, "not UTF-8"),
        ("cycle", ValueTooLarge, "contains itself"),
        ("deep", ValueTooLarge, "max_depth"),
    ],
)
def test_unstorable_tool_results_fail_the_step_and_the_run_is_failed_not_interrupted(odd_vm, kind, error, words):
    result = odd_vm.run([call(0, "weird", "out", kind=kind), assign(1, final_answer="${out}")])
    assert isinstance(result.error, error), result.error
    assert "tool 'weird'" in str(result.error) and words in str(result.error)
    stored = odd_vm.store.get(result.run_id)
    assert stored.status == "failed" and stored.steps[0].error


def test_awkward_tool_results_are_kept_in_their_json_form(odd_vm):
    result = odd_vm.run([call(0, "weird", "out", kind="mixed"), call(1, "weird", "n", kind="nan"), assign(2, final_answer="${out}")])
    assert result.ok, result.error
    expected = {"when": "2024-10-15", "p": {"x": 1, "y": [2, 3]}, "7": ["a"], "s": "a\ufffdb", "ok": "text"}
    assert result.final_answer == expected
    stored = odd_vm.store.get(result.run_id)
    assert stored.final_answer == expected
    assert stored.steps[1].outputs == {"n": {"x": "NaN", "y": ["Infinity", "-Infinity"]}}


def test_an_llm_reply_over_the_limit_fails_the_step():
    from conftest import ScriptedLLM

    plan = [jmp(0, condition_prompt="yes?", jump_if_true=1), assign(1, final_answer="done")]
    result = VM(make_registry(), llm=ScriptedLLM("x" * 5000), limits=Limits(max_value_bytes=1024)).run(plan)
    assert isinstance(result.error, ValueTooLarge) and "LLM reply" in str(result.error)


# --- plans ------------------------------------------------------------------------------------------


def nested(depth: int):
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def test_a_plan_nested_deeper_than_max_depth_is_a_plan_error():
    plan = [assign(0, final_answer=nested(500))]
    with pytest.raises(PlanLoadError, match="max_depth"):
        VM(make_registry()).run(plan)
    assert not validate_plan(json.dumps([assign(0, final_answer=nested(50))]))[1]


def test_json_text_nested_beyond_the_parser_is_a_plan_error(tmp_path):
    text = '[{"seq_no": 0, "type": "assign", "parameters": {"final_answer": ' + "[" * 5000 + "]" * 5000 + "}}]"
    for source in (text, tmp_path / "deep.json"):
        if not isinstance(source, str):
            source.write_text(text)
        with pytest.raises(PlanError):
            VM(make_registry()).run(source)


def test_long_arithmetic_is_a_validation_problem_not_a_recursion_error():
    plan = [assign(0, a=1), assign(1, final_answer="- " * 900 + "${a}"), ]
    with pytest.raises(PlanValidationError, match="operators"):
        VM(make_registry()).run(plan)
    plan = [assign(0, a=1), assign(1, final_answer=" + ".join(["${a}"] * 600))]
    with pytest.raises(PlanValidationError, match="split it"):
        VM(make_registry()).run(plan)
    plan = [assign(0, a=1), assign(1, final_answer=" + ".join(["${a}"] * 50))]
    assert VM(make_registry()).run(plan).final_answer == 50


def test_plan_size_is_bounded(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps([assign(0, final_answer="x" * 5000)]))
    with pytest.raises(PlanLoadError, match="max_plan_bytes"):
        VM(make_registry(), limits=Limits(max_plan_bytes=4096)).run(path)
    assert VM(make_registry()).run(path).ok


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[{"seq_no": 0, "type": "assign", "parameters": {"final_answer": NaN}}]', "NaN is not JSON"),
        ('[{"seq_no": 0, "type": "assign", "parameters": {"final_answer": -Infinity}}]', "Infinity is not JSON"),
        ('[{"seq_no": 0, "type": "assign", "parameters": {"final_answer": ' + "9" * 5000 + "}}]", "digits"),
        ("2{", "not a JSON plan"),
    ],
)
def test_plan_text_json_cannot_hold_is_a_load_error(text, words):
    with pytest.raises(PlanLoadError, match=words):
        VM(make_registry()).run(text)


def test_paths_that_cannot_be_read_are_load_errors(tmp_path):
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    fifo = tmp_path / "pipe.json"
    import os

    os.mkfifo(fifo)
    for source, words in ((loop, "cannot read"), ("n" * 5000 + ".json", "cannot read|no such file"), ("/dev/zero", "not a regular file"), (fifo, "not a regular file")):
        with pytest.raises(PlanLoadError, match=words):
            validate_plan(source if isinstance(source, str) else str(source))


def test_seq_no_must_fit_64_bits():
    problems = validate_plan([assign(2**63, final_answer=1)])[1]
    assert [p.code for p in problems] == ["schema"] and "out of range" in problems[0].message
    assert not validate_plan([assign(2**62, final_answer=1)])[1]


def test_lone_surrogates_in_a_plan_and_goal_are_stored_as_replacement_characters(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    with VM(make_registry(), store=store) as machine:
        result = machine.run([assign(0, final_answer="bad \ud800 text")], goal="goal \udcff here")
    assert result.ok
    stored = store.get(result.run_id)
    assert stored.final_answer == "bad \ufffd text" and stored.goal == "goal \ufffd here"


# --- references -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["${x.--1}", "${x.²}", "${x.-}"])
def test_malformed_index_references_are_validation_errors(ref):
    problems = validate_plan([assign(0, x=[1, 2]), assign(1, final_answer=ref)])[1]
    assert [p.code for p in problems] == ["bad_reference"]


def test_dotted_indexes_and_keys_still_work():
    plan = [assign(0, x=[10, 20], d={"k-1": 5, "name": "n"}), assign(1, final_answer=["${x.0}", "${x.-1}", "${d.name}", "${d['k-1']}"])]
    assert VM(make_registry()).run(plan).final_answer == [10, 20, "n", 5]


def test_an_unclosed_reference_is_reported():
    problems = validate_plan([assign(0, r=1), assign(1, final_answer="value: ${r")])[1]
    assert [p.code for p in problems] == ["bad_reference"] and "never closes" in problems[0].message


def test_every_problem_at_once_with_duplicates_and_bad_references():
    plan = [
        assign(0, a=1),
        assign(0, b=2),
        assign(1, c="${x.--1}"),
        assign(2, d="${missing}"),
        assign(3, final_answer="${c}"),
    ]
    codes = sorted(p.code for p in validate_plan(plan)[1])
    assert codes == ["bad_reference", "duplicate_seq_no", "undefined_variable"]


def test_multi_line_arithmetic_is_text():
    plan = [assign(0, a=2, b=3), assign(1, final_answer="${a}\n${b} * 100")]
    assert VM(make_registry()).run(plan).final_answer == "2\n3 * 100"


# --- validation scales --------------------------------------------------------------------------------


def chain(n: int) -> list[dict]:
    plan = [assign(0, v0=1)] + [assign(i, **{f"v{i}": "${v%d} + 1" % (i - 1)}) for i in range(1, n)]
    return plan + [assign(n, final_answer="${v%d}" % (n - 1))]


def test_a_long_chain_validates_and_runs():
    n = 20_000
    program, problems = validate_plan(json.dumps(chain(n)))
    assert not problems and len(program) == n + 1
    broken = chain(n)
    broken[n // 2]["parameters"] = {"other": 1}
    problems = validate_plan(broken)[1]
    assert [(p.seq_no, p.code) for p in problems] == [(n // 2 + 1, "undefined_variable")]


def test_data_flow_across_blocks_and_loops():
    plan = [
        assign(0, i=0),
        jmp(1, condition_prompt="again?", jump_if_true=3),
        assign(2, late="x"),
        assign(3, y="${late}"),  # reachable from 1 without passing 2, but also through 2: may-assigned
        jmp(4, condition_prompt="loop?", jump_if_true=1),
        assign(5, final_answer="${never}"),
    ]
    problems = validate_plan(plan)[1]
    assert [(p.seq_no, p.code) for p in problems] == [(5, "undefined_variable")]


# --- the store ---------------------------------------------------------------------------------------


def test_recording_a_step_does_not_rewrite_the_run_row(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    statements: list[str] = []
    store.sqlite_connection.set_trace_callback(statements.append)
    with VM(make_registry(), store=store) as machine:
        result = machine.run([assign(i, **{f"v{i}": i}) for i in range(5)] + [assign(5, final_answer="${v4}")])
    assert result.ok
    assert sum(s.startswith("INSERT INTO steps") for s in statements) == 6
    updates = [s for s in statements if s.startswith("UPDATE runs")]
    assert len(updates) == 1 and "status='completed'" in updates[0]  # once, when the run ends
    # Each step renews the lease: a small row of its own, not the run's.
    assert sum(s.startswith("UPDATE leases") for s in statements) >= 6
    assert store.list_runs()[0]["steps"] == 6


def test_a_full_disk_is_reported_naming_the_store(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    with VM(make_registry(), store=store) as machine:
        machine.run([assign(0, final_answer=1)])
        pages = store.sqlite_connection.execute("PRAGMA page_count").fetchone()[0]
        store.sqlite_connection.execute(f"PRAGMA max_page_count = {pages + 1}")
        from vm import StoreError

        with pytest.raises(StoreError) as caught:
            machine.run([assign(0, a="q" * 200_000), assign(1, final_answer="${a}")])
    message = str(caught.value)
    assert "is full" in message and str(tmp_path / "runs.sqlite") in message
    assert "no transaction is active" not in message


def test_a_corrupted_store_is_reported_naming_the_file(tmp_path):
    path = tmp_path / "runs.sqlite"
    RunStore(path).close()
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\x13" * (4096 - 100)
    path.write_bytes(bytes(data))
    from vm import StoreError

    with pytest.raises(StoreError, match=str(path)):
        store = RunStore(path)
        store.list_runs()


def test_storable_keeps_plain_values_as_they_are():
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": "ü"}}
    assert storable(value) is value
    with pytest.raises(ValueLimitError):
        storable(["x" * 100] * 100, max_bytes=1000)

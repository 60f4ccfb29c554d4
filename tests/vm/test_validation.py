"""The plan format and static validation: every problem, each with its seq_no, before running."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from conftest import assign, call, jmp

from vm import PlanLoadError, PlanValidationError, compile_plan, load_plan_data, plan_json_schema, validate_plan
from vm.plan import INSTRUCTION_ADAPTER

# A plan as the original system's planner wrote them: leading reasoning step, keys in another
# order, execution_objective notes, output_vars as lists, a conditional jmp with context null.
ORIGINAL_STYLE = [
    {
        "parameters": {
            "chain_of_thoughts": "Find the version, then its features.",
            "dependency_analysis": "Step 2 depends on step 1.",
        },
        "seq_no": 0,
        "type": "reasoning",
    },
    {
        "seq_no": 1,
        "type": "calling",
        "execution_objective": "Find the latest version.",
        "parameters": {
            "output_vars": ["latest_version_info"],
            "tool_params": {"query": "latest stable version"},
            "tool_name": "retrieve_knowledge_graph",
        },
    },
    {
        "type": "calling",
        "seq_no": 2,
        "parameters": {
            "tool_name": "vector_search",
            "tool_params": {"query": "features of ${latest_version_info}", "top_k": 10},
            "output_vars": ["features"],
        },
    },
    {
        "seq_no": 3,
        "type": "jmp",
        "parameters": {"condition_prompt": "Enough detail?", "context": None, "jump_if_true": 5, "jump_if_false": 4},
    },
    {
        "seq_no": 4,
        "type": "calling",
        "parameters": {
            "tool_name": "vector_search",
            "tool_params": {"query": "more features", "top_k": 5},
            "output_vars": ["features"],
        },
    },
    {
        "seq_no": 5,
        "type": "calling",
        "parameters": {
            "tool_name": "llm_generate",
            "tool_params": {"prompt": "Summarise the features.", "context": "${features}"},
            "output_vars": ["final_answer"],
        },
    },
]


def test_original_style_plan_loads_unchanged():
    from tools import default_registry

    program, problems = validate_plan(ORIGINAL_STYLE, default_registry())
    assert problems == []
    assert [s.seq_no for s in program.steps] == [0, 1, 2, 3, 4, 5]
    assert program.instructions[1].execution_objective == "Find the latest version."
    assert program.steps[1].note == "Find the latest version."
    assert program.steps[3].if_false_seq == 4


def test_plan_from_json_text_path_and_wrapper(tmp_path):
    text = json.dumps([assign(1, final_answer=1)])
    path = tmp_path / "p.json"
    path.write_text(text)
    assert load_plan_data(text) == load_plan_data(path) == load_plan_data(str(path))
    wrapped = {"goal": "g", "best_plan": text}  # the seed dataset stores the plan as a JSON string
    assert load_plan_data(json.dumps(wrapped)) == json.loads(text)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing.json", "no such file"),
        ("[1, 2", "not valid JSON (line 1, column"),
        ('{"seq_no": 0}', "got an object (keys: seq_no); wrap the instructions in [...]"),
        ("text.json", "a plan is a JSON array of instructions, got str"),
    ],
)
def test_unloadable_input(tmp_path, source, message):
    (tmp_path / "text.json").write_text('"just text"')
    if source.endswith(".json"):
        source = str(tmp_path / source)
    with pytest.raises(PlanLoadError, match=re.escape(message)):
        load_plan_data(source)


def test_schema_is_generated_and_accepts_plans():
    schema = plan_json_schema()
    assert schema["type"] == "array"
    jsonschema.validate(ORIGINAL_STYLE, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"seq_no": 0, "type": "teleport", "parameters": {}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([call(0, "x", oops=1) | {"parameters": {"tool_name": "x", "bogus": 1}}], schema)


# (bad plan, code, message fragment, seq_no)
BAD_PLANS = [
    ([{"seq_no": "1", "type": "assign", "parameters": {"final_answer": 1}}], "schema", "seq_no: Input should be a valid integer", None),
    ([{"seq_no": 1.5, "type": "assign", "parameters": {"final_answer": 1}}], "schema", "seq_no", None),
    ([{"seq_no": 0, "type": "teleport", "parameters": {}}], "schema", "unknown instruction type 'teleport'; use one of assign, calling, jmp, reasoning", 0),
    ([{"seq_no": 0, "parameters": {}}], "schema", "missing 'type'", 0),
    (["not an object"], "schema", "instruction #0: an instruction is a JSON object, got str", None),
    ([call(0, "echo", 5, value=1)], "schema", "output_vars", 0),
    ([call(0, "echo", {"a": 1}, value=1)], "schema", "output_vars", 0),
    ([call(0, "echo", ["bad name"], value=1)], "schema", "is not a valid variable name", 0),
    ([call(0, "echo", ["a", "a"], value=1)], "schema", "names a variable more than once", 0),
    ([{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "echo", "tool_params": {}, "outputs": "x"}}], "schema", "unknown key 'parameters.outputs'", 0),
    ([jmp(0, target_seq=0, bogus=1)], "schema", "unknown key 'parameters.bogus'", 0),
    ([jmp(0, jump_if_true=1)], "schema", "a jmp needs target_seq", 0),
    ([jmp(0, condition_prompt="?", target_seq=1)], "schema", "not both", 0),
    ([jmp(0, condition_prompt="?")], "schema", "needs jump_if_true", 0),
    ([{"seq_no": 0, "type": "assign", "parameters": {}}], "schema", "parameters", 0),
    ([{"seq_no": 0, "type": "assign", "parameters": {"a b": 1}}], "schema", "'a b' is not a valid variable name", 0),
    ([{"seq_no": 0, "type": "assign", "parameters": {"final_answer": 1}, "unexpected": 2}], "schema", "unknown key 'unexpected'", 0),
    ([assign(0, final_answer="${bad ref}")], "bad_reference", "'${bad ref}' is not a valid reference", 0),
    ([assign(0, a=1), assign(0, final_answer=2)], "duplicate_seq_no", "seq_no 0 is used by 2 instructions", 0),
    ([jmp(0, target_seq=7), assign(1, final_answer=1)], "bad_jump_target", "jumps to seq_no 7, which does not exist", 0),
    ([call(0, "nope", "final_answer")], "unknown_tool", "unknown tool 'nope' (registered: add, echo, fail, outputs_of, shout)", 0),
    ([call(0, "add", "final_answer")], "missing_parameter", "tool 'add' needs parameter 'a'", 0),
    ([call(0, "add", "final_answer", a=1, c=2)], "unknown_parameter", "tool 'add' has no parameter 'c' (accepted: a, b)", 0),
    ([assign(0, final_answer="${ghost}")], "undefined_variable", "variable 'ghost' is read here, but no step before it", 0),
    ([assign(0, x=1)], "no_final_answer", "no reachable step assigns 'final_answer'", None),
    ([], "empty", "the plan has no instructions", None),
]


@pytest.mark.parametrize(("plan", "code", "message", "seq_no"), BAD_PLANS)
def test_bad_plans(registry, plan, code, message, seq_no):
    _program, problems = validate_plan(plan, registry)
    matching = [p for p in problems if p.code == code]
    assert matching, problems
    assert message in matching[0].message, matching[0].message
    assert matching[0].seq_no == seq_no
    with pytest.raises(PlanValidationError):
        compile_plan(plan, registry)


def test_all_problems_are_reported_at_once(registry):
    plan = [
        {"seq_no": 0, "type": "teleport", "parameters": {}},
        call(1, "nope", "x"),
        call(2, "add", "y", c=1),
        jmp(3, target_seq=99),
        assign(3, z=1),
    ]
    _program, problems = validate_plan(plan, registry)
    codes = sorted(p.code for p in problems)
    assert codes == sorted(["schema", "unknown_tool", "missing_parameter", "unknown_parameter", "bad_jump_target", "duplicate_seq_no"])
    lines = str(PlanValidationError(problems)).splitlines()
    assert lines[0] == "the plan has 6 problems; fix them and run again:"
    assert all(line.startswith("  seq_no ") for line in lines[1:])


def test_data_flow_follows_jumps(registry):
    # y is assigned only after the jump target; reading it at seq 3 is reachable with y unset on
    # no path... except through 1 -> 2: statically fine (some path assigns it).
    plan = [
        assign(0, x=1),
        jmp(1, target_seq=3),
        assign(2, y=2),  # unreachable: skipped by the jump
        assign(3, final_answer="${y}"),
    ]
    _program, problems = validate_plan(plan, registry)
    assert [(p.seq_no, p.code) for p in problems] == [(3, "undefined_variable")]


def test_data_flow_accepts_assignment_on_a_loop_back_edge(registry):
    plan = [
        assign(0, i=0),
        jmp(1, condition_prompt="first pass? ${i}", jump_if_true=3, jump_if_false=2),
        assign(2, final_answer="${later}"),
        assign(3, later="set", i="${i} + 1"),
        jmp(4, target_seq=1),
    ]
    _program, problems = validate_plan(plan, registry)
    assert problems == []


def test_predefined_variables_count_as_assigned(registry):
    plan = [assign(0, final_answer="${goal}")]
    assert validate_plan(plan, registry)[1][0].code == "undefined_variable"
    assert validate_plan(plan, registry, predefined=["goal"])[1] == []


def test_final_answer_must_be_reachable(registry):
    plan = [assign(0, x=1), jmp(1, target_seq=3), assign(2, final_answer=1), assign(3, y=2)]
    _program, problems = validate_plan(plan, registry)
    assert [p.code for p in problems] == ["no_final_answer"]


def test_reasoning_steps_accept_extra_fields():
    ins = INSTRUCTION_ADAPTER.validate_python({"seq_no": 0, "type": "reasoning", "parameters": {"chain_of_thoughts": "x", "other": 1}})
    assert ins.parameters.model_dump()["other"] == 1


def test_program_round_trips_to_data(registry):
    program = compile_plan(ORIGINAL_STYLE[1:], None)
    again = compile_plan(program.to_data(), None)
    assert again.to_data() == program.to_data()

"""Property-based tests: random and mutated plans never crash validation or execution, and
never hang. The LLM answering jump conditions is ScriptedLLM (a scripted fake)."""

from __future__ import annotations

import copy
import json
import time

from conftest import EXAMPLES, ScriptedLLM, make_registry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools import load_plugin
from vm import VM, Limits, PlanError, RunError, validate_plan

NAMES = st.sampled_from(["a", "b", "x", "final_answer", "chunks", "i"])
REFS = NAMES.map(lambda n: "${" + n + "}")
TEXT = st.one_of(
    st.text(max_size=20),
    REFS,
    st.builds(lambda a, op, b: f"{a} {op} {b}", st.one_of(REFS, st.integers(-5, 5).map(str)), st.sampled_from(["+", "-", "*", "/", "**", "%"]), st.one_of(REFS, st.integers(-5, 5).map(str))),
    st.builds(lambda a, b: f"{a}-{b}", REFS, REFS),
    st.sampled_from(["${a.key}", "${b[0]}", "${", "${}", "}", "9 ** 9 ** 9", "${x} ** ${x} ** ${x}"]),
)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), TEXT)
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=6)
SEQ = st.integers(-1, 8)
TOOLS = st.sampled_from(["echo", "add", "shout", "fail", "outputs_of", "missing_tool"])


def instruction():
    assign = st.fixed_dictionaries({"seq_no": SEQ, "type": st.just("assign"), "parameters": st.dictionaries(NAMES, VALUE, min_size=1, max_size=3)})
    calling = st.fixed_dictionaries(
        {
            "seq_no": SEQ,
            "type": st.just("calling"),
            "parameters": st.fixed_dictionaries(
                {
                    "tool_name": TOOLS,
                    "tool_params": st.dictionaries(st.sampled_from(["value", "a", "b", "text", "message", "zzz"]), VALUE, max_size=3),
                    "output_vars": st.one_of(st.none(), NAMES, st.lists(NAMES, max_size=3), st.integers()),
                }
            ),
        }
    )
    jump = st.fixed_dictionaries(
        {
            "seq_no": SEQ,
            "type": st.just("jmp"),
            "parameters": st.one_of(
                st.fixed_dictionaries({"target_seq": SEQ}),
                st.fixed_dictionaries({"condition_prompt": TEXT, "jump_if_true": SEQ}, optional={"jump_if_false": SEQ, "context": VALUE}),
            ),
        }
    )
    junk = st.one_of(VALUE, st.dictionaries(st.sampled_from(["seq_no", "type", "parameters", "extra"]), VALUE, max_size=4))
    return st.one_of(assign, assign, calling, jump, junk)


PLANS = st.lists(instruction(), max_size=8)
LITERAL = st.recursive(
    st.one_of(st.integers(-100, 100), st.floats(-1e6, 1e6), st.text(alphabet="abc 123-.", max_size=8), st.booleans()),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["key", "summary", "a"]), inner, max_size=2)),
    max_leaves=4,
)


@st.composite
def runnable_plan(draw):
    """Well-formed plans (unique seq_no, jumps in range, variables set first, final_answer last)
    with random values, so that most of them pass validation and exercise the interpreter."""
    n = draw(st.integers(1, 7))
    prelude = {"seq_no": 0, "type": "assign", "parameters": {name: draw(LITERAL) for name in ["a", "b", "x", "chunks", "i", "final_answer"]}}
    prelude["parameters"].pop("final_answer")
    params_for = {"echo": ["value"], "add": ["a", "b"], "shout": ["text"], "fail": ["message"], "outputs_of": []}
    steps = [prelude]
    for seq in range(1, n + 1):
        kind = draw(st.sampled_from(["assign", "calling", "jmp", "cond"]))
        if kind == "assign":
            steps.append({"seq_no": seq, "type": "assign", "parameters": draw(st.dictionaries(NAMES.filter(lambda v: v != "final_answer"), VALUE, min_size=1, max_size=2))})
        elif kind == "calling":
            name = draw(st.sampled_from(sorted(params_for)))
            outputs = draw(st.one_of(st.none(), NAMES.filter(lambda v: v != "final_answer"), st.lists(st.sampled_from(["a", "b", "x"]), min_size=2, max_size=3, unique=True)))
            steps.append({"seq_no": seq, "type": "calling", "parameters": {"tool_name": name, "tool_params": {p: draw(VALUE) for p in params_for[name]}, "output_vars": outputs}})
        elif kind == "jmp":
            steps.append({"seq_no": seq, "type": "jmp", "parameters": {"target_seq": draw(st.integers(min(seq + 1, n + 1), n + 1))}})
        else:
            steps.append({"seq_no": seq, "type": "jmp", "parameters": {"condition_prompt": draw(TEXT), "jump_if_true": draw(st.integers(0, n + 1))}})
    steps.append({"seq_no": n + 1, "type": "assign", "parameters": {"final_answer": draw(VALUE)}})
    return steps
REPLIES = st.lists(st.one_of(st.sampled_from(['{"result": true, "explanation": ""}', '{"result": false, "explanation": ""}', "no idea", "{", '{"summary": 1}']), st.text(max_size=30)), min_size=1, max_size=5)

LIMITS = Limits(max_steps=60, max_seconds=5, max_llm_calls=30)


def check_run(plan, replies):
    llm = ScriptedLLM(*replies, default='{"result": false, "explanation": ""}')
    vm = VM(make_registry(), llm=llm, limits=LIMITS)
    started = time.perf_counter()
    try:
        result = vm.run(plan)
    except PlanError:
        return
    finally:
        vm.close()
    assert time.perf_counter() - started < 5
    assert result.status in ("completed", "failed")
    if result.status == "failed":
        assert isinstance(result.error, RunError)
        assert result.error.seq_no is not None
    else:
        assert "final_answer" in result.variables
    assert result.steps <= LIMITS.max_steps
    json.dumps(result.to_dict(trace=True), default=str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PLANS)
def test_validation_never_crashes(plan):
    program, problems = validate_plan(plan, make_registry())
    assert (program is None) == bool(problems)
    for problem in problems:
        assert problem.message and (problem.seq_no is None or isinstance(problem.seq_no, int))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PLANS, REPLIES)
def test_execution_of_random_plans_never_crashes(plan, replies):
    check_run(plan, replies)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runnable_plan(), REPLIES)
def test_execution_of_well_formed_plans_never_crashes_or_hangs(plan, replies):
    check_run(plan, replies)


EXAMPLE_PLANS = [json.loads(p.read_text()) for p in sorted((EXAMPLES / "plans").glob("*.json"))]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_plan(draw):
    plan = copy.deepcopy(draw(st.sampled_from(EXAMPLE_PLANS)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(plan) if p]
        path = draw(st.sampled_from(paths))
        parent = plan
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete"]))
        if action == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(VALUE)
        if not plan:
            break
    return plan


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_plan(), REPLIES)
def test_mutated_example_plans_never_crash(plan, replies):
    registry_tools = load_plugin(EXAMPLES / "plugins" / "offline_tools.py")
    llm = ScriptedLLM(*replies, default='{"result": true, "explanation": ""}')
    from tools import ToolRegistry

    vm = VM(ToolRegistry(registry_tools), llm=llm, limits=LIMITS)
    try:
        result = vm.run(plan)
    except PlanError:
        return
    assert result.status in ("completed", "failed")
    if result.error is not None:
        assert isinstance(result.error, RunError)

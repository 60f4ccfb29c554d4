"""The interpreter's semantics (DESIGN points 1-10), run for real against small tools.
Jump conditions are answered by ScriptedLLM (a scripted fake at the LLM edge)."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import ScriptedLLM, assign, call, jmp

from tools import ToolRegistry, tool
from vm import (
    VM,
    CallContext,
    Completion,
    ConditionError,
    Limits,
    LLMCallLimitExceeded,
    LLMUnavailable,
    NoFinalAnswer,
    OutputMappingError,
    PlanValidationError,
    StepLimitExceeded,
    TimeLimitExceeded,
    ToolFailed,
    ToolNotAllowed,
    ToolParamsInvalid,
    VariableUndefined,
)


def test_runs_in_seq_no_order_not_list_order(vm):
    plan = [assign(3, final_answer="${x}"), assign(1, x="first"), assign(2, x="${x} then second")]
    result = vm.run(plan)
    assert result.ok
    assert result.final_answer == "first then second"
    assert [r.seq_no for r in result.trace] == [1, 2, 3]


@pytest.mark.parametrize("start", [0, 1, 10])
def test_seq_no_may_start_anywhere(vm, start):
    result = vm.run([assign(start, a=1), assign(start + 1, final_answer="${a} + 1")])
    assert result.final_answer == 2


def test_assign_sees_store_as_before_the_step(vm):
    plan = [assign(0, a=1, b=2), assign(1, a="${b}", b="${a}"), assign(2, final_answer="${a},${b}")]
    assert vm.run(plan).final_answer == "2,1"


def test_assign_cannot_read_a_value_set_in_the_same_step(vm):
    plan = [assign(0, x=1, y="${x}"), assign(1, final_answer="${y}")]
    # x is not yet assigned when step 0 starts: statically, no path assigns x before step 0.
    problems = vm.validate(plan)
    assert [p.code for p in problems] == ["undefined_variable"]
    assert "variable 'x'" in str(problems[0])


def test_calling_stores_typed_result(vm):
    plan = [
        assign(0, data={"items": [1, 2, 3]}),
        call(1, "echo", "copy", value="${data}"),
        assign(2, final_answer="${copy.items[2]}"),
    ]
    result = vm.run(plan)
    assert result.final_answer == 3
    assert result.trace[1].inputs == {"value": {"items": [1, 2, 3]}}
    assert result.trace[1].tool == "echo"
    assert result.trace[1].outputs == {"copy": {"items": [1, 2, 3]}}
    assert result.trace[1].result == {"items": [1, 2, 3]}  # the raw reply


def test_async_and_sync_tools(vm):
    plan = [call(0, "shout", ["loud"], text="hi"), call(1, "add", "final_answer", a=2, b="3")]
    result = vm.run(plan)
    assert result.variables["loud"] == "HI"
    assert result.final_answer == 5.0


def test_async_api():
    async def main():
        vm = VM(ToolRegistry([tool(lambda value: value, name="ident")]))
        return await vm.arun([call(0, "ident", "final_answer", value=[1])])

    assert asyncio.run(main()).final_answer == [1]


def test_run_inside_event_loop_points_to_arun(vm):
    async def main():
        vm.run([assign(0, final_answer=1)])

    with pytest.raises(RuntimeError, match="await vm.arun"):
        asyncio.run(main())


def test_initial_variables(vm):
    result = vm.run([assign(0, final_answer="Hello ${name}")], variables={"name": "Ada"})
    assert result.final_answer == "Hello Ada"


# --- final_answer ---------------------------------------------------------------------------


def test_run_ends_when_final_answer_is_assigned(vm):
    plan = [assign(0, final_answer="done"), call(1, "fail", message="must not run")]
    result = vm.run(plan)
    assert result.ok and result.steps == 1


@pytest.mark.parametrize("name", ["i", "answer", "final", "final_answer_draft", "answer_final"])
def test_similar_names_do_not_end_the_run(vm, name):
    plan = [assign(0, **{name: 1}), assign(1, final_answer="${" + name + "}")]
    result = vm.run(plan)
    assert result.steps == 2 and result.final_answer == 1


def test_final_answer_from_output_vars(vm):
    result = vm.run([call(0, "echo", ["final_answer"], value="x")])
    assert result.final_answer == "x"


def test_running_off_the_end_is_an_error():
    llm = ScriptedLLM('{"result": false, "explanation": "no"}')
    plan = [
        assign(0, x=1),
        jmp(1, condition_prompt="skip the answer?", jump_if_true=3),
        jmp(2, target_seq=4),
        assign(3, final_answer="${x}"),
        assign(4, other=2),
    ]
    result = VM(llm=llm).run(plan)
    assert result.status == "failed"
    assert isinstance(result.error, NoFinalAnswer)
    assert result.error.seq_no == 4
    assert "without assigning 'final_answer'" in str(result.error)
    with pytest.raises(NoFinalAnswer):
        result.raise_for_error()


# --- output_vars ----------------------------------------------------------------------------


@pytest.mark.parametrize("output_vars", ["whole", ["whole"]])
def test_single_output_var_stores_whole_result(vm, output_vars):
    result = vm.run([call(0, "echo", output_vars, value={"a": 1}), assign(1, final_answer="${whole}")])
    assert result.final_answer == {"a": 1}


@pytest.mark.parametrize(
    "reply",
    [
        {"summary": "S", "risk": "R", "extra": 1},
        '{"summary": "S", "risk": "R"}',
        'Sure! Here it is:\n```json\n{"summary": "S", "risk": "R"}\n```\nAnything else?',
        'The answer is {"summary": "S", "risk": "R"} as requested.',
        '<think>{"summary": "wrong"}</think>{"summary": "S", "risk": "R"}',
    ],
)
def test_several_output_vars_map_keys(vm, reply):
    plan = [call(0, "echo", ["summary", "risk"], value=reply), assign(1, final_answer="${summary}/${risk}")]
    assert vm.run(plan).final_answer == "S/R"


def test_braces_inside_json_strings(vm):
    reply = 'Result: {"summary": "use {braces} and } freely", "risk": "a \\"quoted\\" {x}"} done'
    plan = [call(0, "echo", ["summary", "risk"], value=reply), assign(1, final_answer="${summary}|${risk}")]
    assert vm.run(plan).final_answer == 'use {braces} and } freely|a "quoted" {x}'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"summary": "S"}, "has no key 'risk' for output_vars (keys there: summary)"),
        ("plain prose, no JSON", "returned text with no JSON object in it"),
        ([1, 2], "returned a list, but output_vars [summary, risk] need a JSON object"),
        (42, "returned a int"),
    ],
)
def test_unmappable_results_fail_clearly(vm, value, message):
    result = vm.run([call(0, "echo", ["summary", "risk"], value=value), assign(1, final_answer="x")])
    assert isinstance(result.error, OutputMappingError)
    assert message in str(result.error)
    assert result.error.seq_no == 0


def test_tools_see_their_output_vars(vm):
    result = vm.run([call(0, "outputs_of", ["alpha", "beta"]), assign(1, final_answer="${alpha} & ${beta}")])
    assert result.final_answer == "value of alpha & value of beta"


# --- tools failing -------------------------------------------------------------------------


def test_tool_exception_is_chained_not_swallowed(vm):
    result = vm.run([call(0, "fail", "out", message="boom"), assign(1, final_answer="${out}")])
    err = result.error
    assert isinstance(err, ToolFailed)
    assert err.tool_name == "fail" and err.seq_no == 0 and err.instruction_type == "calling"
    assert isinstance(err.__cause__, ValueError)
    assert "boom" in str(err)
    assert "out" not in result.variables  # never becomes answer text
    assert result.trace[-1].error == str(err)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([call(0, "add", "final_answer", a="ten")], "parameter 'a': a: Input should be a valid number"),
        ([assign(0, x={"k": 1}), call(1, "add", "final_answer", a="${x}")], "parameter 'a'"),
        ([call(0, "shout", "final_answer", text=["not", "text"])], "tool 'shout' rejected parameter 'text'"),
    ],
)
def test_wrong_typed_params_fail_before_the_call(vm, steps, message):
    result = vm.run(steps)
    err = result.error
    assert isinstance(err, ToolParamsInvalid)
    assert message in str(err)
    assert err.parameter in ("a", "text") and err.seq_no == steps[-1]["seq_no"]


def test_params_are_coerced_like_pydantic_lax_mode(vm):
    assert vm.run([call(0, "add", "final_answer", a="2", b=3)]).final_answer == 5.0


def test_allow_list_is_enforced_at_run_time(registry):
    plan = [call(0, "echo", "final_answer", value=1)]
    vm = VM(registry, allowed_tools=["add"])
    with pytest.raises(PlanValidationError, match="not in this run's allow-list"):
        vm.run(plan)
    # Even a program compiled without the allow-list is checked before the call.
    program = VM(registry).compile(plan)
    result = vm.run(program)
    assert isinstance(result.error, ToolNotAllowed)
    assert result.variables == {}


def test_undefined_variable_at_run_time_names_step_and_variable():
    llm = ScriptedLLM('{"result": true, "explanation": "yes"}')
    plan = [
        jmp(0, condition_prompt="skip?", jump_if_true=2, jump_if_false=1),
        assign(1, x=1),
        assign(2, final_answer="${x}"),
    ]
    assert VM(llm=llm).validate(plan) == []  # x is assigned on one path
    result = VM(llm=llm).run(plan)
    assert isinstance(result.error, VariableUndefined)
    assert result.error.variable == "x" and result.error.seq_no == 2
    assert str(result.error).startswith("seq_no 2 (assign): variable 'x'")


# --- jmp -------------------------------------------------------------------------------------


def _branch_plan():
    return [
        assign(0, number=7),
        jmp(1, condition_prompt="Is ${number} even?", context="number is ${number}", jump_if_true=2, jump_if_false=3),
        assign(2, final_answer="even"),
        assign(3, final_answer="odd"),
    ]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"result": false, "explanation": "7 is odd"}', "odd"),
        ('{"result": true, "explanation": "?"}', "even"),
        ('```json\n{"result": false, "explanation": "odd"}\n```', "odd"),
        ('I think... {"result": "false", "explanation": "odd"} final.', "odd"),
        (Completion(text='{"result": true, "explanation": "x"}', reasoning="hmm"), "even"),
        ('<think>{"result": true}</think>{"result": false, "explanation": "x"}', "odd"),
    ],
)
def test_conditional_jump(reply, expected):
    llm = ScriptedLLM(reply)
    result = VM(llm=llm).run(_branch_plan())
    assert result.final_answer == expected
    assert "Is 7 even?" in llm.prompts[0] and "number is 7" in llm.prompts[0]
    assert llm.schemas[0]["required"] == ["result", "explanation"]
    jump = result.trace[1]
    assert jump.result["result"] is (expected == "even")
    assert dict(jump.outputs) == {}  # a jump sets no variables
    assert jump.next_seq == (2 if expected == "even" else 3)
    assert len(jump.llm_calls) == 1


def test_absent_jump_if_false_falls_through():
    plan = [jmp(0, condition_prompt="go?", jump_if_true=2), assign(1, final_answer="fell"), assign(2, final_answer="jumped")]
    assert VM(llm=ScriptedLLM('{"result": false, "explanation": ""}')).run(plan).final_answer == "fell"


def test_malformed_condition_reply_is_retried_once():
    llm = ScriptedLLM("maybe?", '{"result": true, "explanation": "ok"}')
    result = VM(llm=llm).run(_branch_plan())
    assert result.final_answer == "even"
    assert len(llm.prompts) == 2 and "maybe?" in llm.prompts[1]
    assert len(result.trace[1].llm_calls) == 2


def test_malformed_condition_reply_twice_fails_quoting_it():
    llm = ScriptedLLM("maybe?", '{"result": "perhaps"}')
    result = VM(llm=llm).run(_branch_plan())
    err = result.error
    assert isinstance(err, ConditionError)
    assert err.seq_no == 1 and err.instruction_type == "jmp"
    assert '{"result": "perhaps"}' in str(err) and err.reply == '{"result": "perhaps"}'


def test_condition_without_llm_says_what_to_do():
    result = VM().run(_branch_plan())
    assert isinstance(result.error, LLMUnavailable)
    assert "VM(registry, llm=...)" in str(result.error)


def test_unconditional_jump_skips(vm):
    plan = [jmp(0, target_seq=2), call(1, "fail", message="skipped"), assign(2, final_answer="ok")]
    result = vm.run(plan)
    assert result.final_answer == "ok"
    assert [r.seq_no for r in result.trace] == [0, 2]


# --- limits ---------------------------------------------------------------------------------


ALWAYS_TRUE = '{"result": true, "explanation": "keep going"}'


def test_backward_loop_ends_at_step_budget():
    plan = [
        assign(0, i=0),
        assign(1, i="${i} + 1"),
        jmp(2, condition_prompt="Is ${i} below 10?", jump_if_true=1, jump_if_false=3),
        assign(3, final_answer="${i}"),
    ]
    started = time.perf_counter()
    result = VM(llm=ScriptedLLM(default=ALWAYS_TRUE), limits=Limits(max_steps=51, max_llm_calls=None)).run(plan)
    assert time.perf_counter() - started < 1
    err = result.error
    assert isinstance(err, StepLimitExceeded)
    assert err.limit == "max_steps" and err.value == 51
    assert "step budget of 51 exceeded" in str(err) and "(the jmp at seq_no 2 loops back to seq_no 1)" in str(err)
    assert result.steps == 51
    assert result.variables["i"] == 25


def test_default_step_budget_is_1000():
    plan = [assign(0, i=0), jmp(1, condition_prompt="again?", jump_if_true=0), assign(2, final_answer=1)]
    result = VM(llm=ScriptedLLM(default=ALWAYS_TRUE), limits=Limits(max_llm_calls=None)).run(plan)
    assert isinstance(result.error, StepLimitExceeded) and result.steps == 1000


def test_endless_unconditional_loop_is_caught_before_running(vm):
    plan = [assign(0, i=0), jmp(1, target_seq=0), assign(2, final_answer=1)]
    with pytest.raises(PlanValidationError, match="no reachable step assigns 'final_answer'"):
        vm.run(plan)


def test_loop_with_llm_condition_exits():
    replies = ['{"result": true, "explanation": ""}'] * 3 + ['{"result": false, "explanation": ""}']
    plan = [
        assign(0, i=0),
        assign(1, i="${i} + 1"),
        jmp(2, condition_prompt="Is ${i} below 4?", jump_if_true=1, jump_if_false=3),
        assign(3, final_answer="${i}"),
    ]
    assert VM(llm=ScriptedLLM(*replies)).run(plan).final_answer == 4


def test_wall_clock_budget_stops_a_slow_tool():
    @tool
    async def slow() -> str:
        """Sleep a long time."""
        await asyncio.sleep(30)
        return "late"

    started = time.perf_counter()
    result = VM(ToolRegistry([slow]), limits=Limits(max_seconds=0.2)).run([call(0, "slow", "final_answer")])
    assert time.perf_counter() - started < 2
    assert isinstance(result.error, TimeLimitExceeded)
    assert "wall-clock budget of 0.2 s" in str(result.error)


def test_wall_clock_budget_stops_a_slow_sync_tool():
    @tool
    def slow_sync() -> str:
        """Block for a while."""
        time.sleep(1.5)
        return "late"

    started = time.perf_counter()
    with VM(ToolRegistry([slow_sync]), limits=Limits(max_seconds=0.2)) as vm:
        result = vm.run([call(0, "slow_sync", "final_answer")])
    assert time.perf_counter() - started < 1.2
    assert isinstance(result.error, TimeLimitExceeded)


def test_llm_call_budget():
    plan = [assign(0, i=0), jmp(1, condition_prompt="again?", jump_if_true=0), assign(2, final_answer=1)]
    llm = ScriptedLLM(*['{"result": true, "explanation": ""}'] * 10)
    result = VM(llm=llm, limits=Limits(max_llm_calls=3)).run(plan)
    assert isinstance(result.error, LLMCallLimitExceeded)
    assert len(llm.prompts) == 3 and result.llm_calls == 3


def test_limits_validate_their_values():
    with pytest.raises(ValueError):
        Limits(max_steps=0)
    with pytest.raises(ValueError):
        Limits(unknown=1)


# --- tools using the run's LLM ---------------------------------------------------------------


def test_llm_generate_builtin_uses_run_llm_and_keeps_think_apart():
    from tools import default_registry

    llm = ScriptedLLM("<think>secret scratch</think>The answer is 4.")
    plan = [call(0, "llm_generate", "final_answer", prompt="What is 2+2?", context=["two", "plus", "two"])]
    result = VM(default_registry(), llm=llm).run(plan)
    assert result.final_answer == "The answer is 4."
    assert '["two", "plus", "two"]' in llm.prompts[0] and "What is 2+2?" in llm.prompts[0]
    assert result.trace[0].llm_calls[0]["reasoning"] == "secret scratch"
    assert "secret" not in str(result.variables)


def test_llm_generate_with_several_output_vars_asks_for_those_keys():
    from tools import default_registry

    llm = ScriptedLLM('Here: {"summary": "short", "risks": ["r1"]}')
    plan = [call(0, "llm_generate", ["summary", "risks"], prompt="Summarise."), assign(1, final_answer="${summary}: ${risks}")]
    result = VM(default_registry(), llm=llm).run(plan)
    assert result.final_answer == 'short: ["r1"]'
    assert "exactly: summary, risks" in llm.prompts[0]
    assert llm.schemas[0]["required"] == ["summary", "risks"]


def test_sync_tool_may_call_run_llm_from_its_thread():
    @tool
    def ask(question: str, ctx: CallContext) -> str:
        """Ask the run's LLM."""
        return ctx.llm.complete(question).text

    result = VM(ToolRegistry([ask]), llm=ScriptedLLM("forty-two")).run([call(0, "ask", "final_answer", question="?")])
    assert result.final_answer == "forty-two"
    assert result.llm_calls == 1


def test_retrieval_builtins_without_backend_fail_clearly():
    from tools import default_registry

    result = VM(default_registry()).run([call(0, "vector_search", "final_answer", query="x")])
    assert isinstance(result.error, ToolFailed)
    assert "no knowledge base is configured" in str(result.error)


def test_retrieval_builtins_use_given_backend():
    from tools import default_registry

    class Memory:
        def search(self, query, top_k):
            return [{"content": f"about {query}", "source_uri": "mem://1", "score": 1.0}][:top_k]

        def graph(self, query):
            return {"entities": [{"name": query, "description": ""}], "relationships": []}

    plan = [
        call(0, "vector_search", "chunks", query="tidb", top_k=1),
        call(1, "retrieve_knowledge_graph", "kg", query="tidb"),
        assign(2, final_answer="${chunks[0].content} / ${kg.entities[0].name}"),
    ]
    assert VM(default_registry(Memory())).run(plan).final_answer == "about tidb / tidb"


def test_trace_records_every_step(vm):
    plan = [
        {"seq_no": 0, "type": "reasoning", "parameters": {"chain_of_thoughts": "think"}},
        assign(1, a=2),
        call(2, "add", "final_answer", a="${a}", b=1),
    ]
    result = vm.run(plan)
    assert [(r.seq_no, r.type) for r in result.trace] == [(0, "reasoning"), (1, "assign"), (2, "calling")]
    assert result.trace[0].inputs == {"chain_of_thoughts": "think"}
    assert result.trace[2].inputs == {"a": 2, "b": 1}
    assert all(r.duration_s >= 0 and r.error is None for r in result.trace)
    data = result.to_dict(trace=True)
    assert data["steps"] == 3 and data["trace"][2]["tool"] == "add"


def test_llm_backend_exception_in_a_condition_is_a_run_error():
    class Down:
        def complete(self, prompt, *, system=None, json_schema=None):
            raise ConnectionError("endpoint unreachable")

    from vm import LLMCallFailed

    result = VM(llm=Down()).run(_branch_plan())
    assert isinstance(result.error, LLMCallFailed)
    assert result.error.seq_no == 1 and isinstance(result.error.__cause__, ConnectionError)
    assert "endpoint unreachable" in str(result.error)

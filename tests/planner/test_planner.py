"""The planner: prompt (pinned by a golden file), parsing, repair, re-planning, the template
planner, and constrained decoding. LLM replies come from ScriptedLLM (a scripted fake) except in
the constrained-decoding tests, which run a tiny real model."""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path

import pytest
from conftest import EXAMPLES, ScriptedLLM, assign, call, make_registry

from planner import Planner, TemplatePlanner, build_prompt, build_training_example, describe_goal, goal_language, parse_reply
from planner.prompt import format_completion
from tools import default_registry
from vm import VM, Completion, PlanningError

GOLDEN = Path(__file__).parent.parent / "golden" / "planner_prompt.md"
META = {
    "response_format": {"Background": "TiDB documentation", "Annotations": "Be brief", "Lang": "English", "Format": "Markdown"},
    "label_path": [{"label": "Basic Knowledge"}, {"label": "Versions"}],
}
GOOD = [
    call(0, "vector_search", ["chunks"], query="latest TiDB version", top_k=3),
    call(1, "llm_generate", ["final_answer"], prompt="Which is the latest TiDB version? Answer in English.", context="${chunks}"),
]


def reply_for(plan, reasoning="look it up, then answer"):
    return format_completion(reasoning, plan)


# --- the prompt --------------------------------------------------------------------------------------


def test_prompt_is_pinned_by_a_golden_file():
    prompt = build_prompt("What is the latest stable TiDB version?", META, default_registry())
    if os.environ.get("UPDATE_GOLDEN"):  # regenerate: UPDATE_GOLDEN=1 python -m pytest -k golden
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(prompt, encoding="utf-8")
    assert prompt == GOLDEN.read_text(encoding="utf-8")


def test_prompt_lists_the_registrys_own_tools():
    prompt = build_prompt("Add things", None, make_registry())
    assert "## add\nAdd two numbers." in prompt
    assert "- `a` (number, required): First number." in prompt
    assert "- `b` (number, default 0.0): Second number." in prompt
    assert "## llm_generate" not in prompt


@pytest.mark.parametrize(
    ("metadata", "lines"),
    [
        (None, ["Goal: G"]),
        ('{"response_format": {"lang": "Chinese"}}', ["Goal: G", "Response language: Chinese"]),
        ({"Response_Format": {"BACKGROUND": "bg"}, "label_path": ["A", "B"]}, ["Goal: G", "Background: bg", "Label path: A > B"]),
        ({"response_format": {"Format": {"type": "table"}}}, ["Goal: G", 'Response format: {"type": "table"}']),
    ],
)
def test_describe_goal(metadata, lines):
    assert describe_goal("  G ", metadata).splitlines() == lines


@pytest.mark.parametrize(("goal", "metadata", "message"), [("", None, "goal is empty"), ("G", "{oops", "not valid JSON"), ("G", "[1]", "must be a JSON object")])
def test_bad_goal_input(goal, metadata, message):
    with pytest.raises(ValueError, match=message):
        describe_goal(goal, metadata)


def test_training_text_uses_the_inference_prompt():
    example = build_training_example("What is planvm?", META, "think", GOOD, default_registry())
    assert example["prompt"] == build_prompt("What is planvm?", META, default_registry())
    assert example["completion"].startswith("<think>\nthink\n</think>\n```json\n")
    assert parse_reply(example["completion"]) == ("think", GOOD)


# --- parsing ----------------------------------------------------------------------------------------------


PLAN_JSON = json.dumps(GOOD)


@pytest.mark.parametrize(
    ("text", "reasoning"),
    [
        (f"<think>r</think>\n```json\n{PLAN_JSON}\n```", "r"),
        (f"<think>r</think>\n<answer>{PLAN_JSON}</answer>", "r"),
        (f"<think>r</think>Here is the plan: {PLAN_JSON} Hope it helps.", "r"),
        (f"<think>r but never closed\n```json\n{PLAN_JSON}\n```", "r but never closed"),
        (f"</think>\n```json\n{PLAN_JSON}\n```", ""),
        (PLAN_JSON, ""),
        (f'```json\n{{"plan": {PLAN_JSON}}}\n```', ""),
    ],
)
def test_parse_reply_is_tolerant(text, reasoning):
    assert parse_reply(text) == (reasoning, GOOD)


def test_parse_reply_without_a_plan():
    with pytest.raises(ValueError, match="no JSON plan"):
        parse_reply("<think>hmm</think> I cannot help with that.")


# --- planning, repair, re-planning --------------------------------------------------------------------------


def test_plan_on_first_try():
    llm = ScriptedLLM(reply_for(GOOD))
    result = Planner(llm, default_registry()).plan("What is the latest TiDB version?")
    assert result.plan == GOOD and result.reasoning == "look it up, then answer" and len(result.attempts) == 1


def test_reasoning_given_apart_by_the_backend():
    llm = ScriptedLLM(Completion(text=f"```json\n{PLAN_JSON}\n```", reasoning="separate"))
    assert Planner(llm, default_registry()).plan("g").reasoning == "separate"


def test_invalid_plan_is_repaired_with_the_problems():
    bad = [call(0, "vector_search", ["chunks"], query="x"), call(1, "no_such_tool", ["final_answer"], q="${chunks}")]
    llm = ScriptedLLM("I think I will not answer in JSON.", reply_for(bad), reply_for(GOOD))
    result = Planner(llm, default_registry(), max_attempts=3).plan("g")
    assert result.plan == GOOD and len(result.attempts) == 3
    assert result.attempts[0].problems == ["the reply holds no JSON plan (a JSON array of instructions)"]
    assert "unknown tool 'no_such_tool'" in llm.prompts[2] and "I think I will not answer" in llm.prompts[1]


def test_planning_gives_up_after_its_attempts_and_keeps_them():
    llm = ScriptedLLM("nothing", "still nothing")
    with pytest.raises(PlanningError, match="no valid plan in 2 attempt") as info:
        Planner(llm, default_registry(), max_attempts=2).plan("g")
    assert [a.reply for a in info.value.attempts] == ["nothing", "still nothing"]


def test_planning_with_the_extractive_baseline_names_the_settings():
    from tools.llm_extractive import ExtractiveBackend

    with pytest.raises(PlanningError, match="PLANVM_LLM_BASE_URL"):
        Planner(ExtractiveBackend(), default_registry()).plan("g")


def test_update_keeps_the_executed_prefix():
    registry = default_registry()
    new_tail = [GOOD[0], call(1, "llm_generate", ["final_answer"], prompt="Answer briefly in English.", context="${chunks}")]
    changed_prefix = [call(0, "vector_search", ["chunks"], query="something else"), GOOD[1]]
    llm = ScriptedLLM(reply_for(changed_prefix), reply_for(new_tail))
    result = Planner(llm, registry).update(GOOD, None, 1, "be brief", goal="Latest TiDB version?")
    assert result.plan == new_tail
    assert "seq_no 0: must stay exactly as in the started plan" in result.attempts[0].problems[0]
    assert "be brief" in llm.prompts[0] and "seq_no below 1" in llm.prompts[0]


def test_update_shows_the_variables_of_a_stored_run(tmp_path):
    from vm import RunStore

    store = RunStore(tmp_path / "runs.sqlite")
    registry = make_registry()
    vm = VM(registry, store=store)
    plan = [assign(0, x=41), call(1, "add", "final_answer", a="${x}", b=1)]
    stored = store.get(vm.run(plan, goal="add one").run_id)
    llm = ScriptedLLM(reply_for([assign(0, x=41), call(1, "add", "final_answer", a="${x}", b=2)]))
    result = Planner(llm, registry).update(stored.plan, stored, 1, "add two")
    assert '"x": 41' in llm.prompts[0] and "Goal: add one" in llm.prompts[0]
    assert vm.fork(stored.id, 1, result.plan).final_answer == 43


# --- the template planner --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("goal", "metadata", "language", "fragment"),
    [
        ("What is planvm?", None, "English", "Answer this goal"),
        ("TiDB 的最新版本是什么？", None, "Chinese", "请根据上下文"),
        ("planvmとは何ですか？", None, "Japanese", "コンテキスト"),
        ("What is planvm?", {"response_format": {"Lang": "zh"}}, "Chinese", "请根据上下文"),
        ("Qu'est-ce que planvm ?", {"response_format": {"Lang": "French"}}, "French", "Réponds"),
        ("What is planvm?", {"response_format": {"Lang": "Korean"}}, "Korean", "Write the answer in Korean."),
    ],
)
def test_template_planner(goal, metadata, language, fragment):
    assert goal_language(goal, metadata) == language
    result = TemplatePlanner(default_registry()).plan(goal, metadata)
    assert [s["parameters"]["tool_name"] for s in result.plan] == ["retrieve_knowledge_graph", "vector_search", "llm_generate"]
    assert fragment in result.plan[2]["parameters"]["tool_params"]["prompt"]
    assert result.planner == "template"


def test_template_plan_runs_with_scripted_llm():
    class Memory:
        def search(self, query, top_k):
            return [{"content": "planvm is a plan VM", "source_uri": "m", "score": 1.0}]

        def graph(self, query):
            return {"entities": [], "relationships": []}

    registry = default_registry(Memory())
    result = TemplatePlanner(registry).plan("What is planvm?")
    llm = ScriptedLLM("A VM for plans.")
    assert VM(registry, llm=llm).run(result.program).final_answer == "A VM for plans."
    assert "planvm is a plan VM" in llm.prompts[0]


# --- constrained decoding ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny(tiny_model):
    return tiny_model


def test_constrained_decoding_makes_even_a_random_model_schema_valid(tiny):
    import jsonschema

    from planner.constrained import ConstrainedLocal, decoding_schema
    from planner.planner import plan_schema_for
    from tools.llm_local import LocalChat
    from vm import plan_json_schema

    llm = ConstrainedLocal(LocalChat(str(tiny), max_new_tokens=32), max_think_tokens=16, max_plan_tokens=4000, max_steps=4, max_text=40)
    registry = default_registry()
    attempts = []
    try:
        attempts = Planner(llm, registry, max_attempts=3).plan("What is planvm?").attempts
    except PlanningError as exc:
        attempts = exc.attempts
    assert len(attempts) >= 1
    for attempt in attempts:
        assert attempt.plan is not None, attempt.reply  # always parses
        jsonschema.validate(attempt.plan, plan_json_schema())  # always schema-valid
        for ins in attempt.plan:
            if ins["type"] == "calling":
                assert ins["parameters"]["tool_name"] in registry.names()
    # the bounded decoding schema only accepts plans the plan schema accepts
    jsonschema.validate(GOOD, decoding_schema(plan_schema_for(registry)))


def test_openai_backend_receives_the_plan_schema():
    from fake_openai import FakeChatServer

    from tools.llm_openai import OpenAIChat

    with FakeChatServer() as server:
        server.reply(json.dumps({"plan": GOOD}), reasoning="thought")
        result = Planner(OpenAIChat(model="m", base_url=server.url, max_retries=0), default_registry()).plan("g")
    assert result.plan == GOOD and result.reasoning == "thought"
    schema = server.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["plan"] and schema["properties"]["plan"]["type"] == "array"
    assert schema["$defs"]["CallingParameters"]["properties"]["tool_name"]["enum"] == ["llm_generate", "retrieve_knowledge_graph", "vector_search"]


# --- examples ------------------------------------------------------------------------------------------------


def test_example_scripts():
    assert runpy.run_path(str(EXAMPLES / "custom_tool.py"))["main"]() == "3 nights cost 332.58 EUR."
    answer, reproduced = runpy.run_path(str(EXAMPLES / "embed_vm.py"))["main"]()
    assert answer.startswith("Refunds are paid within 14 days") and reproduced


def test_grammar_accepts_plans_in_the_form_training_writes_them(tiny):
    """The grammar must accept, token for token, the one-line JSON a trained planner learned."""
    import xgrammar as xgr

    from planner.constrained import ConstrainedLocal
    from planner.planner import plan_schema_for
    from tools.llm_local import LocalChat
    from vm import compile_plan

    registry = default_registry()
    compiled = ConstrainedLocal(LocalChat(str(tiny))).grammar(plan_schema_for(registry))
    plan_text = format_completion("r", compile_plan(GOOD, registry).to_data()).split("```json\n")[1].split("\n```")[0]
    assert plan_text.startswith('[{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "vector_search"')
    assert xgr.GrammarMatcher(compiled).accept_string(plan_text)
    reordered = plan_text.replace('{"seq_no": 0, "type": "calling", ', '{"type": "calling", "seq_no": 0, ', 1)
    assert not xgr.GrammarMatcher(compiled).accept_string(reordered)

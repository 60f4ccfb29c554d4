"""Every example plan validates, and runs: with the offline example plugin, or with ScriptedLLM
(a scripted fake LLM) for the plan whose jump condition needs an LLM."""

from __future__ import annotations

import json

import pytest
from conftest import EXAMPLES, ScriptedLLM

from tools import ToolRegistry, default_registry, load_plugin
from vm import VM

PLANS = sorted((EXAMPLES / "plans").glob("*.json"))


def offline_registry() -> ToolRegistry:
    return ToolRegistry(load_plugin(EXAMPLES / "plugins" / "offline_tools.py"))


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.name)
def test_example_plans_are_valid_against_builtins(path):
    assert VM(default_registry()).validate(path) == []


@pytest.mark.parametrize("path", [p for p in PLANS if p.name != "conditional_branch.json"], ids=lambda p: p.name)
def test_example_plans_run_offline(path):
    result = VM(offline_registry()).run(path)
    assert result.ok, result.error
    assert isinstance(result.final_answer, str) and result.final_answer


def test_retrieval_answer_reads_both_retrievals():
    result = VM(offline_registry()).run(EXAMPLES / "plans" / "retrieval_answer.json")
    generate = result.trace[3]
    assert set(generate.inputs["context"]) == {"graph", "documents"}
    assert isinstance(generate.inputs["context"]["documents"], list)  # references keep their type
    assert "final_answer" in result.final_answer


@pytest.mark.parametrize(("verdict", "searches"), [(True, 1), (False, 2)])
def test_conditional_branch(verdict, searches):
    llm = ScriptedLLM(json.dumps({"result": verdict, "explanation": "scripted"}))
    result = VM(offline_registry(), llm=llm).run(EXAMPLES / "plans" / "conditional_branch.json")
    assert result.ok, result.error
    assert [r.tool for r in result.trace].count("vector_search") == searches
    assert "StepLimitExceeded" in result.final_answer or "loop" in result.final_answer

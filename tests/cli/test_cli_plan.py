"""`planvm plan` and `planvm run`: offline with the template planner, and with an LLM served by
FakeChatServer (a local chat-completions server with scripted replies)."""

from __future__ import annotations

import json

from conftest import EXAMPLES
from fake_openai import FakeChatServer
from test_cli import planvm, write

GOOD = [
    {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "vector_search", "tool_params": {"query": "run end", "top_k": 2}, "output_vars": ["chunks"]}},
    {"seq_no": 1, "type": "calling", "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": "When does a run end?", "context": "${chunks}"}, "output_vars": ["final_answer"]}},
]


def test_plan_offline_writes_the_template_plan(tmp_path):
    out = planvm("plan", "When does a planvm run end?", "--out", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("<think>\nTemplate plan (no model)")
    assert "the template planner writes the plan" in out.stderr
    plan = json.loads((tmp_path / "p.json").read_text())
    assert [s["parameters"]["tool_name"] for s in plan] == ["retrieve_knowledge_graph", "vector_search", "llm_generate"]
    assert planvm("validate", str(tmp_path / "p.json")).stdout.strip() == "valid"


def test_run_offline_end_to_end(tmp_path):
    kb = str(tmp_path / "kb")
    assert planvm("index", str(EXAMPLES / "kb"), "--kb", kb, timeout=120).returncode == 0
    out = planvm("run", "When does a planvm run end?", "--kb", kb, "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "completed" and "[" in result["final_answer"] and result["steps"] == 3
    stored = json.loads(planvm("runs", "show", result["run_id"], "--json").stdout)
    assert stored["goal"] == "When does a planvm run end?" and len(stored["plan"]) == 3
    assert planvm("replay", result["run_id"]).returncode == 0


def test_run_with_an_llm_planner(tmp_path, monkeypatch):
    with FakeChatServer() as server:
        server.reply(f"<think>search, then answer</think>\n```json\n{json.dumps(GOOD)}\n```")
        server.reply("A run ends when final_answer is set.")
        monkeypatch.setenv("PLANVM_LLM_BASE_URL", server.url)
        monkeypatch.setenv("PLANVM_LLM_MODEL", "planner")
        kb = str(tmp_path / "kb")
        assert planvm("index", str(EXAMPLES / "kb"), "--kb", kb, "--graph", "cooccurrence", timeout=120).returncode == 0
        out = planvm("run", "When does a run end?", "--kb", kb, "--metadata", '{"response_format": {"Lang": "English"}}', timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "A run ends when final_answer is set."
    assert "plan (llm planner): 2 steps" in out.stderr
    planning_prompt = server.requests[0]["messages"][-1]["content"]
    assert "Goal: When does a run end?" in planning_prompt and "Response language: English" in planning_prompt


def test_planning_failure_keeps_the_attempts(tmp_path, monkeypatch):
    with FakeChatServer() as server:
        for _ in range(3):
            server.reply("I would rather not write JSON.")
        monkeypatch.setenv("PLANVM_LLM_BASE_URL", server.url)
        monkeypatch.setenv("PLANVM_LLM_MODEL", "planner")
        out = planvm("plan", "Anything")
    assert out.returncode == 1
    assert "no valid plan in 3 attempt(s)" in out.stderr
    kept = out.stderr.split("the attempts are in ")[1].strip()
    with open(kept) as f:
        attempts = json.load(f)
    assert [a["reply"] for a in attempts] == ["I would rather not write JSON."] * 3


def test_planning_failure_as_json(monkeypatch):
    with FakeChatServer() as server:
        for _ in range(3):
            server.reply("no plan here")
        monkeypatch.setenv("PLANVM_LLM_BASE_URL", server.url)
        monkeypatch.setenv("PLANVM_LLM_MODEL", "planner")
        out = planvm("run", "Anything", "--json")
    assert out.returncode == 1
    data = json.loads(out.stdout)
    assert data["status"] == "planning_failed" and "no valid plan in 3 attempt(s)" in data["error"] and data["attempts_file"]


def test_bad_goal_input():
    assert planvm("run", "   ").returncode == 2
    out = planvm("plan", "x", "--metadata", "{not json")
    assert out.returncode == 2 and "metadata is not valid JSON" in out.stderr
    out = planvm("plan", "x", "--planner", "llm")
    assert out.returncode == 2 and "PLANVM_LLM_BASE_URL" in out.stderr


def test_fork_with_a_suggestion(tmp_path, monkeypatch):
    with FakeChatServer() as server:
        monkeypatch.setenv("PLANVM_LLM_BASE_URL", server.url)
        monkeypatch.setenv("PLANVM_LLM_MODEL", "planner")
        plan = [{"seq_no": 0, "type": "assign", "parameters": {"x": "one"}}, {"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${x}"}}]
        parent = json.loads(planvm("exec", write(tmp_path, plan), "--json").stdout)["run_id"]
        new = plan[:1] + [{"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${x} and two"}}]
        server.reply(f"<think>add two</think>```json\n{json.dumps(new)}\n```")
        out = planvm("fork", parent, "--from", "1", "--suggestion", "also say two", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["final_answer"] == "one and two"
    assert "also say two" in server.requests[0]["messages"][-1]["content"]

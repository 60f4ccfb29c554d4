"""The loop that improves the planner: judged runs, the plan library, plan search, training rows,
and scoring a served planner.

One fake at the edge plays every model: a scripted OpenAI-compatible server on loopback
(tests/fake_openai.py) whose replies depend on the prompt — planner (plans, with its reasoning
apart, as a structured-output server sends them), answer model and judge. Everything else is the
real code: the CLI commands in process (click's runner), the run store, the knowledge base of
examples/kb, the training loader and `planvm train` on a tiny local model.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import ROOT
from fake_openai import FakeChatServer, chat_reply

from planner.judge import JUDGE_SYSTEM
from planvm.cli.main import build_cli
from vm import RunStore

GOALS = [
    "What does the assign instruction do?",
    "How does a jmp instruction choose where to go?",
    "What are output_vars used for in a calling instruction?",
    "How does a run end?",
    "What are the parts of planvm?",
    "Why use plans instead of free-form agents?",
    "Which commands build the knowledge base?",
    "Which commands run a plan?",
    "What are the default training settings?",
    "How is the planner evaluated?",
]
REJECTED = GOALS[3]  # the judge rejects its first answer; a plan search must fix it
REVISED = "Explain step by step, citing the rules:"


def plan_for(goal: str, revised: bool = False) -> list[dict[str, Any]]:
    prompt = f"{REVISED} {goal}" if revised else f"Answer briefly: {goal}"
    return [
        {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "vector_search", "tool_params": {"query": goal, "top_k": 3},
                                                          "output_vars": ["chunks"]}},
        {"seq_no": 1, "type": "calling", "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": prompt, "context": "${chunks}"},
                                                          "output_vars": ["final_answer"]}},
    ]


class Models:
    """The scripted replies, by prompt. ``judge_prose`` replies of the judge are prose first."""

    def __init__(self) -> None:
        self.judge_prose = 0
        self.planner_prompts: list[str] = []

    def __call__(self, body: dict[str, Any]) -> Any:
        messages = body["messages"]
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        prompt = messages[-1]["content"]
        if system == JUDGE_SYSTEM:
            return self.judge(prompt)
        if "# Tools" in prompt and "Goal: " in prompt:
            self.planner_prompts.append(prompt)
            goal = re.search(r"^Goal: (.*)$", prompt, re.MULTILINE).group(1)
            revised = "A plan for this goal was already started" in prompt
            plan = plan_for(goal, revised)
            text = json.dumps({"plan": plan}) if body.get("response_format") else f"```json\n{json.dumps(plan)}\n```"
            return chat_reply(text, reasoning=f"Look up '{goal}' in the documents, then answer from them.", model="planner-lora",
                              usage=(900, 120))
        answer = "Step by step: the documents say so." if REVISED in prompt else "Briefly: the documents say so."
        return chat_reply(answer, model="answer-7b", usage=(300, 12))

    def judge(self, prompt: str) -> Any:
        if self.judge_prose:
            self.judge_prose -= 1
            return chat_reply("I think this answer is quite good overall.", model="judge-70b")
        answer = prompt.split("# Final answer", 1)[1]
        if "Step by step" in answer:
            verdict = {"score": 9, "accept": True, "suggestion": "", "step_notes": []}
        elif f"Goal\n{REJECTED}" in prompt:
            verdict = {"score": 3, "accept": False, "suggestion": "Explain the rules step by step instead of briefly.",
                       "step_notes": [{"seq_no": 1, "note": "the answer is too brief for the question"}]}
        else:
            verdict = {"score": 8, "accept": True, "suggestion": "", "step_notes": []}
        return chat_reply(json.dumps(verdict), model="judge-70b", usage=(700, 40))


@pytest.fixture
def models(monkeypatch):
    scripted = Models()
    with FakeChatServer() as server:
        server.responder = scripted
        monkeypatch.setenv("PLANVM_LLM_BASE_URL", server.url)
        monkeypatch.setenv("PLANVM_LLM_MODEL", "answer-7b")
        monkeypatch.setenv("PLANVM_PLANNER_MODEL", "planner-lora")
        monkeypatch.setenv("PLANVM_JUDGE_MODEL", "judge-70b")
        scripted.server = server
        yield scripted


def planvm(*args: str) -> Any:
    """Run a planvm command in this process; returns click's result (exit_code, stdout, stderr)."""
    result = CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)
    return result


def run_goals(store: Path, kb: Path, goals: list[str], **options: Any) -> list[Any]:
    from planvm.engine import Engine

    with Engine({"store_path": str(store), "kb_path": str(kb), **options}) as engine:
        return [asyncio.run(engine.run_goal(goal)) for goal in goals]


def test_runs_judged_optimized_kept_exported_trained_and_a_served_planner_scored(models, example_kb, tmp_path):
    store_path = tmp_path / "runs.sqlite"
    store, kb = str(store_path), str(example_kb)
    results = run_goals(store_path, example_kb, GOALS)
    assert all(r.ok for r in results)
    ids = [r.run_id for r in results]
    stored = RunStore(store_path).get(ids[0])
    assert stored.planning["planner"] == "llm" and stored.planning["model"] == "planner-lora"
    assert stored.planning["reasoning"].startswith("Look up") and stored.planning["prompt_version"]
    assert stored.planning["prompt_tokens"] == 900 and len(stored.planning["attempts"]) == 1

    # Judge all ten.
    out = planvm("judge", *ids, "--store", store, "--json")
    assert out.exit_code == 0, out.output
    judged = json.loads(out.stdout)
    assert [judged[i]["accept"] for i in ids] == [goal != REJECTED for goal in GOALS]
    assert judged[ids[3]]["score"] == 3 and judged[ids[3]]["step_notes"][0]["seq_no"] == 1
    assert judged[ids[0]]["model"] == "judge-70b" and judged[ids[0]]["tries"] == 1
    out = planvm("runs", "list", "--store", store, "--min-score", "5", "--json")
    assert sorted(r["id"] for r in json.loads(out.stdout)) == sorted(i for i, g in zip(ids, GOALS) if g != REJECTED)

    # Search forks of the rejected run until the judge accepts one.
    out = planvm("optimize", ids[3], "--store", store, "--kb", kb, "--rounds", "3", "--width", "2", "--json")
    assert out.exit_code == 0, out.output
    search = json.loads(out.stdout)
    assert search["accepted"] and search["rounds"] == 1 and search["best_score"] == 9
    best = search["best"]
    assert [b["run_id"] for b in search["branches"]] == [best] and search["branches"][0]["from_seq"] == 1
    assert search["tokens"]["prompt_tokens"] == 900 + 300 + 700  # re-plan, the new answer, its judgement
    fork = RunStore(store_path).get(best)
    assert fork.parent_id == ids[3] and fork.best_of == ids[3] and fork.planning["suggestion"].startswith("Explain the rules")
    assert [s.tool for s in fork.steps] == ["vector_search", "llm_generate"] and fork.final_answer.startswith("Step by step")
    shown = planvm("runs", "show", ids[3], "--store", store)
    assert best in shown.stdout and "★ best" in shown.stdout and "score 9" in shown.stdout

    # Keep two best plans; export one row per goal; train on them; score the served planner.
    for run_id in (ids[0], best):
        out = planvm("runs", "best", run_id, "--store", store, "--label", "Docs > VM")
        assert out.exit_code == 0 and "kept the plan" in out.stdout, out.output
    listed = json.loads(planvm("library", "list", "--store", store, "--json").stdout)
    assert sorted(e["run_id"] for e in listed) == sorted([ids[0], best]) and listed[0]["label"] == "Docs > VM"
    rows_file = tmp_path / "rows.jsonl"
    out = planvm("runs", "export", "--training", str(rows_file), "--store", store, "--min-score", "7")
    assert out.exit_code == 0 and "wrote 10 training row(s)" in out.stdout, out.output
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    by_goal = {r["goal"]: r for r in rows}
    assert by_goal[REJECTED]["task_id"] == best and REVISED in json.dumps(by_goal[REJECTED]["best_plan"])
    assert set(rows[0]) >= {"task_id", "goal", "metadata", "reasoning", "best_plan", "final_answer"}
    from training.data import load_rows

    assert len(load_rows(rows_file).rows) == 10
    out = planvm("runs", "export", "--training", str(tmp_path / "best.jsonl"), "--store", store, "--best-only")
    assert out.exit_code == 0 and "wrote 2 training row(s)" in out.stdout, out.output

    tiny = tmp_path / "tiny"
    assert planvm("tiny-model", str(tiny), "--data", str(rows_file)).exit_code == 0
    out = planvm("train", "--data", str(rows_file), "--base-model", str(tiny), "--output", str(tmp_path / "adapter"), "--max-steps", "2")
    assert out.exit_code == 0 and "trained 2 steps on 10 rows (0 dropped)" in out.stdout, out.output

    report_file = tmp_path / "eval.json"
    before = len(models.server.requests)
    os.environ["OPENAI_API_KEY"] = "sk-eval-from-the-settings"  # eval's client comes from the settings, key included
    try:
        out = planvm("eval", "--endpoint", models.server.url, "--model", "planner-lora", "--data", str(rows_file), "--out", str(report_file))
    finally:
        del os.environ["OPENAI_API_KEY"]
    assert models.server.headers[-1]["authorization"] == "Bearer sk-eval-from-the-settings"
    assert out.exit_code == 0, out.output
    report = json.loads(report_file.read_text())
    served = report["planner-lora (served)"]["summary"]
    assert served["parsed"] == served["statically_valid"] == served["executable"] == 1.0 and "template" in report
    asked = models.server.requests[before:]
    assert len(asked) == 10 and all(r["response_format"]["type"] == "json_schema" for r in asked)
    assert asked[0]["model"] == "planner-lora"


def test_the_library_reuses_a_kept_plan_for_the_same_goal_and_shows_it_for_similar_ones(models, example_kb, tmp_path):
    store_path = tmp_path / "runs.sqlite"
    first = run_goals(store_path, example_kb, [GOALS[0]])[0]
    assert planvm("runs", "best", first.run_id, "--store", str(store_path)).exit_code == 0

    # The same goal, worded with other case, spacing and punctuation: no planner request at all.
    asked = len(models.planner_prompts)
    again = run_goals(store_path, example_kb, ["  what does the ASSIGN instruction do "])[0]
    assert again.ok and len(models.planner_prompts) == asked
    planning = RunStore(store_path).get(again.run_id).planning
    assert planning["planner"] == "library" and planning["library"]["match"] == "exact"
    assert planning["library"]["run_id"] == first.run_id and planning["prompt_tokens"] == 0

    # A near rewording (embedding similarity above the threshold) is reused too.
    near = run_goals(store_path, example_kb, ["Explain what the assign instruction does."])[0]
    assert RunStore(store_path).get(near.run_id).planning["planner"] == "library"

    # A similar goal: the planner is asked, with the kept plan among its examples (golden text).
    other = run_goals(store_path, example_kb, [GOALS[1]])[0]
    prompt = models.planner_prompts[-1]
    examples = prompt[prompt.index("# Example plans"):prompt.index("# Your answer")]
    golden = ROOT / "tests" / "golden" / "library_examples.md"
    assert examples == golden.read_text(encoding="utf-8")
    assert RunStore(store_path).get(other.run_id).planning["examples"]

    # Another response language, or a tool the kept plan needs and this run may not use: no reuse.
    asked = len(models.planner_prompts)
    from planvm.engine import Engine

    with Engine({"store_path": str(store_path), "kb_path": str(example_kb)}) as engine:
        german = engine.plan(GOALS[0], {"response_format": {"lang": "German"}})
        assert german.planner == "llm" and len(models.planner_prompts) == asked + 1
    with Engine({"store_path": str(store_path), "kb_path": str(example_kb), "allow_tools": ["llm_generate", "retrieve_knowledge_graph"]}) as engine:
        assert engine.plan(GOALS[0]).planner == "llm" and len(models.planner_prompts) == asked + 2
    with Engine({"store_path": str(store_path), "kb_path": str(example_kb), "no_library": True}) as engine:
        assert engine.plan(GOALS[0]).planner == "llm" and "# Example plans" not in models.planner_prompts[-1]

    # Queued goals: a worker plans them, with the library unless it was queued without it.
    with Engine({"store_path": str(store_path), "kb_path": str(example_kb)}) as engine:
        reused = engine.enqueue(GOALS[0])
        planned = engine.enqueue(GOALS[0], use_library=False)
    asked = len(models.planner_prompts)
    import subprocess
    import sys

    worked = subprocess.run([sys.executable, "-m", "planvm", "worker", "--once", "--store", str(store_path), "--kb", str(example_kb)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert worked.returncode == 0, worked.stderr
    assert RunStore(store_path).get(reused).planning["planner"] == "library"
    assert RunStore(store_path).get(planned).planning["planner"] == "llm" and len(models.planner_prompts) == asked + 1

    entry = json.loads(planvm("library", "list", "--store", str(store_path), "--json").stdout)[0]["id"]
    assert planvm("library", "remove", entry[:6], "--store", str(store_path)).exit_code == 0
    assert json.loads(planvm("library", "list", "--store", str(store_path), "--json").stdout) == []
    bad = planvm("library", "remove", "nothing", "--store", str(store_path))
    assert bad.exit_code == 2 and "no best plan 'nothing'" in bad.stderr


def test_bad_input_gets_one_clear_error(models, example_kb, tmp_path):
    store_path = tmp_path / "runs.sqlite"
    store = str(store_path)
    # An empty store (and no store at all): nothing to export, and no file is written.
    out = planvm("runs", "export", "--training", str(tmp_path / "rows.jsonl"), "--store", store)
    assert out.exit_code == 2 and "no run store" in out.stderr
    RunStore(store_path).close()
    out = planvm("runs", "export", "--training", str(tmp_path / "rows.jsonl"), "--store", store)
    assert out.exit_code == 1 and "no completed run of a goal to export" in out.stderr and not (tmp_path / "rows.jsonl").exists()

    # A run with no answer cannot be judged; the others in the same command still are.
    from conftest import call, make_registry

    from vm import VM

    with VM(make_registry(), store=RunStore(store_path)) as vm:
        no_answer = vm.run([call(0, "fail", ["final_answer"], message="the service is down")]).run_id
    done = run_goals(store_path, example_kb, [GOALS[0]])[0].run_id
    out = planvm("judge", no_answer, done, "--store", store)
    assert out.exit_code == 1 and f"run '{no_answer}' has no final answer to judge" in out.stderr and f"{done}: score 8/10" in out.stdout

    # A judge that answers in prose is asked once more, then reported; the command never crashes.
    models.judge_prose = 1
    once = json.loads(planvm("judge", done, "--store", store, "--json").stdout)[done]
    assert once["tries"] == 2 and once["score"] == 8
    models.judge_prose = 2
    out = planvm("judge", done, "--store", store)
    assert out.exit_code == 1 and "could not be read twice" in out.stderr and "no JSON object" in out.stderr

    # A plan search with no budget.
    out = planvm("optimize", done, "--store", store, "--rounds", "0")
    assert out.exit_code == 2 and "--rounds must be at least 1" in out.stderr

    # A run whose plan no longer validates is reported by the export, not written.
    legacy = RunStore(store_path)
    old = legacy.create_run([{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "retired_tool", "tool_params": {},
                                                                             "output_vars": ["final_answer"]}}], goal="An old goal",
                            planning={"planner": "llm", "reasoning": "Once there was a tool for this."})
    legacy.finish(old, "completed", final_answer="old")
    out = planvm("runs", "export", "--training", str(tmp_path / "rows.jsonl"), "--store", store, "--include-unjudged")
    assert out.exit_code == 0 and f"run {old} left out: invalid plan" in out.stderr and "wrote 1 training row(s)" in out.stdout
    out = planvm("runs", "export", "--training", str(tmp_path / "later.jsonl"), "--store", store, "--since", "2999-01-01")
    assert out.exit_code == 1 and "with --since" in out.stderr and not (tmp_path / "later.jsonl").exists()
    out = planvm("runs", "export", "--training", str(tmp_path / "later.jsonl"), "--store", store, "--since", "last week")
    assert out.exit_code == 2 and "YYYY-MM-DD" in out.stderr
    out = planvm("eval", "--endpoint", models.server.url)
    assert out.exit_code == 2 and "--endpoint and --model go together" in out.stderr


def test_without_an_embedding_model_only_exact_goals_are_reused_and_examples_go_by_shared_words(tmp_path):
    from planner.library import PlanLibrary

    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(plan_for(GOALS[0]), goal=GOALS[0], planning={"planner": "llm", "reasoning": "Look it up."})
    store.finish(run_id, "completed", final_answer="It sets variables.")

    def no_model() -> Any:
        raise OSError("no embedding model here")

    library = PlanLibrary(store, no_model)
    entry, replaced = library.keep(store.get(run_id))
    assert replaced == [] and library.keep(store.get(run_id))[1] == [entry]  # the same goal again replaces it
    assert library.lookup("what does the ASSIGN instruction do").match == "exact"
    assert library.lookup("Explain what the assign instruction does.") is None  # near matching needs embeddings
    assert library.lookup(GOALS[0], tools={"llm_generate"}) is None
    assert library.lookup(GOALS[0], {"response_format": {"lang": "German"}}) is None
    assert [e["goal"] for e in library.examples("Which variables does an assign instruction set?")] == [GOALS[0]]
    failed = store.create_run(plan_for(GOALS[1]), goal=GOALS[1])
    store.finish(failed, "failed", error="boom")
    with pytest.raises(ValueError, match="only a completed run's plan"):
        library.keep(store.get(failed))
    planless = store.create_run(plan_for(GOALS[1]))  # a plan file's run: no goal to keep it for
    store.finish(planless, "completed", final_answer="x")
    with pytest.raises(ValueError, match="has no goal"):
        library.keep(store.get(planless))


def test_the_service_judges_a_run(models, example_kb, tmp_path):
    import httpx

    from tests.serve_helpers import Server

    home = tmp_path / "home"
    home.mkdir()
    with Server(home, "--kb", str(example_kb)) as server:  # the scripted models' settings reach it by the environment
        started = httpx.post(f"{server.url}/v1/runs?wait=true", json={"goal": GOALS[2]}, timeout=60).json()
        assert started["status"] == "completed", started
        judged = httpx.post(f"{server.url}/v1/runs/{started['run_id'][:8]}/judge", timeout=60)
        assert judged.status_code == 200 and judged.json()["score"] == 8 and judged.json()["accept"] is True
        assert httpx.get(f"{server.url}/v1/runs/{started['run_id']}").json()["judgement"]["model"] == "judge-70b"
        two_steps = [echo_step(0, "a", "x"), echo_step(1, "${x}", "final_answer")]
        failed = httpx.post(f"{server.url}/v1/runs?wait=true", json={"goal": "Echo twice", "plan": two_steps, "limits": {"max_steps": 1}}, timeout=60).json()
        assert failed["status"] == "failed", failed
        refused = httpx.post(f"{server.url}/v1/runs/{failed['run_id']}/judge", timeout=60)
        assert refused.status_code == 409 and "has no final answer" in refused.json()["error"]["message"]


def echo_step(seq: int, text: str, into: str) -> dict[str, Any]:
    return {"seq_no": seq, "type": "calling", "parameters": {"tool_name": "slow_echo", "tool_params": {"text": text, "seconds": 0},
                                                              "output_vars": [into]}}


def test_an_embedding_model_that_breaks_is_logged_not_swallowed(tmp_path, caplog):
    from planner.library import PlanLibrary

    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(plan_for(GOALS[0]), goal=GOALS[0])
    store.finish(run_id, "completed", final_answer="It sets variables.")

    def broken() -> Any:
        raise RuntimeError("the model file is truncated")

    library = PlanLibrary(store, broken)
    library.keep(store.get(run_id))
    with caplog.at_level("INFO", logger="planvm.library"):
        assert library.lookup("what does the ASSIGN instruction do").match == "exact"  # still works by words
    failed = [r for r in caplog.records if r.levelname == "ERROR"]
    assert failed and "the model file is truncated" in (failed[0].exc_text or "")

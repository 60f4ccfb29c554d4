"""Front ends agree: a goal, a fork with a suggestion and an approval, asked through the command
line, the HTTP service, the MCP server and a worker, make the same stored run and the same JSON.

The front ends are real and in process (click's runner, FastAPI's TestClient, the MCP SDK's
in-process client, the worker class); the planner model is a scripted chat-completions server on
loopback (tests/fake_openai.py), the fake at the edge.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import ROOT
from fake_openai import FakeChatServer

from planvm.cli.main import build_cli
from planvm.engine import Engine

TOOLS = str(ROOT / "tests" / "serve_tools.py")
GOAL = "Greet the reader"
PLAN = [{"seq_no": 0, "type": "assign", "parameters": {"x": "hello"}},
        {"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${x} there"}}]
FORKED = PLAN[:1] + [{"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${x} and welcome"}}]
EMAIL = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "send_email", "tool_params": {"to": "a@b.c", "body": "hi"},
                                                         "output_vars": ["sent"]}},
         {"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${sent}"}}]

# What legitimately differs between two runs of the same thing.
_OWN = {"id", "run_id", "created_at", "updated_at", "lineage", "parent_id", "children", "executor", "lease_expires_at"}


def same(data: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in data.items() if k not in _OWN}
    if isinstance(kept.get("planning"), dict):  # how long planning took is the run's own
        kept["planning"] = {k: v for k, v in kept["planning"].items() if k != "seconds"}
    return kept


def differences(first: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    a, b = same(first), same(other)
    return {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}


@pytest.fixture
def planner_model(monkeypatch):
    """The scripted planner: a fixed plan for the goal, the forked plan for a suggestion."""
    with FakeChatServer() as server:
        def reply(body: dict[str, Any]) -> str:
            prompt = json.dumps(body.get("messages", []))
            plan = FORKED if "also welcome them" in prompt else PLAN
            return f"<think>one greeting</think>```json\n{json.dumps(plan)}\n```"

        server.responder = reply
        monkeypatch.setenv("PLANVM_LLM_BASE_URL", server.url)
        monkeypatch.setenv("PLANVM_LLM_MODEL", "planner")
        yield server


def cli(*args: str) -> dict[str, Any]:
    out = CliRunner().invoke(build_cli(), [*args, "--json"])
    assert out.exit_code in (0, 3), out.output
    return json.loads(out.stdout)


def test_a_goal_a_fork_and_an_approval_agree_on_every_front_end(tmp_path, planner_model):
    from fastapi.testclient import TestClient
    from mcp import Client

    from planvm.mcp.server import build_server
    from planvm.server import create_app
    from planvm.worker import Worker

    store = str(tmp_path / "runs.sqlite")
    options = ["--store", store, "--no-builtins", "--plugin", TOOLS]
    engine = Engine({"store_path": store, "no_builtins": True, "plugins": [TOOLS]})

    # --- a goal --------------------------------------------------------------------------------
    by_cli = cli("run", GOAL, *options)
    with TestClient(create_app(engine)) as http:
        by_http = http.post("/v1/runs?wait=true", json={"goal": GOAL}).json()

        async def over_mcp() -> dict[str, Any]:
            async with Client(build_server(engine)) as client:
                return (await client.call_tool("run_goal", {"goal": GOAL})).structured_content

        by_mcp = asyncio.run(over_mcp())
        queued = engine.enqueue(GOAL)
        asyncio.run(Worker(engine, concurrency=1, poll_seconds=0.05, grace_seconds=1, once=True).serve())
        by_worker = engine.outcome(queued).dump()
        outcomes = [by_cli, by_http, by_mcp, by_worker]
        assert by_cli["final_answer"] == "hello there" and by_cli["status"] == "completed"
        assert all(same(o) == same(by_cli) for o in outcomes), outcomes
        stored = [http.get(f"/v1/runs/{o['run_id']}").json() for o in outcomes]
        planning = stored[0]["planning"]
        assert planning["planner"] == "llm" and planning["reasoning"] == "one greeting" and planning["attempts"] == 1
        assert [differences(stored[0], s) for s in stored] == [{}] * 4

        # --- a fork with a suggestion: the command line and the service keep the same planning --
        parent = by_cli["run_id"]
        fork_cli = cli("fork", parent, "--from", "1", "--suggestion", "also welcome them", *options)
        fork_http = http.post(f"/v1/runs/{parent}/fork?wait=true", json={"from_seq": 1, "suggestion": "also welcome them"}).json()
        assert same(fork_cli) == same(fork_http) and fork_cli["final_answer"] == "hello and welcome"
        forks = [http.get(f"/v1/runs/{f['run_id']}").json() for f in (fork_cli, fork_http)]
        assert same(forks[0]) == same(forks[1]) and forks[0]["planning"]["suggestion"] == "also welcome them"
        assert forks[0]["parent_id"] == forks[1]["parent_id"] == parent

        # --- an approval ------------------------------------------------------------------------
        plan_file = tmp_path / "email.json"
        plan_file.write_text(json.dumps(EMAIL), encoding="utf-8")
        waiting = [cli("exec", str(plan_file), "--approve-tool", "send_email", *options) for _ in range(2)]
        assert all(w["status"] == "waiting" and w["pending"]["tool"] == "send_email" for w in waiting)
        approved_cli = cli("approve", waiting[0]["run_id"], "--seq", "0", *options)
        approved_http = http.post(f"/v1/runs/{waiting[1]['run_id']}/approve?wait=true", json={"seq_no": 0, "approved": True}).json()
        assert approved_cli["status"] == "completed" and same(approved_cli) == same(approved_http)
        shown = [http.get(f"/v1/runs/{w['run_id']}").json() for w in waiting]
        assert same(shown[0]) == same(shown[1])
    engine.close()

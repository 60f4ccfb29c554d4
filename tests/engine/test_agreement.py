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


FAIL_GOAL = "Write a plan that cannot be written"
BAD_PLAN = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "no_such_tool", "tool_params": {}, "output_vars": ["x"]}},
            {"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${x}"}}]
_ASKED = {"metadata"}  # what each front end keeps of how it was asked (a plan file's name, "MCP exec_plan")


def invoke(*args: str) -> tuple[int, dict[str, Any]]:
    out = CliRunner().invoke(build_cli(), [*args, "--json"])
    return out.exit_code, json.loads(out.stdout)


def stored_alike(http: Any, run_ids: list[str], ignore: set[str] = frozenset()) -> list[dict[str, Any]]:
    shown = [http.get(f"/v1/runs/{r}").json() for r in run_ids]
    first = {k: v for k, v in same(shown[0]).items() if k not in ignore}
    assert [{k: v for k, v in same(s).items() if k not in ignore} for s in shown] == [first] * len(shown), shown
    return shown


def test_failures_agree_on_every_front_end(tmp_path, planner_model):
    """A planning failure, a validation failure under allow_tools, a limit hit, a cancel and an
    approval: the same outcome and the same stored run through the command line, HTTP, MCP and a
    worker."""
    from fastapi.testclient import TestClient
    from mcp import Client

    from planvm.mcp.server import build_server
    from planvm.server import create_app
    from planvm.worker import Worker

    planner_model.responder = lambda body: (
        f"```json\n{json.dumps(BAD_PLAN if FAIL_GOAL in json.dumps(body.get('messages', [])) else PLAN)}\n```")
    store = str(tmp_path / "runs.sqlite")
    base = {"store_path": store, "no_builtins": True, "plugins": [TOOLS]}
    options = ["--store", store, "--no-builtins", "--plugin", TOOLS]
    engine = Engine(base)
    allowing = Engine({**base, "allow_tools": ["slow_echo"]})
    limited = Engine({**base, "max_steps": 1})
    approving = Engine({**base, "approve_tools": ["send_email"]})
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(PLAN), encoding="utf-8")
    email_file = tmp_path / "email.json"
    email_file.write_text(json.dumps(EMAIL), encoding="utf-8")

    def work_queue() -> None:
        asyncio.run(Worker(engine, concurrency=1, poll_seconds=0.05, grace_seconds=1, once=True).serve())

    async def mcp(on: Engine, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        async with Client(build_server(on)) as client:
            return (await client.call_tool(tool, arguments)).structured_content

    with TestClient(create_app(engine)) as http, TestClient(create_app(allowing)) as http_allowing:
        # --- a planning failure: kept as a failed run with the planner's attempts, everywhere ---
        code, by_cli = invoke("run", FAIL_GOAL, *options)
        assert code == 1 and by_cli["status"] == "planning_failed"
        by_http = http.post("/v1/runs?wait=true", json={"goal": FAIL_GOAL}).json()
        by_mcp = asyncio.run(mcp(engine, "run_goal", {"goal": FAIL_GOAL}))
        assert by_mcp["status"] == "planning_failed"
        queued = engine.enqueue(FAIL_GOAL)
        work_queue()
        failed = [by_cli["run_id"], by_http["run_id"], by_mcp["run_id"], queued]
        shown = stored_alike(http, failed)
        assert shown[0]["status"] == "failed" and shown[0]["error"].startswith("planning failed:")
        assert shown[0]["planning"]["planner"] == "llm" and shown[0]["planning"]["attempts"] >= 1
        outcomes = [engine.outcome(r).dump() for r in failed]
        assert all(same(o) == same(outcomes[0]) for o in outcomes)

        # --- a plan calling a tool allow_tools leaves out: the same problems, no run ------------
        checked = CliRunner().invoke(build_cli(), ["validate", str(email_file), "--no-builtins", "--plugin", TOOLS, "--allow-tool", "slow_echo"])
        code, cli_lines = checked.exit_code, checked.stdout.splitlines()
        http_check = http_allowing.post("/v1/validate", json={"plan": EMAIL}).json()
        mcp_check = asyncio.run(mcp(allowing, "validate_plan", {"plan": EMAIL}))
        assert code == 1 and http_check == mcp_check == {"valid": False, "problems": cli_lines}
        assert any("send_email" in p for p in cli_lines)
        code, ran_cli = invoke("exec", str(email_file), *options, "--allow-tool", "slow_echo")
        assert code == 2 and ran_cli["status"] == "invalid" and ran_cli["problems"] == cli_lines
        refused = http_allowing.post("/v1/runs", json={"plan": EMAIL})
        assert refused.status_code == 422 and refused.json()["error"]["problems"] == cli_lines
        assert asyncio.run(mcp(allowing, "exec_plan", {"plan": EMAIL}))["problems"] == cli_lines

        # --- a limit hit: the run fails at its step budget ---------------------------------------
        code, hit_cli = invoke("exec", str(plan_file), *options, "--max-steps", "1")
        assert code == 1 and hit_cli["status"] == "failed" and "step budget of 1" in hit_cli["error"]
        hit_http = http.post("/v1/runs?wait=true", json={"plan": PLAN, "limits": {"max_steps": 1}}).json()
        hit_mcp = asyncio.run(mcp(limited, "exec_plan", {"plan": PLAN}))
        hit_queued = engine.enqueue(None, plan=PLAN, limits={"max_steps": 1})
        work_queue()
        hits = [hit_cli, hit_http, hit_mcp, engine.outcome(hit_queued).dump()]
        assert all(same(h) == same(hit_cli) for h in hits), hits
        stored_alike(http, [h["run_id"] for h in hits], _ASKED)

        # --- waiting runs, made everywhere: half cancelled, half approved -------------------------
        def waiting_runs() -> list[str]:
            _code, w_cli = invoke("exec", str(email_file), *options, "--approve-tool", "send_email")
            w_http = http.post("/v1/runs?wait=true", json={"plan": EMAIL, "approve_tools": ["send_email"]}).json()
            w_mcp = asyncio.run(mcp(approving, "exec_plan", {"plan": EMAIL}))
            w_queued = engine.enqueue(None, plan=EMAIL, approve_tools=["send_email"])
            work_queue()
            made = [w_cli, w_http, w_mcp, engine.outcome(w_queued).dump()]
            assert all(w["status"] == "waiting" and same(w) == same(made[0]) for w in made), made
            return [w["run_id"] for w in made]

        to_cancel = waiting_runs()
        said = CliRunner().invoke(build_cli(), ["runs", "cancel", to_cancel[0], "--store", store])
        assert said.exit_code == 0, said.output
        assert http.post(f"/v1/runs/{to_cancel[1]}/cancel").json()["status"] == "cancelled"
        assert asyncio.run(mcp(engine, "cancel_run", {"run_id": to_cancel[2]}))["status"] == "cancelled"
        assert http.post(f"/v1/runs/{to_cancel[3]}/cancel").json()["status"] == "cancelled"  # the worker's: any front end cancels it
        shown = stored_alike(http, to_cancel, _ASKED)
        assert shown[0]["status"] == "cancelled" and shown[0]["error"] == "cancelled on request"

        to_approve = waiting_runs()
        _code, ok_cli = invoke("approve", to_approve[0], "--seq", "0", *options)
        ok_http = http.post(f"/v1/runs/{to_approve[1]}/approve?wait=true", json={"seq_no": 0, "approved": True}).json()
        ok_mcp = asyncio.run(mcp(engine, "approve_run", {"run_id": to_approve[2], "seq_no": 0}))
        _code, ok_worker = invoke("approve", to_approve[3], "--seq", "0", *options)
        approved = [ok_cli, ok_http, ok_mcp, ok_worker]
        assert ok_cli["status"] == "completed" and all(same(a) == same(ok_cli) for a in approved), approved
        stored_alike(http, to_approve, _ASKED)
    for each in (engine, allowing, limited, approving):
        each.close()

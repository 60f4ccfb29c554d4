"""One engine for every front end: one configuration (flags > PLANVM_* > planvm.toml > defaults),
the same operation whichever front end asks, and the same JSON on every surface.

Front ends are driven for real: the command line (in process through click's runner, or as a
subprocess), the HTTP service through FastAPI's TestClient, and the MCP server through the SDK's
in-process client. The only fake is a scripted chat-completions server on loopback
(tests/fake_openai.py) where a planner model is needed.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import planvm
from fake_openai import FakeChatServer

from planvm.cli.main import build_cli
from planvm.engine import Engine, EngineConfig
from vm import RunStore



def assigns(n: int) -> list[dict[str, Any]]:
    plan: list[dict[str, Any]] = [{"seq_no": i, "type": "assign", "parameters": {f"v{i}": i}} for i in range(n - 1)]
    plan.append({"seq_no": n - 1, "type": "assign", "parameters": {"final_answer": "done"}})
    return plan


def write(folder: Path, data: Any, name: str = "plan.json") -> str:
    path = folder / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


# --- one configuration ------------------------------------------------------------------------------


def test_sources_in_order_and_planvm_config_names_each(tmp_path, monkeypatch):
    (tmp_path / "planvm.toml").write_text(
        'store = "sqlite:///from-toml.sqlite"\nconcurrency = 3\n\n[limits]\nmax_steps = 3\nmax_llm_calls = 5\n\n'
        '[planner]\nkind = "template"\nmodel = "m"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PLANVM_MAX_LLM_CALLS", "7")
    monkeypatch.setenv("PLANVM_LLM_API_KEY", "sk-test-abcdefghijklmnop123456")
    config = EngineConfig.load({"max_seconds": 9.0, "concurrency": None})
    assert config.store == "sqlite:///from-toml.sqlite" and config.concurrency == 3 and config.planner_kind == "template"
    assert config.limits.max_steps == 3 and config.limits.max_llm_calls == 7 and config.limits.max_seconds == 9.0
    assert config.planner.model == "m"

    out = CliRunner().invoke(build_cli(), ["config", "--json", "--max-seconds", "9"])
    assert out.exit_code == 0, out.output
    rows = {r["key"]: r for r in json.loads(out.stdout)["settings"]}
    assert rows["limits.max_seconds"] == {"key": "limits.max_seconds", "value": 9.0, "source": "flag"}
    assert rows["limits.max_llm_calls"]["source"] == "PLANVM_MAX_LLM_CALLS" and rows["limits.max_llm_calls"]["value"] == 7
    assert rows["limits.max_steps"]["source"] == "planvm.toml" and rows["store"]["source"] == "planvm.toml"
    assert rows["planner"] == {"key": "planner", "value": "template", "source": "planvm.toml"}
    assert rows["limits.max_tokens"] == {"key": "limits.max_tokens", "value": None, "source": "default"}
    assert rows["llm_api_key"]["value"] == "***" and "abcdefghijklmnop" not in out.stdout


def test_a_bad_setting_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "planvm.toml").write_text("[limits]\nmax_steps = 0\n", encoding="utf-8")
    out = CliRunner().invoke(build_cli(), ["config"])
    assert out.exit_code == 2 and "limits.max_steps" in out.stderr and "greater than or equal to 1" in out.stderr
    (tmp_path / "planvm.toml").write_text("store = \n", encoding="utf-8")
    out = CliRunner().invoke(build_cli(), ["exec", "nothing.json"])
    assert out.exit_code == 2 and "planvm.toml is not valid TOML" in out.stderr


def test_the_toml_store_and_limits_hold_for_exec_run_worker_serve_and_mcp(tmp_path):
    (tmp_path / "planvm.toml").write_text('store = "sqlite:///mine.sqlite"\n\n[limits]\nmax_steps = 3\n', encoding="utf-8")
    plan = write(tmp_path, assigns(5))
    out = planvm("exec", plan, "--json", "--no-builtins", cwd=tmp_path)
    data = json.loads(out.stdout)
    assert out.returncode == 1 and data["status"] == "failed" and "step budget" in data["error"] and data["steps"] == 3
    assert (tmp_path / "mine.sqlite").exists()
    # A queued run, taken by a worker: the worker holds it to the same budget.
    queued = json.loads(planvm("exec", plan, "--queue", "--json", "--no-builtins", cwd=tmp_path).stdout)["run_id"]
    worked = planvm("worker", "--once", "--no-builtins", cwd=tmp_path)
    assert worked.returncode == 0, worked.stderr
    with RunStore(tmp_path / "mine.sqlite") as store:
        run = store.get(queued)
    assert run.status == "failed" and len(run.steps) == 3
    # `serve` and `mcp` build their engine from the same configuration.
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        with Engine({"no_builtins": True}) as engine:
            assert engine.limits.max_steps == 3 and Path(engine.store.file).resolve() == (tmp_path / "mine.sqlite").resolve()
    finally:
        os.chdir(cwd)
    shown = json.loads(planvm("config", "--json", cwd=tmp_path).stdout)["settings"]
    assert {"key": "store", "value": "sqlite:///mine.sqlite", "source": "planvm.toml"} in shown


# --- the divergences ------------------------------------------------------------------------------


def test_a_fork_with_a_suggestion_over_http_keeps_its_planning(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from planvm.server import create_app

    plan = [{"seq_no": 0, "type": "assign", "parameters": {"x": "one"}}, {"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${x}"}}]
    new = plan[:1] + [{"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${x} and two"}}]
    with FakeChatServer() as server:
        monkeypatch.setenv("PLANVM_LLM_BASE_URL", server.url)
        monkeypatch.setenv("PLANVM_LLM_MODEL", "planner")
        engine = Engine({"store_path": str(tmp_path / "runs.sqlite"), "no_builtins": True})
        with TestClient(create_app(engine)) as client:
            parent = client.post("/v1/runs?wait=true", json={"goal": "say one", "plan": plan}).json()["run_id"]
            server.reply(f"<think>add two</think>```json\n{json.dumps(new)}\n```")
            forked = client.post(f"/v1/runs/{parent}/fork?wait=true", json={"from_seq": 1, "suggestion": "also say two"}).json()
            shown = client.get(f"/v1/runs/{forked['run_id']}").json()
    assert forked["final_answer"] == "one and two"
    assert shown["planning"]["suggestion"] == "also say two" and shown["planning"]["planner"] == "llm"
    assert shown["planning"]["reasoning"] == "add two" and shown["planning"]["attempts"] == 1
    assert shown["parent_id"] == parent


def test_exec_checks_the_knowledge_base_before_running(tmp_path):
    retrieval = [
        {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "vector_search", "tool_params": {"query": "q"}, "output_vars": ["c"]}},
        {"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${c}"}},
    ]
    out = planvm("exec", write(tmp_path, retrieval), "--kb", str(tmp_path / "no-kb"), "--store", str(tmp_path / "r.sqlite"))
    assert out.returncode == 2 and "the plan retrieves from the knowledge base" in out.stderr and "planvm index" in out.stderr
    assert not (tmp_path / "r.sqlite").exists() or not RunStore(tmp_path / "r.sqlite").list_runs()


def test_replan_goes_through_the_same_planner_as_plan(tmp_path, monkeypatch):
    """The re-planner is the engine's LLM planner (its constrained wrapper, its library examples), not a bare one."""
    plan = [{"seq_no": 0, "type": "assign", "parameters": {"x": "one"}}, {"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${x}"}}]
    asked: list[str | None] = []
    with FakeChatServer() as server:
        monkeypatch.setenv("PLANVM_LLM_BASE_URL", server.url)
        monkeypatch.setenv("PLANVM_LLM_MODEL", "planner")
        with Engine({"store_path": str(tmp_path / "runs.sqlite"), "no_builtins": True}) as engine:
            parent = engine.vm.run(plan).run_id
            real = engine.planner
            monkeypatch.setattr(engine, "planner", lambda kind=None: asked.append(kind) or real(kind))
            server.reply(f"```json\n{json.dumps(plan)}\n```")
            engine.replan(parent, 1, "keep it")
    assert asked == ["llm"]


# --- one shape on every surface -------------------------------------------------------------------


def test_the_same_run_reads_the_same_on_the_command_line_over_http_and_over_mcp(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient
    from mcp import Client

    from planvm.mcp.server import build_server
    from planvm.server import create_app

    store = str(tmp_path / "runs.sqlite")
    plan = [{"seq_no": 0, "type": "assign", "parameters": {"a": 2, "b": 3}},
            {"seq_no": 1, "type": "assign", "parameters": {"s": "${a} + ${b}"}},
            {"seq_no": 2, "type": "assign", "parameters": {"final_answer": "sum ${s}"}}]
    runner = CliRunner()
    cli = runner.invoke(build_cli(), ["exec", write(tmp_path, plan), "--json", "--no-builtins", "--store", store])
    assert cli.exit_code == 0, cli.output
    by_cli = json.loads(cli.stdout)

    engine = Engine({"store_path": store, "no_builtins": True})
    with TestClient(create_app(engine)) as client:
        by_http = client.post("/v1/runs?wait=true", json={"plan": plan}).json()

        async def over_mcp() -> tuple[dict[str, Any], dict[str, Any]]:
            async with Client(build_server(engine)) as mcp:
                ran = (await mcp.call_tool("exec_plan", {"plan": plan})).structured_content
                read = (await mcp.call_tool("get_run", {"run_id": by_cli["run_id"]})).structured_content
                return ran, read

        by_mcp, read_mcp = asyncio.run(over_mcp())
        read_http = client.get(f"/v1/runs/{by_cli['run_id']}").json()
    for other in (by_http, by_mcp):
        assert {k: v for k, v in other.items() if k != "run_id"} == {k: v for k, v in by_cli.items() if k != "run_id"}
    assert by_cli["final_answer"] == "sum 5" and by_cli["steps"] == 3

    shown = runner.invoke(build_cli(), ["runs", "show", by_cli["run_id"], "--json", "--store", store])
    assert shown.exit_code == 0, shown.output
    read_cli = json.loads(shown.stdout)
    assert read_cli == read_http == read_mcp
    assert read_cli["id"] == by_cli["run_id"] and read_cli["variables"]["s"] == 5 and read_cli["planning"]["planner"] == "given"
    assert "trace" not in read_cli
    with_steps = json.loads(runner.invoke(build_cli(), ["runs", "show", by_cli["run_id"], "--json", "--steps", "--store", store]).stdout)
    assert [s["seq_no"] for s in with_steps["trace"]] == [0, 1, 2]


def test_openapi_documents_every_get(tmp_path):
    from fastapi.testclient import TestClient

    from planvm.server import create_app

    with TestClient(create_app(Engine({"store_path": str(tmp_path / "r.sqlite"), "no_builtins": True}))) as client:
        schema = client.get("/openapi.json").json()
    detail = schema["paths"]["/v1/runs/{run_id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert detail["$ref"].endswith("/RunDetail")
    assert "RunPage" in schema["components"]["schemas"] and "PlanView" in schema["components"]["schemas"]


# --- errors typed end to end ---------------------------------------------------------------------------


def test_a_bug_is_a_500_with_an_error_id_and_no_detail(tmp_path, monkeypatch, caplog):
    from fastapi.testclient import TestClient

    from planvm.server import create_app

    engine = Engine({"store_path": str(tmp_path / "r.sqlite"), "no_builtins": True})

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("internal detail /secret/path")

    monkeypatch.setattr(engine, "get_run", broken)
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        answer = client.get("/v1/runs/abc")
    assert answer.status_code == 500
    body = answer.json()
    assert "error id" in body["error"]["message"] and "/secret/path" not in answer.text
    assert any("internal detail" in (r.exc_text or "") for r in caplog.records)


def test_a_bug_on_the_command_line_is_exit_1_with_an_error_id(tmp_path, monkeypatch):
    from planvm.engine import engine as engine_module

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(engine_module.Engine, "exec_plan", broken)
    out = CliRunner().invoke(build_cli(), ["exec", write(tmp_path, assigns(2)), "--no-builtins"])
    assert out.exit_code == 1
    assert "unexpected KeyError" in out.stderr and "error id" in out.stderr
    log = Path(os.environ["PLANVM_HOME"]) / "errors.log"
    assert "KeyError: 'surprise'" in log.read_text()


def test_bad_input_over_http_is_422_and_over_mcp_a_tool_error(tmp_path):
    from fastapi.testclient import TestClient
    from mcp import Client

    from planvm.mcp.server import build_server
    from planvm.server import create_app

    engine = Engine({"store_path": str(tmp_path / "r.sqlite"), "no_builtins": True})
    with TestClient(create_app(engine)) as client:
        answer = client.get("/v1/runs?cursor=not-a-cursor")
        nothing = client.post("/v1/runs", json={"metadata": {}})
    assert answer.status_code == 422 and "next_cursor" in answer.json()["error"]["message"]
    assert nothing.status_code == 422 and "give a goal to plan, or a plan to run" in str(nothing.json()["error"]["problems"])

    async def over_mcp() -> Any:
        async with Client(build_server(engine)) as mcp:
            return await mcp.call_tool("plan_goal", {"goal": "x", "planner": "nope"})

    result = asyncio.run(over_mcp())
    assert result.is_error and "planner must be auto, llm or template" in result.content[0].text
    engine.close()


@pytest.mark.parametrize("surface", ["cli", "engine"])
def test_max_llm_calls_can_be_set(tmp_path, surface):
    config = EngineConfig.load({"max_llm_calls": 4})
    assert config.limits.max_llm_calls == 4
    if surface == "cli":
        out = CliRunner().invoke(build_cli(), ["config", "--json", "--max-llm-calls", "4"])
        rows = {r["key"]: r for r in json.loads(out.stdout)["settings"]}
        assert rows["limits.max_llm_calls"]["value"] == 4 and rows["limits.max_llm_calls"]["source"] == "flag"
    else:
        with Engine({"store_path": str(tmp_path / "r.sqlite"), "no_builtins": True, "max_llm_calls": 4}) as engine:
            assert engine.vm.limits.max_llm_calls == 4


def test_a_runs_mcp_servers_are_taken_again_unless_the_command_names_tools(tmp_path):
    from types import SimpleNamespace

    from planvm.engine import options_for_run, tool_sources

    sources = tool_sources(EngineConfig.load({"mcp_commands": ("python server.py",), "mcp_urls": ("http://h/mcp",), "mcp_prefix": True}))
    assert sources == {"plugins": [], "mcp_commands": ["python server.py"], "mcp_urls": ["http://h/mcp"], "mcp_prefix": True,
                       "no_builtins": False}
    run = SimpleNamespace(id="r1", tools=sources)
    again = options_for_run({"store_path": "x.sqlite", "plugins": (), "mcp_commands": ()}, run)
    assert again["mcp_commands"] == ["python server.py"] and again["mcp_urls"] == ["http://h/mcp"] and again["mcp_prefix"] is True
    assert again["store_path"] == "x.sqlite"
    named = options_for_run({"mcp_urls": ("http://other/mcp",)}, run)
    assert named == {"mcp_urls": ("http://other/mcp",)}  # the command's own tools win
    assert options_for_run({"kb_path": "kb"}, SimpleNamespace(id="old", tools=None)) == {"kb_path": "kb"}  # a run from before

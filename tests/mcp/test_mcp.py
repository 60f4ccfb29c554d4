"""MCP in both directions, over the real protocol: tests/mcp_server.py (written with the SDK's
server API) gives planvm its tools over stdio and streamable HTTP; `planvm mcp` is driven by the
SDK's own client. No part of the SDK is mocked."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from conftest import EXAMPLES, ROOT, planvm

from tests.serve_helpers import free_port

SERVER = f"{sys.executable} {ROOT / 'tests' / 'mcp_server.py'}"



def planvm_here(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The planvm command in this process (the MCP servers it starts are still processes of their own)."""
    from click.testing import CliRunner

    from planvm.cli.main import build_cli

    result = CliRunner().invoke(build_cli(), list(args), env=env, catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def step(seq: int, tool: str, into: str, **params: object) -> dict[str, object]:
    return {"seq_no": seq, "type": "calling", "parameters": {"tool_name": tool, "tool_params": params, "output_vars": [into]}}


def write_plan(tmp_path, steps: list[dict[str, object]], name: str = "plan.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(steps))
    return str(path)


def test_tools_of_a_stdio_server_run_validate_time_out_and_fail_clearly(tmp_path):
    plan = write_plan(tmp_path, [
        step(0, "add", "total", a=2, b=3),
        step(1, "describe", "record", topic="plans"),
        step(2, "shout", "final_answer", text="sum ${total}, length ${record.length}"),
    ])
    out = planvm("exec", plan, "--mcp", SERVER, "--no-store", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    # An int (the SDK's {"result": …} unwrapped), an object (structured content), text (text content).
    assert result["variables"]["total"] == 5 and result["variables"]["record"] == {"topic": "plans", "length": 5}
    assert result["final_answer"] == "SUM 5, LENGTH 5"

    # Validation knows the servers' parameters: an unknown one and a missing required one.
    bad = write_plan(tmp_path, [step(0, "add", "final_answer", b=1, c=2)], "bad.json")
    out = planvm_here("validate", bad, "--mcp", SERVER)
    assert out.returncode == 1 and "'c'" in out.stdout and "'a'" in out.stdout, out.stdout
    wrong_type = write_plan(tmp_path, [step(0, "add", "final_answer", a="two")], "type.json")
    out = planvm_here("exec", wrong_type, "--mcp", SERVER, "--no-store")
    assert out.returncode == 1 and "tool 'add'" in out.stderr and "'two' is not of type 'integer'" in out.stderr

    # A slow tool is stopped by the run's time limit; a failing one fails its step naming server and tool.
    slow = write_plan(tmp_path, [step(0, "slow", "final_answer", seconds=60)], "slow.json")
    started = time.monotonic()
    out = planvm_here("exec", slow, "--mcp", SERVER, "--no-store", "--max-seconds", "2")
    assert out.returncode == 1 and "wall-clock budget of 2 s exceeded" in out.stderr and time.monotonic() - started < 30, out.stderr
    failing = write_plan(tmp_path, [step(0, "explode", "final_answer", message="the disk is full")], "fail.json")
    out = planvm_here("exec", failing, "--mcp", SERVER, "--no-store")
    assert out.returncode == 1 and "tool 'explode'" in out.stderr and "mcp_server.py" in out.stderr and "the disk is full" in out.stderr


def test_a_server_that_dies_is_started_again_once(tmp_path):
    marker = tmp_path / "crashed"
    plan = write_plan(tmp_path, [step(0, "crash", "first"), step(1, "add", "final_answer", a=40, b=2)])
    config = tmp_path / "planvm.toml"  # a server's environment is the SDK's safe default plus its table's env
    config.write_text(f'[[mcp]]\ncommand = {json.dumps([sys.executable, str(ROOT / "tests" / "mcp_server.py")])}\n'
                      f'env = {{ TESTKIT_CRASH_MARKER = {json.dumps(str(marker))} }}\n')
    out = planvm("exec", plan, "--no-store", "--json", env={"PLANVM_CONFIG": str(config)})
    assert out.returncode == 0, out.stderr
    assert marker.exists() and json.loads(out.stdout)["variables"] == {"first": "still here", "final_answer": 42}

    # A server that dies again after its restart fails the step (and the run), naming server and tool.
    config.write_text(f'[[mcp]]\ncommand = {json.dumps([sys.executable, str(ROOT / "tests" / "mcp_server.py")])}\n'
                      f'env = {{ TESTKIT_CRASH_ALWAYS = "1" }}\n')
    out = planvm_here("exec", plan, "--no-store", env={"PLANVM_CONFIG": str(config)})
    assert out.returncode == 1 and "tool 'crash'" in out.stderr and "again after a restart" in out.stderr, out.stderr


def test_name_clashes_prefixes_config_tables_and_http(tmp_path):
    out = planvm_here("validate", str(EXAMPLES / "plans" / "budget.json"), "--mcp", SERVER, "--mcp", SERVER)
    assert out.returncode == 2 and "offers a tool 'add'" in out.stderr and "already has one" in out.stderr and "--mcp-prefix" in out.stderr
    prefixed = write_plan(tmp_path, [step(0, "testkit_add", "final_answer", a=1, b=1)])
    out = planvm_here("exec", prefixed, "--mcp", SERVER, "--mcp-prefix", "--no-store")
    assert out.returncode == 0 and out.stdout.strip() == "2", out.stderr

    port = free_port()
    http = subprocess.Popen([sys.executable, str(ROOT / "tests" / "mcp_server.py"), "--http", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        config = tmp_path / "planvm.toml"
        config.write_text(f'[[mcp]]\nurl = "http://127.0.0.1:{port}/mcp"\nname = "remote"\nprefix = true\n')
        plan = write_plan(tmp_path, [step(0, "remote_shout", "final_answer", text="over http")], "http.json")
        out = planvm("exec", plan, "--no-store", env={"PLANVM_CONFIG": str(config)})
        assert out.returncode == 0 and out.stdout.strip() == "OVER HTTP", out.stderr
    finally:
        http.terminate()
        http.wait(10)
    out = planvm("exec", plan, "--no-store", env={"PLANVM_CONFIG": str(config)})
    assert out.returncode == 2 and "cannot start or reach the MCP server" in out.stderr

    # The planner's prompt lists an MCP tool with its parameters.
    from planner.prompt import tool_descriptions
    from tools import ToolRegistry
    from tools.mcp_tools import add_mcp_tools, parse_specs

    registry = ToolRegistry()
    add_mcp_tools(registry, parse_specs([SERVER]))
    try:
        described = {t["name"]: t for t in tool_descriptions(registry)}
        assert [p["name"] for p in described["add"]["parameters"]] == ["a", "b"] and described["add"]["parameters"][0]["required"]
        assert "Add two integers" in described["add"]["description"]
    finally:
        registry.close()


def test_planvm_as_an_mcp_server_runs_a_goal_offline_and_reads_the_run(tmp_path, example_kb):
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    store = tmp_path / "runs.sqlite"
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "planvm", "mcp", "--kb", str(example_kb), "--store", str(store)], cwd=str(ROOT),
        env={k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PLANVM_HOME", "PYTHONPATH")},
    )

    async def session() -> dict[str, object]:
        with open(tmp_path / "server.log", "w") as log:  # the server's own messages (pytest's stderr has no file)
            async with Client(stdio_client(params, errlog=log)) as client:
                return await calls(client)

    async def calls(client: Client) -> dict[str, object]:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        ran = await client.call_tool("run_goal", {"goal": "What does the assign instruction do?"})
        run_id = ran.structured_content["run_id"]
        read = await client.call_tool("get_run", {"run_id": run_id[:8], "steps": True})
        replayed = await client.call_tool("replay_run", {"run_id": run_id})
        checked = await client.call_tool("validate_plan", {"plan": [step(0, "nope", "final_answer")]})
        missing = await client.call_tool("get_run", {"run_id": "0000"})
        return {"names": names, "ran": ran, "read": read, "replayed": replayed, "checked": checked, "missing": missing}

    got = asyncio.run(session())
    assert got["names"] == ["approve_run", "cancel_run", "exec_plan", "get_run", "plan_goal", "replay_run", "run_goal", "validate_plan"]
    ran = got["ran"].structured_content
    assert ran["status"] == "completed" and "assign" in ran["final_answer"] and ran["model_used"] is False
    read = got["read"].structured_content
    assert read["id"] == ran["run_id"] and read["planning"]["planner"] == "template" and [t["tool"] for t in read["trace"]] == [
        "retrieve_knowledge_graph", "vector_search", "llm_generate"]
    assert got["replayed"].structured_content["ok"] is True
    assert got["checked"].structured_content["valid"] is False and "unknown tool 'nope'" in got["checked"].structured_content["problems"][0]
    assert got["missing"].is_error and "no run with id '0000'" in got["missing"].content[0].text
    from vm import RunStore

    assert RunStore(store).get(ran["run_id"]).status == "completed"  # the same store as the command line


@pytest.mark.parametrize(("option", "bad", "says"), [
    ("--mcp", "", "--mcp needs a command"),
    ("--mcp", "'unclosed", "cannot split it"),
    ("--mcp-url", "ftp://example.com/mcp", "streamable-HTTP address"),
])
def test_a_bad_mcp_option_is_one_line(tmp_path, option, bad, says):
    out = planvm_here("validate", str(EXAMPLES / "plans" / "budget.json"), option, bad)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(("table", "says"), [
    ('command = "python x.py"\nurl = "http://127.0.0.1:1/mcp"', "exactly one of 'command' (stdio) or 'url'"),
    ('name = "nothing"', "exactly one of 'command' (stdio) or 'url'"),
    ('command = "python x.py"\nretries = 3', "unknown key(s) retries"),
    ('command = "python x.py"\nenv = "A=1"', "'env' must be a table"),
])
def test_a_bad_mcp_table_is_one_line(tmp_path, table, says):
    config = tmp_path / "planvm.toml"
    config.write_text(f"[[mcp]]\n{table}\n")
    out = planvm_here("validate", str(EXAMPLES / "plans" / "budget.json"), env={"PLANVM_CONFIG": str(config)})
    assert out.returncode == 2 and "[[mcp]] table 1" in out.stderr and says in out.stderr, out.stderr


def test_the_example_server_and_plan(tmp_path):
    out = planvm_here("exec", str(EXAMPLES / "mcp" / "define.json"), "--mcp", f"{sys.executable} {EXAMPLES / 'mcp' / 'glossary_server.py'}",
                      "--no-store")
    assert out.returncode == 0 and out.stdout.strip().startswith("output_vars: The variables a calling instruction"), out.stderr


def test_planvm_mcp_over_streamable_http(tmp_path):
    from mcp import Client

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "planvm", "mcp", "--http", str(port), "--store", str(tmp_path / "runs.sqlite")],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)

        async def session() -> tuple[list[str], object]:
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                names = sorted(t.name for t in (await client.list_tools()).tools)
                plan = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "over http"}}]
                return names, await client.call_tool("exec_plan", {"plan": plan})

        names, ran = asyncio.run(session())
        assert "run_goal" in names and ran.structured_content["final_answer"] == "over http"
        assert ran.structured_content["status"] == "completed" and ran.structured_content["run_id"]
    finally:
        server.terminate()
        server.wait(15)


# --- edges: a server that never initializes, a server's own stderr, a retried call, --http beyond loopback ----------------


def test_a_server_that_never_answers_initialize_is_stopped_and_reported_in_one_line(tmp_path):
    marker = f"never-initializes-{os.getpid()}"
    silent = f"{sys.executable} -c \"import sys, time; sys.argv.append('{marker}'); time.sleep(600)\" {marker}"
    plan = write_plan(tmp_path, [step(0, "add", "final_answer", a=1)])
    started = time.monotonic()
    out = planvm("exec", plan, "--mcp", silent, "--no-store", env={"PLANVM_MCP_TIMEOUT": "2", "PLANVM_HOME": str(tmp_path)})
    took = time.monotonic() - started
    assert out.returncode == 2 and "did not answer `initialize` within 2 s" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and took < 30
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert left == [], f"the server process was left running: {left}"


def test_a_servers_stderr_goes_to_its_log_not_the_terminal(tmp_path):
    plan = write_plan(tmp_path, [step(0, "broken", "final_answer")])
    out = planvm("exec", plan, "--mcp", SERVER, "--no-store", env={"PLANVM_HOME": str(tmp_path)})
    log = tmp_path / "mcp-logs" / "mcp_server.log"
    assert out.returncode == 1 and "tool 'broken'" in out.stderr
    assert "Traceback" not in out.stderr and str(log) in out.stderr, out.stderr
    assert log.read_text().count("an internal bug in the testkit server") >= 10


def test_a_call_made_again_after_a_restart_is_noted_on_its_step(tmp_path):
    marker = tmp_path / "crashed"
    # The second call reads the first one's output: it starts after the restart, and needs no note.
    plan = write_plan(tmp_path, [step(0, "crash", "first"), step(1, "shout", "final_answer", text="${first}")])
    config = tmp_path / "planvm.toml"
    config.write_text(f'[[mcp]]\ncommand = {json.dumps([sys.executable, str(ROOT / "tests" / "mcp_server.py")])}\n'
                      f'env = {{ TESTKIT_CRASH_MARKER = {json.dumps(str(marker))} }}\n')
    out = planvm("exec", plan, "--json", "--store", str(tmp_path / "runs.sqlite"),
                 env={"PLANVM_CONFIG": str(config), "PLANVM_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    from vm import RunStore

    run = RunStore(tmp_path / "runs.sqlite").get(json.loads(out.stdout)["run_id"])
    assert len(run.steps[0].notes) == 1 and "started again and the call was made once more" in run.steps[0].notes[0]
    assert run.steps[1].notes == []


def test_planvm_mcp_over_http_beyond_loopback_needs_a_token(tmp_path):
    out = planvm_here("mcp", "--http", str(free_port()), "--host", "0.0.0.0", "--store", str(tmp_path / "runs.sqlite"))
    assert out.returncode == 2 and "--token" in out.stderr and "exec_plan" in out.stderr
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "planvm", "mcp", "--http", str(port), "--token", "mcp-secret-1",
                               "--store", str(tmp_path / "runs.sqlite")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        answer = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/mcp", json={}, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert answer is not None and answer.status_code == 401

        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async def session() -> object:
            import httpx2  # the HTTP client the MCP SDK is built on

            async with httpx2.AsyncClient(headers={"Authorization": "Bearer mcp-secret-1"}) as http:
                async with Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)) as client:
                    plan = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "with a token"}}]
                    return await client.call_tool("exec_plan", {"plan": plan})

        ran = asyncio.run(session())
        assert ran.structured_content["final_answer"] == "with a token"
    finally:
        server.terminate()
        server.wait(15)

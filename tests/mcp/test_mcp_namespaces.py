"""`planvm mcp --namespace NAME` serves one namespace: its tools and its runs, and over HTTP only
with that namespace's mcp_token. Driven by the MCP SDK's own client; nothing is mocked."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
from conftest import ROOT
from test_mcp import planvm_here

from tests.serve_helpers import free_port

TEAM_PLUGIN = '''
from tools import tool

@tool
def {team}_only(text: str) -> str:
    """Mark the text as {team}'s."""
    return "{team}: " + text
'''


def calling(tool: str) -> list[dict[str, object]]:
    return [{"seq_no": 0, "type": "calling",
             "parameters": {"tool_name": tool, "tool_params": {"text": "hi"}, "output_vars": ["final_answer"]}}]


def write_teams(tmp_path) -> dict[str, str]:
    for team in ("alpha", "beta"):
        (tmp_path / f"{team}.py").write_text(TEAM_PLUGIN.format(team=team))
    config = tmp_path / "planvm.toml"
    config.write_text(f'store = {json.dumps(str(tmp_path / "runs.sqlite"))}\nmcp_token = "top-level-token-0001"\n'
                      f'[namespaces.alpha]\nplugins = [{json.dumps(str(tmp_path / "alpha.py"))}]\n'
                      f'[namespaces.beta]\nplugins = [{json.dumps(str(tmp_path / "beta.py"))}]\n')
    return {"PLANVM_CONFIG": str(config)}


def listed(namespace: str, env: dict[str, str]) -> list[str]:
    out = planvm_here("runs", "list", "--namespace", namespace, "--json", env=env)
    assert out.returncode == 0, out.stderr
    return [r["id"] for r in json.loads(out.stdout)]


def test_an_mcp_server_of_one_namespace_runs_its_tools_and_sees_its_runs_only(tmp_path):
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    env = write_teams(tmp_path)
    beta_run = json.loads(planvm_here("--namespace", "beta", "exec", _plan(tmp_path, "beta_only"), "--json", env=env).stdout)["run_id"]
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "planvm", "mcp", "--namespace", "alpha"], cwd=str(ROOT),
        env={**{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PLANVM_HOME", "PYTHONPATH")}, **env},
    )

    async def session() -> dict[str, object]:
        with open(tmp_path / "server.log", "w") as log:
            async with Client(stdio_client(params, errlog=log)) as client:
                return {
                    "ran": await client.call_tool("exec_plan", {"plan": calling("alpha_only")}),
                    "theirs": await client.call_tool("exec_plan", {"plan": calling("beta_only")}),
                    "checked": await client.call_tool("validate_plan", {"plan": calling("beta_only")}),
                    "read": await client.call_tool("get_run", {"run_id": beta_run}),
                    "prefix": await client.call_tool("get_run", {"run_id": beta_run[:6]}),
                    "cancel": await client.call_tool("cancel_run", {"run_id": beta_run}),
                }

    got = asyncio.run(session())
    ran = got["ran"].structured_content
    assert ran["status"] == "completed" and ran["final_answer"] == "alpha: hi"
    assert got["theirs"].structured_content["status"] == "invalid" and "unknown tool 'beta_only'" in got["theirs"].structured_content["problems"][0]
    assert got["checked"].structured_content["valid"] is False
    for name in ("read", "prefix", "cancel"):
        assert got[name].is_error and "no run with id" in got[name].content[0].text, (name, got[name])

    # Runs made through alpha's MCP server are alpha's: beta never lists them.
    assert listed("alpha", env) == [ran["run_id"]]
    assert listed("beta", env) == [beta_run]
    assert json.loads(planvm_here("--namespace", "beta", "runs", "show", beta_run, "--json", env=env).stdout)["status"] == "completed"


def _plan(tmp_path, tool: str) -> str:
    path = tmp_path / f"{tool}.json"
    path.write_text(json.dumps(calling(tool)))
    return str(path)


def test_an_mcp_server_of_one_namespace_over_http_takes_that_namespaces_token_only(tmp_path):
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    env = {**write_teams(tmp_path), "PLANVM_NS_BETA_MCP_TOKEN": "beta-mcp-token-0001"}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "planvm", "mcp", "--namespace", "beta", "--http", str(port)], cwd=ROOT,
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        answers: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                answers["none"] = httpx.post(f"http://127.0.0.1:{port}/mcp", json={}, timeout=1).status_code
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        answers["top"] = httpx.post(f"http://127.0.0.1:{port}/mcp", json={}, timeout=5,
                                    headers={"Authorization": "Bearer top-level-token-0001"}).status_code
        assert answers == {"none": 401, "top": 401}  # the top level's token is the default namespace's

        async def session() -> object:
            import httpx2  # the HTTP client the MCP SDK is built on

            async with httpx2.AsyncClient(headers={"Authorization": "Bearer beta-mcp-token-0001"}) as http:
                async with Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)) as client:
                    return await client.call_tool("exec_plan", {"plan": calling("beta_only")})

        ran = asyncio.run(session()).structured_content
        assert ran["final_answer"] == "beta: hi"
    finally:
        server.terminate()
        _, err = server.communicate(timeout=15)
    assert "namespace beta" in err
    assert listed("beta", env) == [ran["run_id"]] and listed("alpha", env) == []

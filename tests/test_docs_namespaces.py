"""The two-team planvm.toml of docs/service.md (Namespaces), tested as written: the block after
``<!-- two-teams -->`` is loaded through EngineConfig, each namespace's resolved values are
checked, and a plan runs offline in each namespace with its own tools (and its approval)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

from planvm.engine import EngineConfig

BLOCK = re.compile(r"^<!-- two-teams -->\n```toml\n(.*?)^```", re.M | re.S)
TOKENS = {"PLANVM_NS_FINANCE_MCP_TOKEN": "finance-mcp-from-env-01", "PLANVM_NS_SUPPORT_SERVE_TOKEN": "support-serve-from-env-01",
          "PLANVM_NS_SUPPORT_MCP_TOKEN": "support-mcp-from-env-01"}


def two_teams() -> str:
    found = BLOCK.findall((ROOT / "docs" / "service.md").read_text())
    assert len(found) == 1, "docs/service.md has one TOML block marked <!-- two-teams -->"
    return found[0]


@pytest.fixture
def service(tmp_path, monkeypatch):
    """The block as planvm.toml in a folder where its relative paths (examples/…, kb/…) resolve."""
    (tmp_path / "planvm.toml").write_text(two_teams())
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)
    return tmp_path


def test_each_namespace_resolves_as_the_page_says(service):
    top = EngineConfig.load()
    assert top.namespace_names() == ["default", "finance", "support"]
    assert top.store == "postgresql://planvm@db.internal/planvm" and top.serve_token is None and top.plugins == []

    finance = EngineConfig.load({"namespace": "finance"})
    assert finance.plugins == ["examples/custom_tool.py"] and finance.allow_tools == ["convert_currency", "llm_generate"]
    assert (finance.max_active_runs, finance.tokens_per_day) == (10, 2_000_000)
    assert finance.serve_token.get_secret_value() == "finance-serve-token-change-me"
    assert finance.mcp_token.get_secret_value() == TOKENS["PLANVM_NS_FINANCE_MCP_TOKEN"]
    limits = finance.limits
    assert (limits.max_steps, limits.max_seconds, limits.max_llm_calls) == (200, 300, 20)
    planner = finance.for_role("planner")
    assert (planner.llm_base_url, planner.llm_model) == ("http://llm.internal:8000/v1", "planner-finance")
    assert finance.for_role("answer").llm_model == "planner"  # the top level's model
    assert finance.kb_path() == finance.kb_path().parent.parent / "finance" / "kb" and "ns" in finance.kb_path().parts

    support = EngineConfig.load({"namespace": "support"})
    assert support.plugins == ["examples/plugins/tickets.py"] and support.allow_tools == [] and support.approve_tools == ["close_ticket"]
    assert support.kb_path() == Path("kb/support") and (support.max_active_runs, support.tokens_per_day) == (4, 500_000)
    assert (support.limits.max_steps, support.limits.max_seconds, support.limits.max_llm_calls) == (50, 300, None)
    answer = support.for_role("answer")
    assert (answer.llm_base_url, answer.llm_model) == ("http://support-llm.internal:8000/v1", "support-answers")
    assert support.for_role("planner").llm_model == "planner"
    assert support.serve_token.get_secret_value() == TOKENS["PLANVM_NS_SUPPORT_SERVE_TOKEN"]

    assert top.token_namespaces("serve_token") == {"finance-serve-token-change-me": "finance",
                                                    TOKENS["PLANVM_NS_SUPPORT_SERVE_TOKEN"]: "support"}
    assert top.token_namespaces("mcp_token") == {TOKENS["PLANVM_NS_FINANCE_MCP_TOKEN"]: "finance",
                                                  TOKENS["PLANVM_NS_SUPPORT_MCP_TOKEN"]: "support"}
    rows = {r["key"]: r["source"] for r in EngineConfig.explain({"namespace": "finance"})}
    assert rows["planner.model"] == "planvm.toml [namespaces.finance]" and rows["limits.max_steps"] == "planvm.toml"
    assert rows["mcp_token"] == "PLANVM_NS_FINANCE_MCP_TOKEN"


def here(*args: str) -> subprocess.CompletedProcess[str]:
    from click.testing import CliRunner

    from planvm.cli.main import build_cli

    result = CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def write(folder: Path, name: str, plan: list[dict[str, object]]) -> str:
    (folder / name).write_text(json.dumps(plan))
    return str(folder / name)


def test_a_plan_runs_offline_in_each_namespace_with_its_own_tools(service, monkeypatch):
    monkeypatch.setenv("PLANVM_STORE", str(service / "runs.sqlite"))  # (over the file's database server)
    convert = write(service, "convert.json", [
        {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "convert_currency", "tool_params": {"amount": 100, "rate": 0.92},
                                                        "output_vars": ["amount", "currency"]}},
        {"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${amount} ${currency}"}}])
    close = write(service, "close.json", [
        {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "lookup_ticket", "tool_params": {"ticket_id": "T-1002"},
                                                        "output_vars": ["ticket"]}},
        {"seq_no": 1, "type": "calling", "parameters": {"tool_name": "close_ticket", "tool_params": {
            "ticket_id": "${ticket.id}", "note": "Fixed in the next release."}, "output_vars": ["closed"]}},
        {"seq_no": 2, "type": "assign", "parameters": {"final_answer": "${closed.id} is ${closed.status}"}}])

    ran = here("--namespace", "finance", "exec", convert, "--json")
    assert ran.returncode == 0, ran.stderr
    finance_run = json.loads(ran.stdout)
    assert finance_run["final_answer"] == "92.0 EUR"
    refused = here("--namespace", "finance", "exec", close)
    assert refused.returncode == 2 and "tool 'lookup_ticket' is not in this run's allow-list (convert_currency, llm_generate)" in refused.stderr

    waiting = here("--namespace", "support", "exec", close, "--json")
    assert waiting.returncode == 3, waiting.stderr  # close_ticket waits for an approval
    support_run = json.loads(waiting.stdout)["run_id"]
    approved = here("approve", support_run, "--seq", "1", "--namespace", "support", "--json")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["final_answer"] == "T-1002 is closed"
    refused = here("--namespace", "support", "exec", convert)
    assert refused.returncode == 2 and "unknown tool 'convert_currency'" in refused.stderr

    listed = {ns: [r["id"] for r in json.loads(here("--namespace", ns, "runs", "list", "--json").stdout)]
              for ns in ("default", "finance", "support")}
    assert listed == {"default": [], "finance": [finance_run["run_id"]], "support": [support_run]}

"""Namespaces on the command line, tried as an attacker in one namespace would try to reach
another's: its tools, its runs (by id and by prefix, through every command that takes a run), its
plan library and its knowledge base. On SQLite, PostgreSQL and MariaDB stores where the store is
what keeps them apart. Real components only: plugins, stores, the bundled embedding model."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLES, planvm
from databases import BACKENDS, store_url_for

OFFLINE = str(EXAMPLES / "plugins" / "offline_tools.py")

TEAM_PLUGIN = '''
from tools import tool

@tool
def {name}(text: str) -> str:
    """Mark the text as {team}'s."""
    return "{team}: " + text
'''


def here(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The planvm command in this process (each call builds its own engines, as a new process would)."""
    from click.testing import CliRunner

    from planvm.cli.main import build_cli

    result = CliRunner().invoke(build_cli(), list(args), env=env, catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def calling(tool: str) -> list[dict[str, object]]:
    return [{"seq_no": 0, "type": "calling",
             "parameters": {"tool_name": tool, "tool_params": {"text": "hi"}, "output_vars": ["final_answer"]}}]


def write_teams(folder: Path, store: str, extra: str = "") -> Path:
    """planvm.toml with namespaces alpha and beta (each its own plugin tool) and gamma (none)."""
    for team in ("alpha", "beta"):
        (folder / f"{team}_tools.py").write_text(TEAM_PLUGIN.format(name=f"{team}_only", team=team))
        (folder / f"{team}_plan.json").write_text(json.dumps(calling(f"{team}_only")))
    config = folder / "planvm.toml"
    config.write_text(f'store = {json.dumps(store)}\n{extra}\n'
                      f'[namespaces.alpha]\nplugins = [{json.dumps(str(folder / "alpha_tools.py"))}]\n'
                      f'[namespaces.beta]\nplugins = [{json.dumps(str(folder / "beta_tools.py"))}]\n'
                      f'[namespaces.gamma]\n')
    return config


@pytest.fixture(params=BACKENDS)
def teams(request, tmp_path, monkeypatch):
    with store_url_for(request.param, tmp_path) as store:
        monkeypatch.setenv("PLANVM_CONFIG", str(write_teams(tmp_path, store)))
        yield tmp_path


def run_ids(namespace: str) -> list[str]:
    out = here("--namespace", namespace, "runs", "list", "--json")
    assert out.returncode == 0, out.stderr
    return [r["id"] for r in json.loads(out.stdout)]


def test_one_namespace_cannot_call_reach_or_change_anothers_runs_or_tools(teams):
    beta = json.loads(here("--namespace", "beta", "exec", str(teams / "beta_plan.json"), "--json").stdout)
    assert beta["final_answer"] == "beta: hi"
    b_run = beta["run_id"]

    # A plan in alpha naming beta's tool: the tool is unknown there (and beta's tools are not listed).
    out = here("exec", str(teams / "beta_plan.json"), "--namespace", "alpha")
    assert out.returncode == 2 and "unknown tool 'beta_only' (registered: alpha_only," in out.stderr, out.stderr
    assert "beta_only," not in out.stderr.split("registered:")[1]
    assert here("--namespace", "alpha", "validate", str(teams / "beta_plan.json")).returncode == 1
    a_run = json.loads(here("exec", str(teams / "alpha_plan.json"), "--json", "--namespace", "alpha").stdout)["run_id"]
    d_run = json.loads(here("exec", str(teams / "alpha_plan.json"), "--json", "--plugin", str(teams / "alpha_tools.py")).stdout)["run_id"]

    assert run_ids("alpha") == [a_run] and run_ids("beta") == [b_run] and run_ids("gamma") == []
    assert json.loads(here("runs", "list", "--json").stdout)[0]["id"] == d_run and b_run not in run_ids("default")

    # Every command taking a run id, given beta's run (or a prefix of it) from alpha: there is no such run.
    for args in (["runs", "show", b_run], ["runs", "show", b_run[:6]], ["runs", "export", b_run], ["replay", b_run],
                 ["fork", b_run, "--from", "0", "--plan", str(teams / "alpha_plan.json")], ["resume", b_run],
                 ["approve", b_run, "--seq", "0"], ["runs", "best", b_run], ["runs", "cancel", b_run],
                 ["runs", "delete", b_run, "--force"]):
        out = here("--namespace", "alpha", *args)
        assert out.returncode == 2 and "no run with id" in out.stderr and len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)
    shown = json.loads(here("runs", "show", b_run, "--json", "--namespace", "beta").stdout)
    assert shown["status"] == "completed" and shown["final_answer"] == "beta: hi"  # untouched
    assert run_ids("alpha") == [a_run]  # no fork landed in alpha


def test_a_namespaces_plan_library_is_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANVM_CONFIG", str(write_teams(tmp_path, str(tmp_path / "runs.sqlite"))))
    # A goal's run, planned offline, kept as a best plan in alpha.
    goal = here("--namespace", "alpha", "run", "When does a run end?", "--planner", "template", "--plugin", OFFLINE, "--no-builtins",
                "--json")
    assert goal.returncode == 0, goal.stderr
    g_run = json.loads(goal.stdout)["run_id"]
    assert here("--namespace", "alpha", "runs", "best", g_run).returncode == 0
    entries = json.loads(here("--namespace", "alpha", "library", "list", "--json").stdout)
    assert [e["run_id"] for e in entries] == [g_run]
    assert json.loads(here("--namespace", "beta", "library", "list", "--json").stdout) == []
    out = here("--namespace", "beta", "library", "remove", entries[0]["id"])
    assert out.returncode == 2, out.stderr
    assert len(json.loads(here("--namespace", "alpha", "library", "list", "--json").stdout)) == 1
    # Planning the same goal: alpha reuses its kept plan, beta never sees it.
    planned = {team: json.loads(here("--namespace", team, "plan", "When does a run end?", "--json", "--plugin", OFFLINE,
                                     "--no-builtins").stdout) for team in ("alpha", "beta")}
    assert (planned["alpha"].get("library") or {}).get("entry") == entries[0]["id"], planned["alpha"]
    assert not planned["beta"].get("library"), planned["beta"]


def test_a_namespaces_knowledge_base_is_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANVM_CONFIG", str(write_teams(tmp_path, str(tmp_path / "runs.sqlite"))))
    corpora = {"alpha": ("okapi.md", "The okapi lives in the Ituri rainforest and eats leaves of many plants."),
               "beta": ("zebra.md", "Zebra stripes confuse the biting flies that carry diseases to horses.")}
    for team, (name, text) in corpora.items():
        (tmp_path / team).mkdir()
        (tmp_path / team / name).write_text(f"# {name[:-3]}\n\n{text}\n")
        out = here("--namespace", team, "index", str(tmp_path / team))
        assert out.returncode == 0 and "indexed 1 file(s)" in out.stdout, out.stderr

    for team, other in (("alpha", "beta"), ("beta", "alpha")):
        for query in (corpora[other][1], corpora[team][1]):  # asked for the other's words, and for its own
            hits = json.loads(here("--namespace", team, "search", query, "--json", "--top-k", "5").stdout)
            assert hits and {h["source_uri"] for h in hits} == {corpora[team][0]}, (team, query, hits)
    plan = [{"seq_no": 0, "type": "calling", "parameters": {
        "tool_name": "vector_search", "tool_params": {"query": corpora["beta"][1], "top_k": 5}, "output_vars": ["final_answer"]}}]
    ran = json.loads(here("--namespace", "alpha", "exec", str(_write(tmp_path / "search.json", plan)), "--json").stdout)
    assert {h["source_uri"] for h in ran["final_answer"]} == {"okapi.md"}
    # The default namespace's knowledge base is neither.
    out = here("search", "okapi")
    assert out.returncode == 2 and "okapi" not in out.stdout

    # A namespace whose table names a knowledge base uses that folder.
    config = tmp_path / "planvm.toml"
    config.write_text(config.read_text() + f'kb = {json.dumps(str(tmp_path / "shared-kb"))}\n')  # (into [namespaces.gamma])
    assert here("--namespace", "gamma", "index", str(tmp_path / "beta")).returncode == 0
    assert (tmp_path / "shared-kb" / "CURRENT").is_file()


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("args", [
    ["runs", "list"], ["config"], ["exec", "plan.json"], ["run", "a goal"], ["search", "x"], ["library", "list"],
    ["worker", "--once"], ["mcp"], ["schema"], ["runs", "show", "0000"],
])
def test_a_namespace_that_is_not_declared_is_one_line_and_exit_2(tmp_path, monkeypatch, args):
    monkeypatch.setenv("PLANVM_CONFIG", str(write_teams(tmp_path, str(tmp_path / "runs.sqlite"))))
    for given in (["--namespace", "nope", *args], [*args, "--namespace", "nope"]):
        if args[0] == "worker" and given[0] != "--namespace":
            given = [*args, "--namespace", "alpha,nope"]
        out = here(*given)
        assert out.returncode == 2, (given, out.stdout, out.stderr)
        assert out.stderr.count("\n") == 1 and "no namespace 'nope' is declared (namespaces: alpha, beta, default, gamma)" in out.stderr
    out = here(*args, env={"PLANVM_NAMESPACE": "nope"})
    if args[0] != "schema":  # (a command that reads no settings)
        assert out.returncode == 2 and "no namespace 'nope'" in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_two_different_namespaces_in_one_command_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANVM_CONFIG", str(write_teams(tmp_path, str(tmp_path / "runs.sqlite"))))
    out = here("--namespace", "alpha", "runs", "list", "--namespace", "beta")
    assert out.returncode == 2 and "--namespace is given twice (alpha, beta)" in out.stderr
    assert here("--namespace", "alpha", "runs", "list", "--namespace", "alpha").returncode == 0


def test_the_environment_chooses_the_namespace(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANVM_CONFIG", str(write_teams(tmp_path, str(tmp_path / "runs.sqlite"))))
    monkeypatch.setenv("PLANVM_NAMESPACE", "beta")
    ran = json.loads(here("exec", str(tmp_path / "beta_plan.json"), "--json").stdout)
    assert ran["final_answer"] == "beta: hi" and run_ids("beta") == [ran["run_id"]]
    assert here("--namespace", "alpha", "runs", "list", "--json").stdout.strip() == "[]"  # the flag wins


def test_config_shows_a_namespaces_values_and_where_they_came_from(tmp_path, monkeypatch):
    config = write_teams(tmp_path, str(tmp_path / "runs.sqlite"), extra='serve_token = "top-token-0000000000"\nconcurrency = 3\n'
                                                                       'kb = "top-kb"\n[limits]\nmax_steps = 50')
    config.write_text(config.read_text().replace("[namespaces.gamma]\n", 'max_active_runs = 4\nmcp_token = "beta-mcp-000000000"\n'
                                                 '[namespaces.beta.limits]\nmax_steps = 20\n[namespaces.gamma]\n'))
    monkeypatch.setenv("PLANVM_CONFIG", str(config))
    monkeypatch.setenv("PLANVM_NS_BETA_SERVE_TOKEN", "beta-serve-00000000")

    def rows(*args: str) -> dict[str, tuple[object, str]]:
        out = here("config", "--json", *args)
        assert out.returncode == 0, out.stderr
        return {r["key"]: (r["value"], r["source"]) for r in json.loads(out.stdout)["settings"]}

    top = rows()
    assert top["namespace"] == ("default", "default") and top["namespaces"] == (["default", "alpha", "beta", "gamma"], str(config))
    assert top["serve_token"] == ("***", str(config)) and top["kb"][1] == str(config)
    beta = rows("--namespace", "beta", "--concurrency", "5")
    table = f"{config} [namespaces.beta]"
    assert beta["namespace"] == ("beta", "flag") and beta["max_active_runs"] == (4, table)
    assert beta["limits.max_steps"] == (20, table) and beta["mcp_token"] == ("***", table)
    assert beta["serve_token"] == ("***", "PLANVM_NS_BETA_SERVE_TOKEN")
    assert beta["concurrency"] == (5, "flag")  # a flag wins over every file
    assert beta["kb"][0].endswith(str(Path("ns") / "beta" / "kb")) and beta["kb"][0] != top["kb"][0]  # not the top level's
    assert beta["limits.max_llm_calls"][1] == "default"
    alpha = rows("--namespace", "alpha")
    assert alpha["serve_token"] == (None, "default") and alpha["mcp_token"] == (None, "default")  # never the top level's
    assert alpha["plugins"] == ([str(tmp_path / "alpha_tools.py")], f"{config} [namespaces.alpha]")
    assert alpha["limits.max_steps"] == (50, str(config))  # inherited from the top level
    text = here("--namespace", "beta", "config").stdout
    assert "[namespaces.beta]" in text and "beta-mcp" not in text and "beta-serve" not in text  # (tokens masked, tables never printed)


def test_the_default_namespace_never_shows_the_word(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps([{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "ok"}}]))
    for args in (["exec", str(tmp_path / "plan.json")], ["runs", "list"], ["exec", str(tmp_path / "plan.json"), "--queue"],
                 ["worker", "--once"]):
        out = planvm(*args, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "namespace" not in (out.stdout + out.stderr).lower(), (args, out.stdout, out.stderr)


def test_planvm_worker_serves_the_namespaces_it_is_given(tmp_path, monkeypatch):
    config = write_teams(tmp_path, str(tmp_path / "runs.sqlite"))
    env = {"PLANVM_CONFIG": str(config)}
    _write(tmp_path / "gamma_plan.json", [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "g"}}])
    queued = {}
    for team in ("alpha", "beta", "gamma"):
        out = planvm("--namespace", team, "exec", str(tmp_path / f"{team}_plan.json"), "--queue", "--json", env=env)
        assert out.returncode == 0, out.stderr
        queued[team] = json.loads(out.stdout)["run_id"]
    out = planvm("worker", "--namespace", "alpha,beta", "--once", "--poll-seconds", "0.1", env=env)
    assert out.returncode == 0, out.stderr
    assert "(namespaces alpha, beta)" in out.stderr and "stopped after 2 run(s)" in out.stderr
    monkeypatch.setenv("PLANVM_CONFIG", str(config))
    for team, answer in (("alpha", "alpha: hi"), ("beta", "beta: hi")):
        shown = json.loads(here("--namespace", team, "runs", "show", queued[team], "--json").stdout)
        assert (shown["status"], shown["final_answer"]) == ("completed", answer)
    assert json.loads(here("--namespace", "gamma", "runs", "show", queued["gamma"], "--json").stdout)["status"] == "queued"
    out = planvm("worker", "--namespace", "alpha,,beta", "--once", env=env)
    assert out.returncode == 2 and "has a blank name" in out.stderr

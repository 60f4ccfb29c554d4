"""`planvm runs`, `resume`, `replay` and `fork` as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import EXAMPLES, ROOT, assign, call
from test_cli import planvm, write

PLUGIN = str(EXAMPLES / "plugins" / "offline_tools.py")
MULTI = str(EXAMPLES / "plans" / "multi_key_output.json")

SLOW_PLUGIN = '''
import os, time
from pathlib import Path
from tools import tool

@tool
def slow(n: int) -> int:
    """Sleep, log the call, return n + 100."""
    with Path(os.environ["SLOW_LOG"]).open("a") as f:
        f.write(f"{n}\\n")
    time.sleep(float(os.environ.get("SLOW_DELAY", "0")))
    return n + 100
'''


def run_id_of(out: subprocess.CompletedProcess[str]) -> str:
    line = [ln for ln in out.stderr.splitlines() if ln.startswith("run_id: ")][-1]
    return line.split(": ", 1)[1]


def test_exec_records_and_prints_run_id():
    out = planvm("exec", MULTI, "--plugin", PLUGIN, "--no-builtins")
    assert out.returncode == 0
    run_id = run_id_of(out)
    data = json.loads(planvm("exec", MULTI, "--plugin", PLUGIN, "--no-builtins", "--json").stdout)
    assert data["run_id"] and data["run_id"] != run_id
    listing = json.loads(planvm("runs", "list", "--json").stdout)
    assert [r["id"] for r in listing] == [data["run_id"], run_id]
    assert planvm("exec", MULTI, "--plugin", PLUGIN, "--no-builtins", "--no-store", "--json").returncode == 0
    assert len(json.loads(planvm("runs", "list", "--json").stdout)) == 2


def test_runs_show_and_export(tmp_path):
    run_id = run_id_of(planvm("exec", MULTI, "--plugin", PLUGIN, "--no-builtins"))
    shown = planvm("runs", "show", run_id, "--step", "0")
    assert shown.returncode == 0
    assert f"run {run_id}  completed" in shown.stdout and "vector_search" in shown.stdout
    assert "value after idx 0" in shown.stdout and "chunks" in shown.stdout
    data = json.loads(planvm("runs", "show", run_id, "--step", "0", "--json").stdout)
    assert list(data["variables_at_step"]["variables"]) == ["chunks"]
    out = tmp_path / "run.json"
    assert planvm("runs", "export", run_id, "--out", str(out)).returncode == 0
    exported = json.loads(out.read_text())
    assert exported["format"] == "planvm-run/1" and len(exported["steps"]) == 3
    bad_step = planvm("runs", "show", run_id, "--step", "7")
    assert bad_step.returncode == 2 and "has 3 steps (idx 0 to 2)" in bad_step.stderr


def test_replay_offline_and_a_mismatch(tmp_path):
    run_id = run_id_of(planvm("exec", MULTI, "--plugin", PLUGIN, "--no-builtins"))
    out = planvm("replay", run_id)  # no plugin needed: replies come from the record
    assert out.returncode == 0 and "every step reproduced its record" in out.stdout
    exported = json.loads(planvm("runs", "export", run_id).stdout)
    exported["plan"][2]["parameters"]["final_answer"] = "changed: ${summary}"
    path = write(tmp_path, json.dumps(exported), "edited.json")
    out = planvm("replay", path, "--json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert not report["ok"]
    (bad,) = [s for s in report["steps"] if not s["matched"]]
    assert bad["seq_no"] == 3 and bad["differences"][0].startswith("final_answer: ")


def test_replay_live_diff():
    run_id = run_id_of(planvm("exec", MULTI, "--plugin", PLUGIN, "--no-builtins"))
    out = planvm("replay", run_id, "--live", "--plugin", PLUGIN, "--no-builtins")
    assert out.returncode == 0 and "live replay" in out.stdout


def test_resume_a_killed_exec(tmp_path, monkeypatch):
    log = tmp_path / "calls.log"
    monkeypatch.setenv("SLOW_LOG", str(log))
    monkeypatch.setenv("SLOW_DELAY", "0.2")
    plugin = write(tmp_path, SLOW_PLUGIN, "slow.py")
    plan = [call(i, "slow", f"v{i}", n=i) for i in range(6)] + [assign(6, final_answer="${v5}")]
    plan_path = write(tmp_path, plan)
    db = tmp_path / "runs.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "planvm", "exec", plan_path, "--plugin", plugin, "--store", str(db), "--concurrency", "1"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if (sqlite3.connect(db).execute("SELECT count(*) FROM steps").fetchone()[0] or 0) >= 2:
                break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    run = json.loads(planvm("runs", "list", "--store", str(db), "--json").stdout)[0]
    assert run["status"] == "running"
    done = run["steps"]
    monkeypatch.setenv("SLOW_DELAY", "0")
    out = planvm("resume", run["id"], "--plugin", plugin, "--store", str(db), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["final_answer"] == 105 and result["run_id"] == run["id"] and result["steps"] == 7
    calls = [int(c) for c in log.read_text().split()]
    assert calls.count(0) == 1 and calls.count(1) == 1  # completed before the kill: not re-run
    assert sorted(set(calls)) == list(range(6)) and done >= 2


def test_fork_from_the_command_line(tmp_path):
    parent = run_id_of(planvm("exec", MULTI, "--plugin", PLUGIN, "--no-builtins"))
    plan = json.loads((EXAMPLES / "plans" / "multi_key_output.json").read_text())
    plan[2]["parameters"]["final_answer"] = "Only the summary: ${summary}"
    new_plan = write(tmp_path, plan, "new_plan.json")
    out = planvm("fork", parent, "--from", "3", "--plan", new_plan, "--plugin", PLUGIN, "--no-builtins", "--json")
    assert out.returncode == 0, out.stderr
    child = json.loads(out.stdout)
    assert child["final_answer"].startswith("Only the summary: ")
    shown = planvm("runs", "show", child["run_id"])
    assert parent in shown.stdout and "(this run)" in shown.stdout
    shown_parent = planvm("runs", "show", parent)
    assert f"{child['run_id']}  forked at seq_no 3" in shown_parent.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "show", "nope"], "no run with id 'nope'"),
        (["resume", "nope"], "no run with id 'nope'"),
        (["replay", "nope"], "no run with id 'nope'"),
        (["replay", "missing.json"], "no such file"),
        (["fork", "{run}", "--from", "42", "--plan", str(EXAMPLES / "plans" / "multi_key_output.json"), "--plugin", PLUGIN, "--no-builtins"], "never reached seq_no 42"),
        (["resume", "{run}"], "already completed"),
    ],
)
def test_bad_run_requests(args, message):
    run_id = run_id_of(planvm("exec", MULTI, "--plugin", PLUGIN, "--no-builtins"))
    out = planvm(*[a.format(run=run_id) for a in args])
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


def test_corrupt_store_is_a_clear_error(tmp_path):
    bad = tmp_path / "runs.sqlite"
    bad.write_bytes(os.urandom(4096))
    for args in (["runs", "list", "--store", str(bad)], ["exec", str(EXAMPLES / "plans" / "budget.json"), "--store", str(bad)]):
        out = planvm(*args)
        assert out.returncode == 2
        assert "not a usable planvm run store" in out.stderr and "Traceback" not in out.stderr


def test_approve_from_the_command_line(tmp_path):
    tools = str(ROOT / "tests" / "serve_tools.py")
    plan = write(tmp_path, [call(0, "send_email", ["final_answer"], to="ops@example.com", body="hi")])
    waiting = planvm("exec", plan, "--plugin", tools, "--approve-tool", "send_email", "--json")
    assert waiting.returncode == 3, waiting.stderr
    body = json.loads(waiting.stdout)
    assert body["status"] == "waiting" and body["pending"]["tool_params"] == {"to": "ops@example.com", "body": "hi"}
    shown = planvm("runs", "show", body["run_id"])
    assert "planvm approve" in shown.stdout
    bad = planvm("approve", body["run_id"], "--seq", "0", "--params", "[1]", "--plugin", tools)
    assert bad.returncode == 2 and "JSON object" in bad.stderr
    wrong = planvm("approve", body["run_id"], "--seq", "7", "--plugin", tools)
    assert wrong.returncode == 2 and "seq_no 0" in wrong.stderr
    done = planvm("approve", body["run_id"][:8], "--seq", "0", "--params", '{"to": "boss@example.com", "body": "hi"}', "--plugin", tools)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "sent to boss@example.com"
    again = planvm("approve", body["run_id"], "--seq", "0", "--plugin", tools)
    assert again.returncode == 2 and "not waiting" in again.stderr


def test_queue_from_the_command_line_and_a_worker(tmp_path):
    store = str(tmp_path / "queue.sqlite")
    tools = ["--no-builtins", "--plugin", PLUGIN]
    queued_plan = planvm("exec", str(EXAMPLES / "plans" / "budget.json"), "--queue", "--store", store, *tools)
    assert queued_plan.returncode == 0, queued_plan.stderr
    queued_goal = planvm("run", "How do I resume a run?", "--queue", "--store", store, "--json", *tools)
    assert json.loads(queued_goal.stdout)["status"] == "queued"
    bad = planvm("exec", str(EXAMPLES / "plans" / "budget.json"), "--queue", "--no-store", "--store", store, *tools)
    assert bad.returncode == 2 and "--no-store" in bad.stderr
    listed = json.loads(planvm("runs", "list", "--store", store, "--json").stdout)
    assert sorted(r["status"] for r in listed) == ["queued", "queued"]
    worked = planvm("worker", "--store", store, "--once", *tools, timeout=120)
    assert worked.returncode == 0 and "stopped after 2 run(s)" in worked.stderr, worked.stderr
    runs = {r["id"]: r for r in json.loads(planvm("runs", "list", "--store", store, "--json").stdout)}
    assert all(r["status"] == "completed" and r["owner"] is None for r in runs.values())
    goal_run = json.loads(planvm("runs", "show", json.loads(queued_goal.stdout)["run_id"], "--store", store, "--json").stdout)
    assert goal_run["planning"]["planner"] == "template"  # the worker planned it

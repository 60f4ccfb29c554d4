"""`planvm serve` as a real process, driven over HTTP: every endpoint with good and bad input,
live event streams (planvm's SSE and the AI SDK's), approvals, and a kill -9 in the middle of a run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from tests.serve_helpers import ROOT, Server, free_port, slow_plan, wait_status

GOAL = "How do I resume a run?"


@pytest.fixture
def home(example_kb: Path, tmp_path: Path) -> Path:
    """A fresh PLANVM_HOME (its own run store) sharing the session's knowledge base of examples/kb."""
    fresh = tmp_path / "home"
    fresh.mkdir()
    (fresh / "kb").symlink_to(example_kb)
    return fresh


@pytest.fixture
def server(home: Path):
    with Server(home) as running:
        yield running


def events_of(client: httpx.Client, run_id: str, last_id: str | None = None, stop_after: int | None = None) -> list:
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    seen = []
    with connect_sse(client, "GET", f"/v1/runs/{run_id}/events", headers=headers) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for event in source.iter_sse():
            seen.append(event)
            if event.event == "done" or (stop_after is not None and len(seen) >= stop_after):
                break
    return seen


# --- runs end to end -----------------------------------------------------------------------------


def test_a_goal_runs_offline_and_wait_answers_like_exec_json(server, home):
    with server.client() as client:
        answer = client.post("/v1/runs?wait=true", json={"goal": GOAL})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "completed" and "planvm resume" in body["final_answer"]
        assert body["model_used"] is False and body["steps"] == 3
        run = client.get(f"/v1/runs/{body['run_id']}").json()
        assert run["goal"] == GOAL and run["planning"]["planner"] == "template" and run["plan"][0]["type"] == "calling"
        steps = client.get(f"/v1/runs/{body['run_id']}/steps").json()["steps"]
        assert [s["tool"] for s in steps] == ["retrieve_knowledge_graph", "vector_search", "llm_generate"]
        before = client.get(f"/v1/runs/{body['run_id']}/variables", params={"step": 0}).json()["variables"]
        assert "graph" in before and "chunks" not in before
        assert client.get(f"/v1/runs/{body['run_id']}/variables", params={"step": 9}).status_code == 422
    # The same object as `planvm exec --json` of the same plan.
    plan_file = home / "plan.json"
    plan_file.write_text(json.dumps(run["plan"]))
    cli = subprocess.run([sys.executable, "-m", "planvm", "exec", str(plan_file), "--json"], cwd=ROOT, capture_output=True,
                         text=True, env=server.env, timeout=120)
    exec_json = json.loads(cli.stdout)
    assert set(exec_json) == set(body) and exec_json["final_answer"] == body["final_answer"]


def test_background_runs_list_filter_and_page(server):
    with server.client() as client:
        ids = []
        for i in range(5):
            started = client.post("/v1/runs", json={"goal": f"echo {i}", "plan": slow_plan(1, 0.01)})
            assert started.status_code == 202 and started.json()["status"] in {"running", "completed"}
            ids.append(started.json()["run_id"])
        for run_id in ids:
            wait_status(client, run_id, {"completed"})
        first = client.get("/v1/runs", params={"limit": 2}).json()
        assert [r["id"] for r in first["runs"]] == ids[::-1][:2] and first["next_cursor"]
        second = client.get("/v1/runs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
        assert [r["id"] for r in second["runs"]] == ids[::-1][2:4]
        assert [r["id"] for r in client.get("/v1/runs", params={"q": "echo 3"}).json()["runs"]] == [ids[3]]
        assert client.get("/v1/runs", params={"status": "failed"}).json()["runs"] == []
        bad = client.get("/v1/runs", params={"cursor": "not-a-cursor"})
        assert bad.status_code == 422 and "next_cursor" in bad.json()["error"]["message"]


def test_bad_input_gets_one_clear_error(server):
    with server.client() as client:
        invalid = client.post("/v1/runs", json={"goal": "x", "plan": [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "${nope}"}}]})
        assert invalid.status_code == 422
        error = invalid.json()["error"]
        assert error["type"] == "PlanValidationError" and any("nope" in p for p in error["problems"])
        assert client.get("/v1/runs/ffffffffffff").status_code == 404
        assert client.get("/v1/runs/ffffffffffff").json()["error"]["type"] == "RunNotFound"
        assert client.get("/v1/runs/ffffffffffff/events").status_code == 404
        # A request cannot load code: there is no field for a plugin, and unknown tools are refused.
        plugin = client.post("/v1/runs", json={"goal": "x", "plugin": "/tmp/evil.py"})
        assert plugin.status_code == 422 and any("plugin" in p for p in plugin.json()["error"]["problems"])
        unknown = client.post("/v1/runs", json={"goal": "x", "plan": [{"seq_no": 0, "type": "calling", "parameters": {
            "tool_name": "os_system", "tool_params": {}, "output_vars": ["final_answer"]}}]})
        assert unknown.status_code == 422 and "os_system" in json.dumps(unknown.json())
        assert client.post("/v1/runs", json={"goal": "x", "limits": {"max_steps": 10**9}}).status_code == 422
        assert client.post("/v1/runs", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
        assert client.post("/v1/validate", json={"plan": []}).json()["valid"] is False
        valid = client.post("/v1/validate", json={"plan": slow_plan(1)}).json()
        assert valid == {"valid": True, "problems": []}
        tools = {t["name"]: t for t in client.get("/v1/tools").json()["tools"]}
        assert {"slow_echo", "send_email", "llm_generate"} <= set(tools)
        assert tools["slow_echo"]["parameters"]["properties"]["seconds"]["type"] == "number"
        plans = client.post("/v1/plans", json={"goal": GOAL}).json()
        assert plans["planner"] == "template" and plans["plan"][-1]["parameters"]["output_vars"] == ["final_answer"]
        assert client.get("/openapi.json").json()["paths"]["/v1/runs"]["post"]
        assert client.get("/").status_code == 200 and "planvm" in client.get("/").text


def test_a_body_over_the_limit_is_refused_with_413(home):
    with Server(home, "--max-body-bytes", "2048") as server, server.client() as client:
        big = client.post("/v1/runs", json={"goal": "x" * 5000})
        assert big.status_code == 413 and big.json()["error"]["type"] == "RequestTooLarge"

        def chunks():
            yield b'{"goal": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}'

        streamed = client.post("/v1/runs", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413


def test_beyond_loopback_a_token_is_required_everywhere_but_healthz(home):
    refused = subprocess.run(
        [sys.executable, "-m", "planvm", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**Server(home).env},
    )
    assert refused.returncode == 2 and "--token" in refused.stderr
    with Server(home, "--token", "s3cret", host="0.0.0.0") as server:
        with server.client() as client:
            assert client.get("/healthz").status_code == 200
            for path in ("/v1/runs", "/v1/tools", "/openapi.json"):
                assert client.get(path).status_code == 401
                assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            # The page's addresses lead to its sign-in form instead.
            assert client.get("/").status_code == 303 and client.get("/").headers["location"] == "/signin?next=%2F"
            assert client.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            # Bound to every interface with a token: any Host name is answered (the names it is reached by are unknown).
            assert client.get("/v1/runs", headers={"Authorization": "Bearer s3cret", "Host": "planvm.lan:8765"}).status_code == 200
            ok = client.get("/v1/runs", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200


# --- streams -------------------------------------------------------------------------------------


def test_events_of_a_live_run_arrive_in_order_and_reconnect_misses_nothing(server):
    with server.client() as client:
        run_id = client.post("/v1/runs", json={"goal": "slow", "plan": slow_plan(6, 0.25)}).json()["run_id"]
        first = events_of(client, run_id, stop_after=4)
        assert first[0].event == "run" and json.loads(first[0].data)["status"] == "running"
        assert any(e.event == "step" and json.loads(e.data)["phase"] == "started" for e in first)
        rest = events_of(client, run_id, last_id=first[-1].id)
        both = first + rest
        ids = [int(e.id) for e in both]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        finished = [json.loads(e.data) for e in both if e.event == "step" and json.loads(e.data)["phase"] == "finished"]
        assert [s["index"] for s in finished] == list(range(7))
        done = json.loads(both[-1].data)
        assert both[-1].event == "done" and done["status"] == "completed" and done["final_answer"] == "start-1-2-3-4-5"
        # A finished run replays its events, then done.
        replayed = events_of(client, run_id)
        kept = [e.id for e in both if e.event in {"run", "done"} or (e.event == "step" and json.loads(e.data)["phase"] == "finished")]
        assert [e.id for e in replayed] == kept and replayed[-1].event == "done"


def test_tokens_stream_while_the_answer_is_written(server):
    plan = slow_plan(1, 0.5)[:-1] + [
        {"seq_no": 1, "type": "calling", "parameters": {"tool_name": "vector_search", "tool_params": {"query": GOAL}, "output_vars": ["chunks"]}},
        {"seq_no": 2, "type": "calling", "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": GOAL, "context": "${chunks}"},
                                                        "output_vars": ["final_answer"]}},
    ]
    with server.client() as client:
        run_id = client.post("/v1/runs", json={"goal": GOAL, "plan": plan}).json()["run_id"]
        events = events_of(client, run_id)
        tokens = [json.loads(e.data) for e in events if e.event == "token"]
        assert len(tokens) >= 2 and all(t["seq_no"] == 2 for t in tokens)
        done = json.loads(events[-1].data)
        assert "".join(t["delta"] for t in tokens) == done["final_answer"]
        assert events.index(next(e for e in events if e.event == "token")) < len(events) - 1


@pytest.fixture(scope="module")
def ai_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The npm package `ai` (the AI SDK), installed from the registry for this module."""
    npm = shutil.which("npm")
    assert npm, "npm is needed for the AI SDK stream test"
    folder = tmp_path_factory.mktemp("ai_sdk")
    subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", "ai@7"], cwd=folder, check=True, timeout=300,
                   capture_output=True)
    return folder / "node_modules"


def test_the_ai_sdk_reads_the_ui_message_stream(server, ai_sdk):
    with server.client() as client:
        body = client.post("/v1/runs?wait=true", json={"goal": GOAL}).json()
    out = subprocess.run(
        ["node", str(ROOT / "tests" / "js" / "read_ui_stream.mjs"), f"{server.url}/v1/runs/{body['run_id']}/events?format=ai-sdk"],
        capture_output=True, text=True, timeout=120, env={"AI_SDK_DIR": str(ai_sdk.parent), "PATH": "/usr/bin:/usr/local/bin"},
    )
    assert out.returncode == 0, out.stderr
    message = json.loads(out.stdout)
    tools = [p for p in message["parts"] if p["type"].startswith("tool-")]
    assert [p["type"] for p in tools] == ["tool-retrieve_knowledge_graph", "tool-vector_search", "tool-llm_generate"]
    assert all(p["state"] == "output-available" for p in tools)
    texts = [p["text"] for p in message["parts"] if p["type"] == "text"]
    assert texts == [body["final_answer"]]


# --- approvals, cancel, restarts ------------------------------------------------------------------


def approval_plan() -> list[dict]:
    return [
        {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "slow_echo", "tool_params": {"text": "draft", "seconds": 0.01}, "output_vars": ["d"]}},
        {"seq_no": 1, "type": "calling", "parameters": {"tool_name": "send_email", "tool_params": {"to": "ops@example.com", "body": "${d}"},
                                                        "output_vars": ["final_answer"]}},
    ]


def test_a_call_that_needs_approval_waits_survives_a_restart_and_runs_with_edited_parameters(home):
    server = Server(home, "--approve-tool", "send_email").start()
    try:
        with server.client() as client:
            run_id = client.post("/v1/runs", json={"goal": "mail", "plan": approval_plan()}).json()["run_id"]
            run = wait_status(client, run_id, {"waiting"})
            assert run["pending"]["tool"] == "send_email" and run["pending"]["tool_params"]["body"] == "draft"
            assert not any(c.startswith("send_email") for c in server.calls())
        server.stop()
        server = Server(home, "--approve-tool", "send_email").start()
        with server.client() as client:
            assert client.get(f"/v1/runs/{run_id}").json()["status"] == "waiting"
            wrong = client.post(f"/v1/runs/{run_id}/approve", json={"seq_no": 0, "approved": True})
            assert wrong.status_code == 409 and "seq_no 1" in wrong.json()["error"]["message"]
            done = client.post(f"/v1/runs/{run_id}/approve?wait=true", json={"seq_no": 1, "approved": True,
                                                                               "tool_params": {"to": "boss@example.com", "body": "final"}})
            assert done.json()["status"] == "completed" and done.json()["final_answer"] == "sent to boss@example.com"
            assert server.calls().count("send_email boss@example.com final") == 1
            assert server.calls().count("slow_echo draft") == 1
            # Rejecting (a per-request approval tool this time) fails the step with ToolRejected.
            other = client.post("/v1/runs", json={"goal": "mail", "plan": approval_plan(), "approve_tools": ["slow_echo"]}).json()["run_id"]
            wait_status(client, other, {"waiting"})
            rejected = client.post(f"/v1/runs/{other}/approve?wait=true", json={"seq_no": 0, "approved": False, "reason": "no"}).json()
            assert rejected["status"] == "failed" and "rejected" in rejected["error"]
    finally:
        server.stop()


def test_cancel_stops_a_running_run(server):
    with server.client() as client:
        run_id = client.post("/v1/runs", json={"goal": "slow", "plan": slow_plan(20, 0.2)}).json()["run_id"]
        time.sleep(0.5)
        assert client.post(f"/v1/runs/{run_id}/cancel").json()["status"] == "cancelled"
        events = events_of(client, run_id)
        assert events[-1].event == "done" and json.loads(events[-1].data)["status"] == "cancelled"
        assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 409


def test_kill_9_mid_run_then_resume_over_http_repeats_no_step(home):
    plan = slow_plan(8, 0.3)
    server = Server(home).start()
    try:
        with server.client() as client:
            reference = client.post("/v1/runs?wait=true", json={"goal": "ref", "plan": plan}).json()
            (home / "calls.log").unlink()
            run_id = client.post("/v1/runs", json={"goal": "killed", "plan": plan}).json()["run_id"]
            deadline = time.monotonic() + 30
            while len(client.get(f"/v1/runs/{run_id}/steps").json()["steps"]) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        server.kill()
        server = Server(home).start()
        with server.client() as client:
            interrupted = client.get(f"/v1/runs/{run_id}").json()
            assert interrupted["status"] == "interrupted"
            completed_before = interrupted["steps"]
            assert completed_before >= 3
            resumed = client.post(f"/v1/runs/{run_id}/resume?wait=true").json()
            assert resumed["status"] == "completed" and resumed["final_answer"] == reference["final_answer"]
            calls = server.calls()
            expected = [f"slow_echo {'-'.join(['start', *map(str, range(1, i + 1))])}" for i in range(8)]
            for i, call in enumerate(expected):
                # A step completed before the kill ran once; the one the kill cut off may have started twice.
                assert calls.count(call) == (1 if i != completed_before else calls.count(call)), f"{call} ran {calls.count(call)} times"
                assert calls.count(call) >= 1
            steps = client.get(f"/v1/runs/{run_id}/steps").json()["steps"]
            assert [s["seq_no"] for s in steps] == list(range(9))
            replay = client.post(f"/v1/runs/{run_id}/replay").json()
            assert replay["ok"] is True
    finally:
        server.stop()


def test_fork_from_a_step_with_an_edited_plan(server):
    with server.client() as client:
        parent = client.post("/v1/runs?wait=true", json={"goal": "fork me", "plan": slow_plan(3, 0.01)}).json()
        plan = slow_plan(3, 0.01)
        plan[2]["parameters"]["tool_params"]["text"] = "changed"
        child = client.post(f"/v1/runs/{parent['run_id']}/fork?wait=true", json={"from_seq": 2, "plan": plan}).json()
        assert child["status"] == "completed" and child["final_answer"] == "changed"
        run = client.get(f"/v1/runs/{child['run_id']}").json()
        assert run["parent_id"] == parent["run_id"] and run["fork_seq"] == 2
        assert client.get(f"/v1/runs/{parent['run_id']}").json()["children"][0]["id"] == child["run_id"]
        bad = client.post(f"/v1/runs/{parent['run_id']}/fork", json={"from_seq": 2})
        assert bad.status_code == 422
        changed_prefix = slow_plan(3, 0.01)
        changed_prefix[0]["parameters"]["tool_params"]["text"] = "other"
        conflict = client.post(f"/v1/runs/{parent['run_id']}/fork", json={"from_seq": 2, "plan": changed_prefix})
        assert conflict.status_code == 409 and "seq_no 0" in conflict.json()["error"]["message"]


def test_schemathesis_finds_no_server_error(server):
    out = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "12", "--request-timeout", "60"],  # a run with ?wait=true answers when it ends: seconds on a loaded 2-core machine
        capture_output=True, text=True, timeout=600, cwd=server.home,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    import re

    counts = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
    assert counts and int(counts.group(1)) == int(counts.group(2)) >= 100, out.stdout[-1500:]
    print(f"schemathesis: {counts.group(1)} requests generated, none answered with a 5xx")


def test_a_port_already_taken_is_one_line_naming_it_and_exit_2(tmp_path):
    """`planvm serve` on a port another process listens on says so in one line, before claiming to
    serve, and exits 2 (bad input), not 3 (which means a run waits for an approval)."""
    import socket

    from conftest import planvm

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        out = planvm("serve", "--port", str(port), "--store", str(tmp_path / "runs.sqlite"), "--no-builtins", timeout=60)
    finally:
        taken.close()
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0] and "already taken" in lines[0], out.stderr
    assert "serving on" not in out.stderr


def test_an_idle_server_sleeps_and_still_stops_at_once_on_a_signal(home):
    """An idle `planvm serve` wakes about once a second (uvicorn's own loop wakes ten times a
    second, and each wake-up after an idle wait costs CPU: bench/serve.py --floor), and SIGTERM
    still stops it."""
    import os
    import signal

    def wakes(pid: int) -> int:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    total += int(line.split()[1])
        return total

    with Server(home) as running:
        time.sleep(1)
        before = wakes(running.proc.pid)
        time.sleep(4)
        woke = wakes(running.proc.pid) - before
        assert woke <= 12, f"{woke} wake-ups in 4 s of idleness"  # uvicorn's own: 40 or more
        began = time.monotonic()
        running.proc.send_signal(signal.SIGTERM)
        running.proc.wait(10)
        stopped = time.monotonic() - began
    assert stopped < 5, stopped

"""Namespaces over HTTP, tried as an attacker would (in process, through FastAPI's TestClient, on
SQLite, PostgreSQL and MariaDB): two teams, each with its own token; team b has a tool of its own.
Team a's token gets 404 for every route and every id of team b's, the same answer as for what
does not exist; a plan of a cannot call b's tool; a fork never crosses; a quota of 10 runs at
once holds against 64 clients posting at once."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from planvm.engine import Engine
from planvm.server import create_app
from tests.databases import BACKENDS, store_url_for
from tests.serve_helpers import TOOLS, slow_plan, wait_status
from vm import RunStore
from vm.store.quotas import ACTIVE

A_TOKEN = "token-of-team-a-000000001"
B_TOKEN = "token-of-team-b-000000002"
A = {"Authorization": f"Bearer {A_TOKEN}"}
B = {"Authorization": f"Bearer {B_TOKEN}"}
QUOTA = 10

B_TOOLS = '''
from tools import tool


@tool
def b_secret(text: str) -> str:
    """Team b's own tool.

    Args:
        text: What to return.
    """
    return "b:" + text
'''

SETTINGS = '''
no_builtins = true
plugins = [{tools!r}]
approve_tools = ["send_email"]

[namespaces.a]
serve_token = "{a}"
max_active_runs = {quota}

[namespaces.b]
serve_token = "{b}"
plugins = [{tools!r}, {b_tools!r}]
'''

ANSWER = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "done"}}]
MAIL = [
    {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "slow_echo", "tool_params": {"text": "x", "seconds": 0.01}, "output_vars": ["d"]}},
    {"seq_no": 1, "type": "calling", "parameters": {"tool_name": "send_email", "tool_params": {"to": "ops@example.com", "body": "${d}"},
                                                    "output_vars": ["final_answer"]}},
]
B_PLAN = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "b_secret", "tool_params": {"text": "hi"}, "output_vars": ["final_answer"]}}]


def teams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str, *, quota: int = QUOTA) -> Engine:
    """The engine of a server whose settings declare teams a and b."""
    b_tools = tmp_path / "b_tools.py"
    b_tools.write_text(B_TOOLS)
    settings = tmp_path / "planvm.toml"
    settings.write_text(SETTINGS.format(tools=TOOLS, b_tools=str(b_tools), a=A_TOKEN, b=B_TOKEN, quota=quota))
    monkeypatch.setenv("PLANVM_CONFIG", str(settings))
    monkeypatch.setenv("PLANVM_TEST_CALL_LOG", str(tmp_path / "calls.log"))
    return Engine({"store_path": store})


def served(engine: Engine, **kwargs: Any) -> TestClient:
    return TestClient(create_app(engine, tokens=engine.config.token_namespaces(), **kwargs))


def unknown_like(run_id: str) -> str:
    """An id shaped like ``run_id`` that no run has."""
    return "".join("0" if c != "-" else c for c in run_id)


def answered(response: Any, *secrets: str) -> tuple[int, str]:
    """What a client learns from a response: its status and body, with the names it asked for blanked."""
    text = response.text
    for secret in secrets:
        text = text.replace(secret, "<asked>")
    return response.status_code, text


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_token_of_one_namespace_finds_nothing_of_another(backend, tmp_path, monkeypatch):
    with store_url_for(backend, tmp_path) as store:
        engine = teams(tmp_path, monkeypatch, store)
        with served(engine) as client:
            # Team b's runs: one waiting for approval, one completed (its plan kept in b's library), a fork of it.
            waiting = client.post("/v1/runs", json={"goal": "mail the team", "plan": MAIL}, headers=B).json()["run_id"]
            wait_status(client_as(client, B), waiting, {"waiting"})
            done = client.post("/v1/runs?wait=true", json={"goal": "b's secret goal", "plan": B_PLAN}, headers=B).json()
            assert done["status"] == "completed" and done["final_answer"] == "b:hi"
            entry, _ = engine.in_namespace("b").store.library_put(  # (as `planvm runs keep` does, without an embedding)
                {"run_id": done["run_id"], "goal": "b's secret goal", "goal_key": "b's secret goal", "plan": B_PLAN})
            forked = client.post(f"/v1/runs/{done['run_id']}/fork?wait=true", json={"from_seq": 0, "plan": B_PLAN}, headers=B)
            assert forked.status_code == 200 and forked.json()["status"] == "completed", forked.text
            mine = client.post("/v1/runs?wait=true", json={"goal": "a's goal", "plan": ANSWER}, headers=A).json()["run_id"]

            for b_run in (waiting, done["run_id"], forked.json()["run_id"]):
                for asked in (b_run, b_run[:8]):
                    nothing = unknown_like(asked)
                    for method, path, body in (
                        ("GET", "/v1/runs/{}", None), ("GET", "/v1/runs/{}?steps=true", None), ("GET", "/v1/runs/{}/steps", None),
                        ("GET", "/v1/runs/{}/variables", None), ("GET", "/v1/runs/{}/events", None),
                        ("POST", "/v1/runs/{}/fork", {"from_seq": 0, "plan": ANSWER}), ("POST", "/v1/runs/{}/resume", None),
                        ("POST", "/v1/runs/{}/approve", {"seq_no": 1, "approved": True}), ("POST", "/v1/runs/{}/cancel", None),
                        ("POST", "/v1/runs/{}/replay", None), ("POST", "/v1/runs/{}/judge", None),
                    ):
                        theirs = client.request(method, path.format(asked), json=body, headers=A)
                        assert theirs.status_code == 404, (method, path, theirs.text)
                        assert answered(theirs, asked) == answered(client.request(method, path.format(nothing), json=body, headers=A), nothing)
            # Not listed, not found by its goal, not in a's library; removing b's entry is removing nothing.
            listed = client.get("/v1/runs", headers=A).json()["runs"]
            assert [r["id"] for r in listed] == [mine]
            assert client.get("/v1/runs", params={"q": "secret"}, headers=A).json()["runs"] == []
            assert client.get("/v1/library", headers=A).json() == {"entries": []}
            assert answered(client.delete(f"/v1/library/{entry}", headers=A), entry) == answered(
                client.delete(f"/v1/library/{unknown_like(entry)}", headers=A), unknown_like(entry))
            # b's own routes under b's name: 404 for a's token, just as a namespace that does not exist.
            for path in ("/runs", f"/runs/{waiting}", f"/runs/{waiting}/events", "/library", "/tools", "/info"):
                theirs = client.get(f"/v1/ns/b{path}", headers=A)
                assert theirs.status_code == 404 and answered(theirs, "'b'") == answered(client.get(f"/v1/ns/zz{path}", headers=A), "'zz'")
                by_header = client.get(f"/v1/{path.lstrip('/')}", headers={**A, "X-PlanVM-Namespace": "b"})
                assert by_header.status_code == 404 and by_header.json() == theirs.json()
            assert client.post(f"/v1/ns/b/runs/{waiting}/cancel", headers=A).status_code == 404
            assert client.post(f"/v1/ns/b/runs/{waiting}/approve", json={"seq_no": 1, "approved": True}, headers=A).status_code == 404
            assert client.post("/v1/ns/b/runs", json={"plan": ANSWER}, headers=A).status_code == 404

            # Nothing of b's changed; b reaches all of it, under its plain routes and its own name.
            assert client.get(f"/v1/runs/{waiting}", headers=B).json()["status"] == "waiting"
            assert [c["id"] for c in client.get(f"/v1/ns/b/runs/{done['run_id']}", headers=B).json()["children"]] == [forked.json()["run_id"]]
            assert [e["id"] for e in client.get("/v1/library", headers=B).json()["entries"]] == [entry]
            assert client.get(f"/v1/runs/{mine}", headers=B).status_code == 404
            approved = client.post(f"/v1/runs/{waiting}/approve?wait=true", json={"seq_no": 1, "approved": True}, headers=B)
            assert approved.json()["status"] == "completed", approved.text
            # A request with no token, or another server's, is refused before any namespace is looked at.
            assert client.get("/v1/ns/b/runs").status_code == 401
            assert client.get("/v1/runs", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
        engine.close()


def client_as(client: TestClient, headers: dict[str, str]) -> Any:
    """``client`` sending ``headers`` with every GET (for the helpers that take a client)."""

    class As:
        def get(self, path: str, **kwargs: Any) -> Any:
            return client.get(path, headers=headers, **kwargs)

    return As()


@pytest.mark.parametrize("backend", BACKENDS)
def test_tools_plans_and_forks_stay_in_their_namespace(backend, tmp_path, monkeypatch):
    with store_url_for(backend, tmp_path) as store:
        engine = teams(tmp_path, monkeypatch, store)
        with served(engine) as client:
            assert "b_secret" in {t["name"] for t in client.get("/v1/tools", headers=B).json()["tools"]}
            assert "b_secret" not in {t["name"] for t in client.get("/v1/tools", headers=A).json()["tools"]}
            # A plan of a's naming b's tool: the tool is unknown, to validation and to a run.
            checked = client.post("/v1/validate", json={"plan": B_PLAN}, headers=A).json()
            assert checked["valid"] is False and any("b_secret" in p and "unknown" in p.lower() for p in checked["problems"]), checked
            assert client.post("/v1/validate", json={"plan": B_PLAN}, headers=B).json() == {"valid": True, "problems": []}
            refused = client.post("/v1/runs?wait=true", json={"plan": B_PLAN}, headers=A)
            assert refused.status_code == 422 and "b_secret" in refused.text
            assert client.post("/v1/runs", json={"plan": MAIL, "approve_tools": ["b_secret"]}, headers=A).status_code == 422
            # A fork continues in its parent's namespace only: a's run forked with b's token is not found.
            a_run = client.post("/v1/runs?wait=true", json={"goal": "a", "plan": ANSWER}, headers=A).json()["run_id"]
            assert client.post(f"/v1/runs/{a_run}/fork", json={"from_seq": 0, "plan": B_PLAN}, headers=B).status_code == 404
            a_fork = client.post(f"/v1/runs/{a_run}/fork?wait=true", json={"from_seq": 0, "plan": ANSWER}, headers=A).json()["run_id"]
            assert client.get(f"/v1/runs/{a_fork}", headers=A).json()["parent_id"] == a_run
            # ... and its plan is checked against a's tools, not b's.
            crossing = client.post(f"/v1/runs/{a_run}/fork", json={"from_seq": 0, "plan": B_PLAN}, headers=A)
            assert crossing.status_code == 422 and "b_secret" in crossing.text
            with RunStore(store, namespace="b") as b_store:
                assert b_store.list_runs() == []
            # A run of b's streams through b's events (read from b's view of the store).
            b_run = client.post("/v1/runs", json={"goal": "b", "plan": B_PLAN}, headers=B).json()["run_id"]
            with client.stream("GET", f"/v1/runs/{b_run}/events", headers=B) as stream:
                text = "".join(stream.iter_text())
            assert "event: done" in text and '"b:hi"' in text
        engine.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_quota_of_ten_runs_at_once_holds_against_64_clients(backend, tmp_path, monkeypatch):
    seconds = 3.0
    with store_url_for(backend, tmp_path) as store:
        engine = teams(tmp_path, monkeypatch, store)
        with served(engine) as client, RunStore(store, namespace="a") as a_store:
            most = 0
            done = threading.Event()

            def count() -> None:  # what the store says, all along
                nonlocal most
                while not done.is_set():
                    most = max(most, sum(r["status"] in ACTIVE for r in a_store.list_runs(200)))
                    time.sleep(0.01)

            sampler = threading.Thread(target=count)
            sampler.start()
            start = threading.Barrier(64)

            def post(i: int) -> Any:
                start.wait()
                return client.post("/v1/runs", json={"goal": f"run {i}", "plan": slow_plan(1, seconds)}, headers=A)

            began = time.monotonic()
            with ThreadPoolExecutor(64) as pool:
                answers = list(pool.map(post, range(64)))
            took = time.monotonic() - began
            accepted = [a for a in answers if a.status_code == 202]
            refused = [a for a in answers if a.status_code == 429]
            # b is not held by a's quota meanwhile.
            assert client.post("/v1/runs", json={"plan": ANSWER}, headers=B).status_code == 202
            time.sleep(0.1)
            done.set()
            sampler.join()
            assert len(accepted) + len(refused) == 64, {a.status_code for a in answers}
            assert most <= QUOTA and len(accepted) >= QUOTA, (most, len(accepted))
            if took < seconds:  # every answer came while the first runs still ran: exactly the quota
                assert len(accepted) == QUOTA
            assert len(a_store.list_runs(200)) == len(accepted)  # a refused run leaves nothing behind
            for answer in refused:
                assert answer.headers["retry-after"] == "1" and answer.json()["error"]["type"] == "QuotaExceeded"
                assert "quota of runs at once is 10" in answer.json()["error"]["message"]
            for answer in accepted:  # (ended now rather than waited for)
                client.post(f"/v1/runs/{answer.json()['run_id']}/cancel", headers=A)
        engine.close()


# --- one backend: what does not depend on the store -------------------------------------------------


def test_without_tokens_the_address_or_the_header_picks_the_namespace(tmp_path, monkeypatch):
    engine = teams(tmp_path, monkeypatch, str(tmp_path / "runs.sqlite"))
    with TestClient(create_app(engine)) as client:  # a loopback server for one user: no token
        assert "b_secret" in {t["name"] for t in client.get("/v1/ns/b/tools").json()["tools"]}
        assert "b_secret" in {t["name"] for t in client.get("/v1/tools", headers={"X-PlanVM-Namespace": "b"}).json()["tools"]}
        assert "b_secret" not in {t["name"] for t in client.get("/v1/tools").json()["tools"]}  # the server's own: default
        b_run = client.post("/v1/ns/b/runs?wait=true", json={"plan": B_PLAN}).json()["run_id"]
        assert client.get(f"/v1/runs/{b_run}").status_code == 404
        assert client.get(f"/v1/ns/a/runs/{b_run}").status_code == 404
        assert client.get(f"/v1/ns/b/runs/{b_run}").json()["final_answer"] == "b:hi"
        assert [r["id"] for r in client.get("/v1/runs", headers={"X-PlanVM-Namespace": "b"}).json()["runs"]] == [b_run]
        undeclared = client.get("/v1/ns/nope/runs")
        assert undeclared.status_code == 404 and "namespaces: a, b, default" in undeclared.json()["error"]["message"]
        assert client.get("/v1/ns/Bad%20Name/runs").status_code == 404
        both = client.get("/v1/ns/a/runs", headers={"X-PlanVM-Namespace": "b"})
        assert both.status_code == 422 and "X-PlanVM-Namespace" in both.json()["error"]["message"]
        assert client.get("/v1/ns/b").status_code == 404 and client.get("/healthz").json()["ok"] is True
    engine.close()


def test_the_page_signed_in_with_a_token_shows_that_namespace_only(tmp_path, monkeypatch):
    engine = teams(tmp_path, monkeypatch, str(tmp_path / "runs.sqlite"))
    with TestClient(create_app(engine, tokens=engine.config.token_namespaces()), follow_redirects=False) as client:
        b_run = client.post("/v1/runs?wait=true", json={"goal": "b's", "plan": B_PLAN}, headers=B).json()["run_id"]
        a_run = client.post("/v1/runs?wait=true", json={"goal": "a's", "plan": ANSWER}, headers=A).json()["run_id"]
        assert client.post("/signin", data={"token": A_TOKEN, "next": f"/runs/{b_run}"}).status_code == 303
        page = client.get(f"/runs/{b_run}")
        assert page.status_code == 200 and page.text == client.get(f"/runs/{unknown_like(b_run)}").text  # the shell, whatever the id
        csrf = re.search(r'<meta name="planvm-csrf" content="([^"]+)">', page.text).group(1)
        # What the page shows comes from /v1 with its session: a's runs, never b's.
        assert [r["id"] for r in client.get("/v1/runs").json()["runs"]] == [a_run]
        assert client.get(f"/v1/runs/{b_run}").status_code == 404
        assert client.get(f"/v1/runs/{b_run}/events").status_code == 404
        assert client.post(f"/v1/runs/{b_run}/cancel", headers={"X-CSRF-Token": csrf}).status_code == 404
        assert client.get("/v1/ns/b/runs").status_code == 404
        assert client.get("/v1/ns/a/runs").json()["runs"][0]["id"] == a_run
        # Signed in with b's token instead, the same page shows b's.
        client.post("/signout", headers={"X-CSRF-Token": csrf})
        client.cookies.clear()
        assert client.post("/signin", data={"token": B_TOKEN}).status_code == 303
        assert [r["id"] for r in client.get("/v1/runs").json()["runs"]] == [b_run]
    engine.close()


def test_tokens_must_each_be_one_namespaces(tmp_path, monkeypatch):
    from vm import BadInput

    engine = teams(tmp_path, monkeypatch, str(tmp_path / "runs.sqlite"))
    with pytest.raises(BadInput, match="namespace 'a'"):
        create_app(engine, token=A_TOKEN, tokens=engine.config.token_namespaces())
    with pytest.raises(BadInput, match="do not declare"):
        create_app(engine, tokens={"some-token-000000000": "elsewhere"})
    with pytest.raises(BadInput, match="blank"):
        create_app(engine, tokens={"  ": "a"})
    engine.close()


def test_planvm_serve_takes_every_namespaces_token(tmp_path, monkeypatch):
    """The real command: each [namespaces.NAME] table's serve_token serves its namespace, --token
    the server's own; tokens are enough to listen beyond loopback."""
    from planvm.cli.serve import namespace_tokens
    from tests.serve_helpers import Server
    from vm import BadInput

    teams(tmp_path, monkeypatch, str(tmp_path / "runs.sqlite")).close()
    assert namespace_tokens({}, None) == {A_TOKEN: "a", B_TOKEN: "b"}
    assert namespace_tokens({}, "the-default-token-0000") == {A_TOKEN: "a", B_TOKEN: "b", "the-default-token-0000": "default"}
    with pytest.raises(BadInput, match="namespace 'a'"):
        namespace_tokens({}, A_TOKEN)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PLANVM_CONFIG": str(tmp_path / "planvm.toml"), "PLANVM_STORE": str(tmp_path / "served.sqlite")}
    with Server(home, "--token", "the-default-token-0000", env=env, host="0.0.0.0") as server, server.client() as client:
        ran = client.post("/v1/runs?wait=true", json={"goal": "a's", "plan": ANSWER}, headers=A).json()
        assert ran["status"] == "completed"
        assert client.get(f"/v1/ns/a/runs/{ran['run_id']}", headers=A).status_code == 200
        assert client.get(f"/v1/runs/{ran['run_id']}", headers=B).status_code == 404
        assert client.get("/v1/ns/a/runs", headers=B).status_code == 404
        assert client.get("/v1/runs", headers={"Authorization": "Bearer the-default-token-0000"}).json()["runs"] == []
        assert client.get("/v1/runs").status_code == 401

"""Faults nobody scripted against a real ``planvm serve``: a web page that points its own name at
the loopback server (DNS rebinding: any ``Host``), a cross-site form aimed at a tokenless server,
a guesser at the sign-in form, and a page left signed in while the server's token changes."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.serve_helpers import Server

pytestmark = pytest.mark.faults

MAIL = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "send_email", "tool_params": {"to": "ops@example.com", "body": "hi"},
                                                         "output_vars": ["final_answer"]}}]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    fresh = tmp_path / "home"
    fresh.mkdir()
    return fresh


def sent(server: Server) -> list[str]:
    return [line for line in server.calls() if line.startswith("send_email")]


def test_a_rebound_name_never_reaches_a_tokenless_loopback_server(home):
    """A page on attacker.example whose name now resolves to 127.0.0.1 sends Host: attacker.example:PORT."""
    with Server(home) as server, server.client() as client:
        for host in (f"attacker.example:{server.port}", "attacker.example", "127.0.0.1.attacker.example", "localhost.attacker.example", ""):
            refused = client.post("/v1/runs?wait=true", json={"goal": "mail", "plan": MAIL}, headers={"Host": host})
            assert refused.status_code == 421, (host, refused.text)
            error = refused.json()["error"]
            assert error["type"] == "MisdirectedRequest" and "--allowed-host" in error["message"]
            assert client.get("/", headers={"Host": host}).status_code == 421
            assert client.get("/v1/runs", headers={"Host": host}).status_code == 421
        assert sent(server) == []
        assert client.get("/v1/runs").json()["runs"] == []
        # The server's own names, with the port or without, are served.
        for host in (f"127.0.0.1:{server.port}", "127.0.0.1", f"localhost:{server.port}", "LOCALHOST", "localhost.", f"[::1]:{server.port}"):
            assert client.get("/v1/runs", headers={"Host": host}).status_code == 200, host
        # /healthz answers whatever the name (a probe learns nothing from it but liveness).
        assert client.get("/healthz", headers={"Host": "attacker.example"}).status_code == 200


def test_a_name_given_with_allowed_host_is_served(home):
    """(The variable and planvm.toml alone: tests/server/test_page_signin.py, through the same setting.)"""
    with Server(home, "--allowed-host", "planvm.internal", env={"PLANVM_ALLOWED_HOSTS": "other.internal:9000"}) as server, \
            server.client() as client:
        assert client.get("/v1/runs", headers={"Host": f"planvm.internal:{server.port}"}).status_code == 200
        # The flag is stronger than the variable: the variable's name is not added to it.
        assert client.get("/v1/runs", headers={"Host": "other.internal:9000"}).status_code == 421
        assert client.get("/v1/runs", headers={"Host": "attacker.example"}).status_code == 421


def test_a_cross_site_form_cannot_write_to_a_tokenless_server(home):
    """A page elsewhere can post a form to 127.0.0.1 (its Host is right); its Origin is not."""
    with Server(home) as server, server.client() as client:
        local = f"http://localhost:{server.port + 1}"  # another server on this machine: the same site, not this origin
        for sent_by in ({"Origin": "https://attacker.example"}, {"Origin": "null"}, {"Origin": f"http://attacker.example:{server.port}"},
                        {"Origin": local, "Sec-Fetch-Site": "same-site"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Origin": "null", "Sec-Fetch-Site": "cross-site"}):
            refused = client.post("/v1/runs", json={"goal": "mail", "plan": MAIL}, headers=sent_by)
            assert refused.status_code == 403 and "another site" in refused.json()["error"]["message"], (sent_by, refused.text)
        assert client.get("/v1/runs").json()["runs"] == []
        # The page's own writes (same origin) and clients that send no Origin go through.
        for sent_by in ({"Origin": server.url}, {"Origin": "null", "Sec-Fetch-Site": "same-origin"}, {}):
            run = client.post("/v1/runs?wait=true", json={"goal": "mail", "plan": MAIL}, headers=sent_by)
            assert run.status_code == 200 and run.json()["status"] == "completed"
        assert sent(server) == ["send_email ops@example.com hi"] * 3


def test_guessing_the_token_at_the_form_is_bounded(home):
    with Server(home, "--token", "right-token") as server, server.client() as client:
        started = time.monotonic()
        answers = [client.post("/signin", data={"token": f"guess-{i}"}) for i in range(12)]
        assert [a.status_code for a in answers[:10]] == [401] * 10
        assert "not this server&#39;s token" in answers[0].text or "not this server's token" in answers[0].text
        assert [a.status_code for a in answers[10:]] == [429, 429]
        assert "Too many wrong tokens" in answers[-1].text
        # Even the right token waits out the bound; no cookie is given meanwhile.
        locked = client.post("/signin", data={"token": "right-token"})
        assert locked.status_code == 429 and "planvm_session" not in locked.headers.get("set-cookie", "")
        assert time.monotonic() - started < 10
        # The API (bearer) is not locked by the form's bound.
        assert client.get("/v1/runs", headers={"Authorization": "Bearer right-token"}).status_code == 200


def test_a_signed_in_page_stops_working_when_the_token_changes(home):
    with Server(home, "--token", "first-token") as server:
        with server.client() as client:
            signed = client.post("/signin", data={"token": "first-token"})
            assert signed.status_code == 303
            cookie = client.cookies.get("planvm_session")
            assert cookie and "first-token" not in cookie
            page = client.get("/")
            assert page.status_code == 200
            csrf = re.search(r'name="planvm-csrf" content="([^"]+)"', page.text).group(1)
    port = server.port
    with Server(home, "--token", "second-token", port=port) as server:
        with httpx.Client(base_url=server.url, timeout=30, cookies={"planvm_session": cookie}) as client:
            page = client.get("/")
            assert page.status_code == 303 and page.headers["location"].startswith("/signin")
            write = client.post("/v1/runs", json={"goal": "mail", "plan": MAIL}, headers={"X-CSRF-Token": csrf})
            assert write.status_code == 401 and json.loads(write.text)["error"]["type"] == "Unauthorized"
        assert sent(server) == []

"""Signing in to the page of a server with a token (in process, through FastAPI's TestClient): the
form, the session cookie, CSRF on the page's writes, signing out, expiry; the bearer header for
API clients unchanged; and which Host names a server answers for."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from planvm.engine import Engine
from planvm.server import create_app
from tests.serve_helpers import TOOLS

TOKEN = "s3cret-token"
PLAN = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "done"}}]


def app(tmp_path: Path, **kwargs: Any):
    engine = Engine({"store_path": str(tmp_path / "runs.sqlite"), "no_builtins": True, "plugins": [TOOLS]})
    return create_app(engine, **kwargs)


def sign_in(client: TestClient, token: str = TOKEN, next_: str | None = None) -> str:
    """Signs in through the form; returns the page's CSRF token."""
    form = {"token": token, **({"next": next_} if next_ is not None else {})}
    answer = client.post("/signin", data=form, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return csrf_of(client)


def csrf_of(client: TestClient) -> str:
    page = client.get("/", follow_redirects=False)
    assert page.status_code == 200, page.status_code
    return re.search(r'<meta name="planvm-csrf" content="([^"]+)">', page.text).group(1)


def test_page_addresses_lead_to_the_form_and_the_api_answers_401(tmp_path):
    with TestClient(app(tmp_path, token=TOKEN), follow_redirects=False) as client:
        for path, then in (("/", "/"), ("/runs/abc?step=2&tab=graph", "/runs/abc?step=2&tab=graph"), ("/library", "/library")):
            answer = client.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/signin?" + _query(then)
        for path in ("/v1/runs", "/v1/info", "/openapi.json", "/runs/abc/steps"):
            answer = client.get(path)
            assert answer.status_code == 401 and answer.json()["error"]["type"] == "Unauthorized"
        assert client.post("/v1/runs", json={"goal": "x"}).status_code == 401
        form = client.get("/signin?next=/library")
        assert form.status_code == 200 and 'name="token"' in form.text and 'type="password"' in form.text
        assert 'value="/library"' in form.text
        assert "script-src 'self'" in form.headers["content-security-policy"]
        assert re.findall(r"<script", form.text) == []  # no script at all, inline or not
        assert client.get("/static/style.css").status_code == 200  # the form's style, without a session
        assert client.get("/healthz").status_code == 200


def _query(then: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"next": then})


def test_the_form_gives_a_session_cookie_that_opens_the_page_and_its_api(tmp_path):
    with TestClient(app(tmp_path, token=TOKEN), follow_redirects=False) as client:
        answer = client.post("/signin", data={"token": TOKEN, "next": "/runs/abc?step=1"})
        assert answer.status_code == 303 and answer.headers["location"] == "/runs/abc?step=1"
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("planvm_session=") and TOKEN not in cookie
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite", "path", "max-age"} <= attributes and "secure" not in attributes
        assert "samesite=strict" in cookie.lower() and "max-age=43200" in cookie.lower()  # 12 hours
        csrf = csrf_of(client)
        assert len(csrf) >= 32
        assert client.get("/v1/runs").status_code == 200
        assert client.get("/runs/abc").headers["cache-control"] == "no-store"
        # Writes carry the page's CSRF token in a header; without it (or with another) they are refused.
        refused = client.post("/v1/runs", json={"goal": "x", "plan": PLAN})
        assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["error"]["message"]
        assert client.post("/v1/runs", json={"goal": "x", "plan": PLAN}, headers={"X-CSRF-Token": csrf + "x"}).status_code == 403
        assert client.delete("/v1/library/x").status_code == 403
        assert client.get("/v1/runs").json()["runs"] == []
        made = client.post("/v1/runs?wait=true", json={"goal": "x", "plan": PLAN}, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 200 and made.json()["final_answer"] == "done"
        cancel = client.post(f"/v1/runs/{made.json()['run_id']}/cancel", headers={"X-CSRF-Token": csrf})
        assert cancel.status_code == 409  # past the CSRF check: the run is already over


def test_the_bearer_header_works_as_before_without_csrf(tmp_path):
    with TestClient(app(tmp_path, token=TOKEN), follow_redirects=False) as client:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        made = client.post("/v1/runs?wait=true", json={"goal": "x", "plan": PLAN}, headers=bearer)
        assert made.status_code == 200 and made.json()["status"] == "completed"
        assert client.get("/", headers=bearer).status_code == 200
        assert client.get("/v1/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 303


@pytest.mark.parametrize("given", ["wrong", "", TOKEN + " ", TOKEN[:-1]])
def test_a_wrong_token_shows_the_form_again_with_a_message(tmp_path, given):
    with TestClient(app(tmp_path, token=TOKEN), follow_redirects=False) as client:
        answer = client.post("/signin", data={"token": given, "next": "/library"})
        assert answer.status_code == 401 and 'name="token"' in answer.text
        assert "not this server&#39;s token" in answer.text and 'value="/library"' in answer.text
        assert "set-cookie" not in answer.headers
        assert client.get("/").status_code == 303


def test_next_only_leads_to_this_servers_page(tmp_path):
    with TestClient(app(tmp_path, token=TOKEN), follow_redirects=False) as client:
        for given in ("//attacker.example/", "https://attacker.example/", "/\\attacker.example", "javascript:alert(1)", "/v1/runs", ""):
            client.cookies.clear()
            answer = client.post("/signin", data={"token": TOKEN, "next": given})
            assert answer.status_code == 303 and answer.headers["location"] == "/", given


def test_signing_out_ends_the_session(tmp_path):
    with TestClient(app(tmp_path, token=TOKEN), follow_redirects=False) as client:
        csrf = sign_in(client)
        cookie = client.cookies.get("planvm_session")
        assert client.post("/signout").status_code == 403  # a write: it needs the CSRF token too
        out = client.post("/signout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 200 and out.json() == {"signed_out": True}
        assert "planvm_session=" in out.headers["set-cookie"] and "max-age=0" in out.headers["set-cookie"].lower()
        client.cookies.set("planvm_session", cookie)  # the old cookie, kept by someone: it no longer opens anything
        assert client.get("/").status_code == 303
        assert client.get("/v1/runs").status_code == 401


def test_a_session_expires(tmp_path):
    with TestClient(app(tmp_path, token=TOKEN, session_seconds=0.3), follow_redirects=False) as client:
        sign_in(client)
        assert client.get("/v1/runs").status_code == 200
        time.sleep(0.4)
        assert client.get("/").status_code == 303
        assert client.get("/v1/runs").status_code == 401


def test_a_session_of_one_server_does_not_open_another_with_another_token(tmp_path):
    with TestClient(app(tmp_path, token=TOKEN), follow_redirects=False) as first:
        sign_in(first)
        cookie = first.cookies.get("planvm_session")
    with TestClient(app(tmp_path, token="another-token"), follow_redirects=False) as second:
        second.cookies.set("planvm_session", cookie)
        assert second.get("/").status_code == 303


def test_over_https_the_cookie_is_secure(tmp_path):
    with TestClient(app(tmp_path, token=TOKEN), base_url="https://testserver", follow_redirects=False) as client:
        answer = client.post("/signin", data={"token": TOKEN})
        assert answer.status_code == 303 and "secure" in answer.headers["set-cookie"].lower()


def test_without_a_token_there_is_nothing_to_sign_in_to(tmp_path):
    with TestClient(app(tmp_path), follow_redirects=False) as client:
        assert client.get("/signin").status_code == 303 and client.get("/signin").headers["location"] == "/"
        page = client.get("/")
        assert page.status_code == 200 and "planvm-csrf" not in page.text
        assert client.post("/v1/runs?wait=true", json={"goal": "x", "plan": PLAN}).status_code == 200


# --- Host names ------------------------------------------------------------------------------------


def test_only_the_allowed_hosts_are_answered(tmp_path):
    with TestClient(app(tmp_path, allowed_hosts=["planvm.internal", "other.internal:9000"])) as client:
        for host in ("planvm.internal", "planvm.internal:8765", "PLANVM.internal.", "other.internal:9000"):
            assert client.get("/v1/runs", headers={"Host": host}).status_code == 200, host
        for host in ("attacker.example", "other.internal", "other.internal:9001", "planvm.internal.attacker.example", "testserver"):
            refused = client.get("/v1/runs", headers={"Host": host})
            assert refused.status_code == 421, host
            message = refused.json()["error"]["message"]
            assert message.startswith(f"this server does not answer for the host name {host!r}; if that is its name, start it with "
                                      f"--allowed-host {host.split(':')[0]} ") and "\n" not in message
        assert client.get("/healthz", headers={"Host": "attacker.example"}).status_code == 200


@pytest.mark.parametrize(("bind", "given", "expected"), [
    ("127.0.0.1", [], ["127.0.0.1", "localhost", "[::1]"]),
    ("localhost", ["planvm.lan"], ["planvm.lan", "localhost", "127.0.0.1", "[::1]"]),
    ("::1", [], ["[::1]", "localhost", "127.0.0.1"]),
    ("192.168.1.5", [], ["192.168.1.5"]),
    ("192.168.1.5", ["planvm.lan"], ["planvm.lan", "192.168.1.5"]),
    ("0.0.0.0", [], None),  # every interface, a token required: any name
    ("0.0.0.0", ["planvm.lan"], ["planvm.lan", "localhost", "127.0.0.1", "[::1]"]),
    ("::", [], None),
    ("127.0.0.1", ["*"], None),
])
def test_which_hosts_a_bind_address_answers_for(bind, given, expected):
    from planvm.server.access import allowed_hosts_for

    found = allowed_hosts_for(bind, given)
    assert (sorted(found) if found is not None else None) == (sorted(expected) if expected is not None else None)


def test_allowed_hosts_come_from_planvm_toml_the_variable_or_the_flag(tmp_path, monkeypatch):
    from planvm.engine import EngineConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PLANVM_ALLOWED_HOSTS", raising=False)
    (tmp_path / "planvm.toml").write_text('allowed_hosts = ["planvm.lan", "proxy.lan:443"]\n')
    assert EngineConfig.load({}).allowed_hosts == ["planvm.lan", "proxy.lan:443"]
    monkeypatch.setenv("PLANVM_ALLOWED_HOSTS", " a.example , b.example:9000,,")
    assert EngineConfig.load({}).allowed_hosts == ["a.example", "b.example:9000"]
    assert EngineConfig.load({"allowed_hosts": ("flag.example",)}).allowed_hosts == ["flag.example"]
    rows = {row["key"]: row for row in EngineConfig.explain({})}
    assert rows["allowed_hosts"]["source"] == "PLANVM_ALLOWED_HOSTS"

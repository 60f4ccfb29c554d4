"""`planvm serve` as a real process against faults only a process shows: its PostgreSQL store cut
off for 10 s mid-load (through a TCP proxy), and clients that open connections and never finish
their request headers."""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from tests.databases import postgres_store_url
from tests.serve_helpers import Server
from tests.tcp_proxy import TcpProxy


def unique_plan(run: int, steps: int, seconds: float) -> list[dict]:
    chain = [{"seq_no": i, "type": "calling", "parameters": {"tool_name": "slow_echo",
                                                             "tool_params": {"text": f"run{run}-step{i}", "seconds": seconds},
                                                             "output_vars": ["r"]}} for i in range(steps)]
    return chain + [{"seq_no": steps, "type": "assign", "parameters": {"final_answer": "${r}"}}]


def through(proxy: TcpProxy, url: str) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{proxy.port}"))


def test_healthz_says_503_fast_while_the_database_is_cut_and_every_run_completes_after(tmp_path: Path) -> None:
    with postgres_store_url() as url:
        parts = urlsplit(url)
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
        home = tmp_path / "home"
        home.mkdir()
        server = Server(home, "--store", through(proxy, url), "--no-builtins").start()
        try:
            with server.client() as client:
                ids = [client.post("/v1/runs", json={"goal": f"run {k}", "plan": unique_plan(k, 6, 0.3)}).json()["run_id"]
                       for k in range(12)]
                time.sleep(0.8)
                proxy.cut()
                began = time.monotonic()
                answers: list[tuple[int, float]] = []
                prober = httpx.Client(base_url=server.url, timeout=5)
                while time.monotonic() - began < 10:
                    asked = time.perf_counter()
                    status = prober.get("/healthz").status_code
                    answers.append((status, time.perf_counter() - asked))
                    time.sleep(0.25)
                proxy.restore()
                prober.close()
                print(f"\n/healthz during a 10 s cut: {len(answers)} answers, {sum(s == 503 for s, _ in answers)} of them 503, "
                      f"median {sorted(t for _, t in answers)[len(answers) // 2] * 1000:.0f} ms, slowest {max(t for _, t in answers) * 1000:.0f} ms")
                # During the cut: answered at once, and honestly (503) once the store stopped answering.
                assert max(took for _, took in answers) < 0.2, answers
                assert sum(status == 503 for status, _ in answers[2:]) >= len(answers[2:]) - 1, answers
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    try:
                        statuses = [client.get(f"/v1/runs/{i}").json()["status"] for i in ids]
                    except (httpx.HTTPError, KeyError):
                        statuses = []
                    if statuses and all(s == "completed" for s in statuses):
                        break
                    time.sleep(0.5)
                print(f"every run completed {time.monotonic() - began - 10:.1f} s after the cut ended")
                assert statuses == ["completed"] * len(ids), [
                    (r["status"], r["error"], r["steps"], r["executor"]) for r in (client.get(f"/v1/runs/{i}").json() for i in ids)
                    if r["status"] != "completed"] + [server.stop() or server.proc.stderr.read()[-3000:]]
                assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
            calls = Counter(line for line in server.calls() if line.startswith("slow_echo"))
            assert set(calls.values()) == {1}  # no committed step ran twice
            assert len(calls) == 12 * 6
        finally:
            server.stop()
            proxy.stop()


def test_clients_that_never_finish_their_headers_are_closed_and_lock_no_one_out(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with Server(home, "--header-timeout", "1", "--no-builtins") as server:
        sockets = []
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            sockets.append(s)
        began = time.perf_counter()
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        assert time.perf_counter() - began < 1
        time.sleep(2)
        closed = 0
        for s in sockets:
            s.settimeout(2)
            try:
                closed += s.recv(1) == b""
            except (TimeoutError, ConnectionError):
                pass
            s.close()
        assert closed == len(sockets)
        # A slow but honest client (headers in pieces, within the deadline) is served.
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            time.sleep(0.3)
            s.sendall(b"Host: x\r\n\r\n")
            s.settimeout(5)
            assert s.recv(64).startswith(b"HTTP/1.1 200")


def test_a_blank_token_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.serve_helpers import ROOT

    done = subprocess.run([sys.executable, "-m", "planvm", "serve", "--token", "  ", "--port", "1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**__import__("os").environ, "PLANVM_HOME": str(tmp_path)})
    assert done.returncode == 2 and "the token is blank" in done.stderr


def test_the_service_tokens_are_settings(tmp_path: Path) -> None:
    """PLANVM_SERVE_TOKEN and PLANVM_MCP_TOKEN are read through the one configuration: planvm config
    shows them masked, planvm.toml may hold them, and a blank one is refused."""
    import json
    import subprocess
    import sys

    from tests.serve_helpers import ROOT

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "planvm", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env={**__import__("os").environ, "PLANVM_HOME": str(tmp_path), "PYTHONPATH": str(ROOT), **env})

    shown = {r["key"]: r for r in json.loads(run("config", "--json", PLANVM_SERVE_TOKEN="serve-secret-123").stdout)["settings"]}
    assert shown["serve_token"] == {"key": "serve_token", "value": "***", "source": "PLANVM_SERVE_TOKEN"}
    assert "serve-secret-123" not in json.dumps(shown)
    (tmp_path / "planvm.toml").write_text('mcp_token = "  "\n')
    blank = run("mcp", "--http", "1")
    assert blank.returncode == 2 and "the token is blank" in blank.stderr and "PLANVM_MCP_TOKEN" in blank.stderr
    beyond = run("serve", "--host", "0.0.0.0", "--port", "1")
    assert beyond.returncode == 2 and "give --token" in beyond.stderr

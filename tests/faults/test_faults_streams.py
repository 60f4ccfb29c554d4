"""`planvm serve` against clients that stop in the middle: event streams nobody reads, request
bodies that never finish. The clients are raw sockets (the fake here: a client that misbehaves on
purpose); the server is the real process."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.serve_helpers import Server, slow_plan

pytestmark = pytest.mark.faults

STALL_SECONDS = 1.5


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def big_plan(steps: int, value_kb: int) -> list[dict]:
    """A chain of steps each passing a value_kb text on: every step event carries it three times."""
    chain: list[dict] = [{"seq_no": 0, "type": "assign", "parameters": {"r": "x" * (value_kb * 1024)}}]
    for i in range(1, steps + 1):
        chain.append({"seq_no": i, "type": "calling", "parameters": {
            "tool_name": "slow_echo", "tool_params": {"text": "${r}", "seconds": 0}, "output_vars": ["r"]}})
    return chain + [{"seq_no": steps + 1, "type": "assign", "parameters": {"final_answer": "done"}}]


def stuck_reader(port: int, path: str) -> socket.socket:
    """A client that asks for an event stream and never reads a byte of it."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return s


ESTABLISHED = 1  # tcp_info's first byte: the connection's TCP state (Linux)


def tcp_state(s: socket.socket) -> int:
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def drained(s: socket.socket, seconds: float) -> tuple[bool, int]:
    """Read what the socket holds until the server's close (EOF or reset) or ``seconds``:
    (closed, bytes read)."""
    s.settimeout(0.2)
    got = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionError:
            return True, got
        if not chunk:
            return True, got
        got += len(chunk)
    return False, got


def turned_away(url: str) -> bool:
    """Whether a new client is answered 503 by the connection limit (uvicorn's own plain-text
    503, not the service's: /healthz says 503 in JSON when the store is slow to answer)."""
    response = httpx.get(f"{url}/v1/runs?limit=1", timeout=10)
    if response.status_code == 503 and response.text == "Service Unavailable":
        return True
    assert response.status_code == 200, response.text
    return False


def test_streams_whose_clients_stop_reading_are_aborted_their_slots_and_memory_given_back(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with Server(home, "--no-builtins", "--stall-timeout", str(STALL_SECONDS), "--max-connections", "8") as server:
        run = httpx.post(f"{server.url}/v1/runs?wait=true", json={"goal": "big", "plan": big_plan(12, 200)}, timeout=120).json()
        assert run["status"] == "completed"
        events = f"/v1/runs/{run['run_id']}/events"
        time.sleep(0.5)
        before = rss_mb(server.proc.pid)
        # Four clients stall: everyone else is still served.
        sockets = [stuck_reader(server.port, events) for _ in range(4)]
        health = httpx.get(f"{server.url}/healthz", timeout=5)
        assert health.headers["content-type"] == "application/json" and health.elapsed.total_seconds() < 1
        assert httpx.get(f"{server.url}/v1/runs/{run['run_id']}", timeout=10).status_code == 200
        # More, until they hold every slot of --max-connections: a new client is turned away...
        while not turned_away(server.url):
            assert len(sockets) < 8, "stalled streams never held the server's connections"
            sockets.append(stuck_reader(server.port, events))
        stalled_at = time.monotonic()
        peak = rss_mb(server.proc.pid)
        # ...until the stall deadline: then the stalled connections are aborted and the slots free.
        while turned_away(server.url):
            assert time.monotonic() - stalled_at < STALL_SECONDS + 3, "no slot came free after the stall deadline"
            time.sleep(0.1)
        freed = time.monotonic() - stalled_at
        while any(tcp_state(s) == ESTABLISHED for s in sockets):  # (looked at without reading: a read would unblock them)
            assert time.monotonic() - stalled_at < STALL_SECONDS + 4, "a stalled stream's connection is still open"
            time.sleep(0.1)
        closed_all = time.monotonic() - stalled_at
        # Nothing of theirs is kept: no stream reads the run any more (the service watches no run).
        while (health := httpx.get(f"{server.url}/healthz", timeout=5).json()).get("streams") != 0:
            assert time.monotonic() - stalled_at < STALL_SECONDS + 5, health  # (each generator ends as its connection goes)
            time.sleep(0.1)
        time.sleep(0.3)
        after = rss_mb(server.proc.pid)
        # Each stalled client sees its connection end (reset, or EOF) after what its buffers held,
        # not the rest of the stream (about 7 MB).
        for s in sockets:
            closed, got = drained(s, 3)
            s.close()
            assert closed, f"a stalled stream's connection is still open ({got:,} bytes read)"
            assert got < 1_000_000, got
        # A client that reads gets the whole run.
        with httpx.stream("GET", f"{server.url}{events}", timeout=30) as stream:
            assert stream.status_code == 200
            kinds = [line for line in stream.iter_lines() if line.startswith("event:")]
        assert kinds[-1] == "event: done" and kinds.count("event: step") == 14
        print(f"\n{len(sockets)} stalled streams: a slot free {freed:.1f} s after the last stalled, all closed after {closed_all:.1f} s "
              f"(deadline {STALL_SECONDS} s); "
              f"server memory {before:.1f} MB before, {peak:.1f} MB with them, {after:.1f} MB after")
    log = server.proc.stderr.read() if server.proc and server.proc.stderr else ""
    assert log.count("aborted a connection whose client took nothing of its response") == len(sockets), log
    assert "Traceback" not in log and "ASGI callable" not in log, log


def test_a_request_body_that_stops_or_trickles_gets_408_and_its_connection_closed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with Server(home, "--no-builtins", "--body-timeout", "1") as server:
        body = b'{"plan": [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "hi"}}]}'
        head = f"POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()

        def answer(s: socket.socket, began: float, seconds: float = 5) -> tuple[bytes, float]:
            s.settimeout(seconds)
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except (TimeoutError, ConnectionError):
                    break
                if not chunk:
                    break
                data += chunk
            return data, time.monotonic() - began

        # Stops after ten bytes.
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            began = time.monotonic()
            s.sendall(head + body[:10])
            data, took = answer(s, began)
        assert data.startswith(b"HTTP/1.1 408"), data
        assert b"RequestTimeout" in data and b"within 1 s" in data
        assert 0.9 < took < 2.5, took  # answered, and closed (the read ended with EOF), at the deadline
        # Trickles a byte every 0.1 s: the deadline is for the whole body, not between bytes.
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            began = time.monotonic()
            s.sendall(head)
            s.settimeout(0.1)
            sent = 0
            while time.monotonic() - began < 3 and sent < len(body) - 1:
                try:
                    s.sendall(body[sent:sent + 1])
                except ConnectionError:
                    break
                sent += 1
                try:
                    if s.recv(1, socket.MSG_PEEK):
                        break  # answered
                except TimeoutError:
                    pass
            data, took = answer(s, began)
        assert data.startswith(b"HTTP/1.1 408"), data
        assert 0.9 < took < 2.5, took
        # An honest client whose body comes in two pieces within the deadline is served.
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            began = time.monotonic()
            s.sendall(head + body[:20])
            time.sleep(0.3)
            s.sendall(body[20:])
            s.settimeout(5)
            assert s.recv(64).startswith(b"HTTP/1.1 202")
        # A request without a body has no such deadline: an event stream open longer than it.
        with httpx.Client(base_url=server.url, timeout=10) as client:
            run_id = client.post("/v1/runs", json={"plan": slow_plan(4, 0.4)}).json()["run_id"]
            began = time.monotonic()
            with client.stream("GET", f"/v1/runs/{run_id}/events") as stream:
                kinds = [line for line in stream.iter_lines() if line.startswith("event:")]
            assert kinds[-1] == "event: done" and time.monotonic() - began > 1.2
    log = server.proc.stderr.read() if server.proc and server.proc.stderr else ""
    assert "Traceback" not in log and "ERROR" not in log, log

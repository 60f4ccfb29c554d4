"""The service's event loop is never held by its store or by a large request: `planvm serve` as a
real process, `/healthz` probed from another thread while (1) its PostgreSQL or MariaDB store is cut
off (a TCP proxy) for longer than the store's retry budget, and (2) a plan of 30,000 instructions
is posted to `/v1/runs`."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.databases import mysql_store_url, postgres_store_url
from tests.serve_helpers import Server, wait_status
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.faults

# Generous for a loaded 2-core machine; the figures measured are in docs/reliability.md.
HEALTHZ_BOUND = 0.5


class Prober:
    """``/healthz`` asked again and again from a thread of its own: (status, seconds) of each."""

    def __init__(self, url: str, pause: float = 0.05) -> None:
        self.url = url
        self.pause = pause
        self.answers: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)

    def _probe(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                asked = time.perf_counter()
                try:
                    status = client.get("/healthz").status_code
                except httpx.HTTPError:
                    status = 0
                self.answers.append((status, time.perf_counter() - asked))
                self._stop.wait(self.pause)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def slowest(self) -> float:
        return max(took for _, took in self.answers)

    def summary(self) -> str:
        times = sorted(took for _, took in self.answers)
        return (f"{len(times)} answers ({sum(s == 503 for s, _ in self.answers)} of them 503), median "
                f"{times[len(times) // 2] * 1000:.0f} ms, slowest {times[-1] * 1000:.0f} ms")


def big_plan(n: int) -> list[dict]:
    """``n`` instructions; the first one answers, so the run ends after one step."""
    return [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "done"}}] + [
        {"seq_no": i, "type": "assign", "parameters": {f"v{i}": i}} for i in range(1, n)]


def test_a_large_plan_posted_to_runs_never_holds_healthz(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    body = json.dumps({"goal": "a large plan", "plan": big_plan(int(__import__("os").environ.get("N", "30000")))}).encode()
    with Server(home, "--no-builtins", "--max-body-bytes", str(64 * 1024 * 1024)) as server, server.client() as client:
        with Prober(server.url) as prober:
            time.sleep(0.3)
            began = time.perf_counter()
            answer = client.post("/v1/runs", content=body, headers={"Content-Type": "application/json"})
            took = time.perf_counter() - began
            assert answer.status_code == 202, answer.text
            run = wait_status(client, answer.json()["run_id"], {"completed", "failed"})
            time.sleep(0.3)
        print(f"\n30,000 instructions posted ({len(body) / 1e6:.1f} MB, answered in {took:.2f} s); /healthz: {prober.summary()}")
        assert run["status"] == "completed", run
        assert len(prober.answers) >= 5, prober.answers
        assert prober.slowest() < HEALTHZ_BOUND, prober.summary()
        assert all(status == 200 for status, _ in prober.answers), prober.summary()

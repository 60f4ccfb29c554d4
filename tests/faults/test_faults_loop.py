"""The service's event loop is never held by its store or by a large request: `planvm serve` as a
real process, `/healthz` probed from another thread while (1) its PostgreSQL or MariaDB store is cut
off (a TCP proxy) for longer than the store's retry budget, (2) another process holds its SQLite
store's write lock, and (3) a plan of 40,000 instructions is posted to `/v1/runs`."""

from __future__ import annotations

import gc
import json
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.databases import mysql_store_url, postgres_store_url
from tests.serve_helpers import Server, wait_status
from tests.tcp_proxy import TcpProxy
from tests.loop_probe import LoopServer
from vm import bulk

pytestmark = pytest.mark.faults

# Generous for a loaded 2-core machine; the figures measured are in docs/reliability.md.
HEALTHZ_BOUND = 0.5
STEPS = 16  # a run of 16 steps of 0.25 s is still running when its store is cut off, however loaded the machine


class Prober:
    """``/healthz`` asked again and again from a thread of its own: (status, seconds) of each."""

    def __init__(self, url: str, pause: float = 0.05) -> None:
        self.url = url
        self.pause = pause
        self.answers: list[tuple[int, float]] = []
        self.texts: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)

    def _probe(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                asked = time.perf_counter()
                try:
                    answer = client.get("/healthz")
                    status = answer.status_code
                    self.texts.append(answer.text)
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

    def worst(self, n: int = 5) -> list[int]:
        return sorted((round(took * 1000) for _, took in self.answers), reverse=True)[:n]

    def summary(self) -> str:
        times = sorted(took for _, took in self.answers)
        return (f"{len(times)} answers ({sum(s == 503 for s, _ in self.answers)} of them 503), median "
                f"{times[len(times) // 2] * 1000:.0f} ms, slowest {times[-1] * 1000:.0f} ms")


def big_plan(n: int) -> list[dict]:
    """``n`` instructions; the first one answers, so the run ends after one step."""
    return [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "done"}}] + [
        {"seq_no": i, "type": "assign", "parameters": {f"v{i}": i}} for i in range(1, n)]


def slow_plan(run: int, steps: int, seconds: float) -> list[dict]:
    """``steps`` slow_echo calls one after another (each reads the one before), then the answer."""
    chain = [{"seq_no": i, "type": "calling", "parameters": {
        "tool_name": "slow_echo", "tool_params": {"text": f"run{run}-step{i}" + (" ${r%d}" % (i - 1) if i else ""), "seconds": seconds},
        "output_vars": [f"r{i}"]}} for i in range(steps)]
    return chain + [{"seq_no": steps, "type": "assign", "parameters": {"final_answer": "${r%d}" % (steps - 1)}}]


def through(proxy: TcpProxy, url: str) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{proxy.port}"))


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_a_store_cut_off_past_its_retry_budget_never_holds_healthz_and_its_runs_are_interrupted_then_resumed(
    tmp_path: Path, backend: str
) -> None:
    fresh, port = (postgres_store_url, 5432) if backend == "postgresql" else (mysql_store_url, 3306)
    with fresh() as url:
        parts = urlsplit(url)
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or port).start()
        home = tmp_path / "home"
        home.mkdir()
        where = through(proxy, url)
        # A retry budget of 1 s: a 5 s cut is five times past it (and past a connection attempt's wait).
        server = Server(home, "--store", where, "--no-builtins", env={"PLANVM_STORE_RETRY_SECONDS": "1"}).start()
        try:
            with server.client() as client:
                ids = [client.post("/v1/runs", json={"goal": f"run {k}", "plan": slow_plan(k, STEPS, 0.25)}).json()["run_id"]
                       for k in range(6)]
                time.sleep(0.5)
                assert [client.get(f"/v1/runs/{run_id}").json()["status"] for run_id in ids] == ["running"] * 6
                during: list[str] = []
                with Prober(server.url, pause=0.1) as prober:
                    proxy.cut()
                    time.sleep(2.5)
                    answer = client.get(f"/v1/runs/{ids[0]}")  # a request that needs the store, while it is away
                    during.append(answer.text)
                    assert answer.status_code == 503, answer.text
                    time.sleep(2.5)
                    proxy.restore()
                    runs = [wait_status(client, run_id, {"interrupted", "completed", "failed"}, timeout=30) for run_id in ids]
                print(f"\n{backend} cut off for 5 s (retry budget 1 s): /healthz {prober.summary()}; runs {[r['status'] for r in runs]}")
                assert prober.slowest() < HEALTHZ_BOUND, prober.summary()
                assert sum(status == 503 for status, _ in prober.answers) >= 10, prober.summary()
                assert [r["status"] for r in runs] == ["interrupted"] * len(ids), [(r["status"], r["error"]) for r in runs]
                assert all("the run store failed" in r["error"] and "resume the run" in r["error"] for r in runs), runs
                # No message names where the store is: the runs' records, a request's 503, /healthz's 503s.
                messages = [client.get(f"/v1/runs/{run_id}").text for run_id in ids] + during + prober.texts
                for text in messages:
                    for secret in (where, url, f":{proxy.port}", f"port {proxy.port}", "127.0.0.1", "://"):
                        assert secret not in text, (secret, text)
                for run_id in ids:
                    assert client.post(f"/v1/runs/{run_id}/resume").status_code == 202
                runs = [wait_status(client, run_id, {"completed", "failed"}, timeout=60) for run_id in ids]
                assert [(r["status"], r["steps"]) for r in runs] == [("completed", STEPS + 1)] * len(ids), runs
            calls = {line for line in server.calls() if line.startswith("slow_echo")}
            assert {line.split()[1] for line in calls} == {f"run{k}-step{i}" for k in range(6) for i in range(STEPS)}
        finally:
            server.stop()
            proxy.stop()


def test_a_write_lock_another_process_holds_on_the_sqlite_store_never_holds_healthz(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with Server(home, "--no-builtins") as server, server.client() as client:
        run_id = client.post("/v1/runs", json={"goal": "locked out", "plan": slow_plan(0, 12, 0.25)}).json()["run_id"]
        time.sleep(0.3)
        other = sqlite3.connect(home / "runs.sqlite", isolation_level=None)
        with Prober(server.url) as prober:
            other.execute("BEGIN IMMEDIATE")  # its commits wait for this lock (up to the store's 10 s)
            time.sleep(3)
            other.execute("ROLLBACK")
            run = wait_status(client, run_id, {"completed", "failed", "interrupted"})
        other.close()
        print(f"\nSQLite write lock held 3 s by another process: /healthz {prober.summary()} {prober.worst()}")
        assert run["status"] == "completed", run
        assert prober.slowest() < HEALTHZ_BOUND, prober.summary()


class CollectorProbe:
    """Every pass of the garbage collector in this process while it is installed: how many objects
    it walked (what the pass costs, holding the GIL throughout), how many of them were a plan's
    instructions (a dict or a model with a ``seq_no``), and on which thread it ran."""

    def __init__(self) -> None:
        self.passes: list[tuple[int, int, int, str]] = []  # (generation, objects walked, instructions among them, thread)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            walked = [o for g in range(info["generation"] + 1) for o in gc.get_objects(generation=g)]
            self.passes.append((info["generation"], len(walked), sum(map(_an_instruction, walked)),
                                threading.current_thread().name))
            del walked

    def __enter__(self) -> CollectorProbe:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)

    def most(self) -> int:
        return max((walked for _, walked, _, _ in self.passes), default=0)

    def most_instructions(self) -> int:
        return max((found for _, _, found, _ in self.passes), default=0)


def _summary(answer: httpx.Response) -> dict:
    """A run's record as this test reads it while probing: the record (the whole plan) parsed with
    the collector paused and only its small fields kept, so that this test's own client never
    puts the plan's objects in front of a collection it counts."""
    with bulk.making():
        record = answer.json()
        summary = {key: record.get(key) for key in ("id", "status", "error", "steps")}
        del record  # freed while the collector is paused
    return summary


def _an_instruction(thing: object) -> bool:
    if type(thing) is dict:
        return "seq_no" in thing
    fields = getattr(type(thing), "model_fields", None)
    return isinstance(fields, dict) and "seq_no" in fields


def test_a_large_plan_posted_to_runs_never_holds_the_event_loop_or_healthz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 40_000
    body = json.dumps({"goal": "a large plan", "plan": big_plan(n)}).encode()
    # 20 ms of the loop thread's own CPU time (the collector's passes left out: see LoopServer).
    with LoopServer(tmp_path, monkeypatch, slow=0.02) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        # A small run first, read back: what a first request imports is not the plan's work.
        warm = client.post("/v1/runs", params={"wait": "true"}, json={"goal": "warm up", "plan": big_plan(3)}).json()
        client.get(f"/v1/runs/{warm['run_id']}", params={"steps": True})
        server.slow_steps.clear()
        gc.collect()
        before = len(gc.get_objects())  # what every full pass walks here before the plan comes
        with Prober(server.url) as prober, CollectorProbe() as collector:
            time.sleep(0.3)
            began = time.perf_counter()
            answer = client.post("/v1/runs", content=body, headers={"Content-Type": "application/json"})
            took = time.perf_counter() - began
            assert answer.status_code == 202, answer.text
            run = wait_status(client, answer.json()["run_id"], {"completed", "failed"}, read=_summary)
            detail = client.get(f"/v1/runs/{run['id']}", params={"steps": True})  # megabytes back: written out in a thread
            time.sleep(0.3)
        print(f"\n{n:,} instructions posted ({len(body) / 1e6:.1f} MB, answered in {took:.2f} s); /healthz: {prober.summary()}; "
              f"loop steps using over 20 ms: {len(server.slow_steps)}, longest {server.longest_step()} ms; collector passes: "
              f"{len(collector.passes)}, {sum(g == 2 for g, _, _, _ in collector.passes)} full, the most objects walked {collector.most():,} "
              f"({before:,} before the plan came), the most instructions walked {collector.most_instructions():,}")
        assert run["status"] == "completed", run
        assert detail.status_code == 200 and len(detail.json()["plan"]) == n
        assert len(prober.answers) >= 5, prober.answers
        # No work proportional to the plan on the event loop: parsing, checking, storing, answering
        # and freeing the plan's objects all in other threads.
        assert server.slow_steps == [], server.slow_steps
        # No pass of the collector walks the plan's objects: a pass holds the GIL for all it walks,
        # on whichever thread it lands (0.2-0.7 s each for 100,000 instructions, and a pass each time
        # the objects kept grow by a quarter). Counted as what it is, the plan's instructions among
        # the objects each pass walks (the warm-up run's few may be there), not as a total, which
        # also holds whatever other tests of the same worker process leave behind meanwhile.
        assert collector.most_instructions() < 100, [p for p in collector.passes if p[2] >= 100][:20]
        # As a client sees it, on a loaded machine.
        assert prober.slowest() < HEALTHZ_BOUND, prober.summary()

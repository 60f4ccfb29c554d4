"""`planvm worker` processes sharing one store on a real database server: kill -9, SIGSTOP past a
lease, and the database itself going away. Tools log each call, so a step that ran twice shows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from databases import mysql_store_url, postgres_store_url

from vm import RunStore

ROOT = Path(__file__).resolve().parents[2]
TOOLS = '''
import os, time
from tools import tool

@tool
def slow_step(run: str, step: int, seconds: float = 0.3, after: str = "") -> str:
    """Log the call, wait, return a mark.

    Args:
        run: Which run calls.
        step: Which step calls.
        seconds: How long to wait.
        after: The step before's mark (so the steps run one after another).
    """
    with open(os.environ["CALL_LOG"], "a") as f:
        f.write(f"{run} {step}\\n")
    time.sleep(seconds)
    return f"{run}:{step}"
'''


def plan(run: str, steps: int, seconds: float) -> list[dict]:
    chain = [
        {"seq_no": i, "type": "calling", "parameters": {
            "tool_name": "slow_step", "tool_params": {"run": run, "step": i, "seconds": seconds, **({"after": "${s%d}" % (i - 1)} if i else {})},
            "output_vars": [f"s{i}"]}}
        for i in range(steps)
    ]
    chain.append({"seq_no": steps, "type": "assign", "parameters": {"final_answer": " ".join("${s%d}" % i for i in range(steps))}})
    return chain


class Fleet:
    """Worker processes on one store URL, with the tool plugin and a call log."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.tools = tmp_path / "slow_tools.py"
        self.tools.write_text(TOOLS)
        self.log = tmp_path / "calls.log"
        self.env = {**os.environ, "CALL_LOG": str(self.log), "PLANVM_HOME": str(tmp_path)}
        self.procs: list[subprocess.Popen[str]] = []
        self.tmp = tmp_path
        self.engine = None

    def queue(self, run: str, steps: int, seconds: float) -> str:
        """Queue a run as `planvm exec --queue` does (the same Engine.enqueue, in this process)."""
        if self.engine is None:
            from planvm.engine import Engine

            self.engine = Engine({"store_path": self.url, "no_builtins": True, "plugins": [str(self.tools)]})
        return self.engine.enqueue(None, metadata={"plan_file": f"{run}.json"}, plan=plan(run, steps, seconds))

    def worker(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "planvm", "worker", "--store", self.url, "--no-builtins", "--plugin", str(self.tools),
             "--poll-seconds", "0.2", *args],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.procs.append(proc)
        return proc

    def calls(self) -> Counter:
        return Counter(self.log.read_text().splitlines()) if self.log.exists() else Counter()

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.close()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(params=["postgresql", "mysql"])
def store_url(request):
    with (postgres_store_url() if request.param == "postgresql" else mysql_store_url()) as url:
        yield url


def test_kill_9_a_worker_the_other_finishes_every_run_without_repeating_a_committed_step(store_url, tmp_path):
    fleet = Fleet(store_url, tmp_path)
    ids = {f"r{i}": fleet.queue(f"r{i}", 3, 0.15) for i in range(20)}
    store = RunStore(store_url, readonly=True)
    try:
        victim = fleet.worker("--concurrency", "2", "--lease-seconds", "1.5")
        wait_until(lambda: sum(fleet.calls().values()) >= 8, 60, "the first worker to get going")
        fleet.worker("--concurrency", "2", "--lease-seconds", "1.5")
        time.sleep(0.5)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        # What was committed at the kill must never run again.
        committed = {(run, s.seq_no) for run, run_id in ids.items() for s in store.get(run_id).steps if s.type == "calling"}
        wait_until(lambda: all(store.status_of(i) == "completed" for i in ids.values()), 120, "every run to complete")
        calls = fleet.calls()
        for run, step in committed:
            assert calls[f"{run} {step}"] == 1, f"committed step {run}/{step} ran {calls[f'{run} {step}']} times"
        repeated = [call for call, n in calls.items() if n > 1]
        assert len(repeated) <= 2, repeated  # at most the killed worker's steps in flight
        assert all(n <= 2 for n in calls.values())
        for run, run_id in ids.items():
            stored = store.get(run_id)
            assert stored.final_answer == f"{run}:0 {run}:1 {run}:2"
            assert [s.index for s in stored.steps] == list(range(4))
    finally:
        fleet.stop()


def test_a_worker_paused_past_its_lease_cannot_commit_late(store_url, tmp_path):
    fleet = Fleet(store_url, tmp_path)
    run_id = fleet.queue("p", 2, 1.5)
    store = RunStore(store_url, readonly=True)
    try:
        paused = fleet.worker("--lease-seconds", "1", "--grace-seconds", "0")
        wait_until(lambda: fleet.calls()["p 0"] == 1, 30, "the first worker to start the step")
        paused.send_signal(signal.SIGSTOP)
        time.sleep(1.5)  # its lease runs out
        fleet.worker("--lease-seconds", "5")
        wait_until(lambda: store.status_of(run_id) == "completed", 60, "the second worker to finish the run")
        paused.send_signal(signal.SIGCONT)
        time.sleep(3)  # its step finishes; its commit must be refused
        paused.terminate()
        out, _ = paused.communicate(timeout=30)
        assert "lost its lease" in out
        stored = store.get(run_id)
        assert [s.index for s in stored.steps] == [0, 1, 2] and stored.final_answer == "p:0 p:1"
    finally:
        fleet.stop()


def test_the_database_going_away_mid_run(tmp_path):
    """PostgreSQL gone for 3 s mid-run (its connections reset, new ones refused) behind a TCP
    proxy: the shared cluster itself keeps serving the tests running beside this one."""
    from tests.tcp_proxy import TcpProxy

    with postgres_store_url() as url:
        parts = urlsplit(url)
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
        user = parts.netloc.rpartition("@")[0]
        fleet = Fleet(urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{proxy.port}")), tmp_path)
        run_id = fleet.queue("d", 6, 0.7)
        try:
            worker = fleet.worker("--lease-seconds", "5")
            wait_until(lambda: fleet.calls()["d 1"] == 1, 30, "two steps to start")
            proxy.down()
            try:
                time.sleep(3)
            finally:
                proxy.restore()
            store = RunStore(url, readonly=True)
            wait_until(lambda: store.status_of(run_id) == "completed", 90, "the run to finish after the database came back")
            stored = store.get(run_id)
            assert stored.final_answer == " ".join(f"d:{i}" for i in range(6))
            calls = fleet.calls()
            assert all(calls[f"d {i}"] >= 1 for i in range(6)) and sum(calls.values()) <= 7
            worker.terminate()
            out, _ = worker.communicate(timeout=30)
            assert "unreachable" in out or "cannot reach" in out
        finally:
            fleet.stop()
            proxy.stop()


def test_a_server_that_only_queues_and_a_worker_behind_it(tmp_path):
    from httpx_sse import connect_sse

    from tests.serve_helpers import Server

    store = tmp_path / "shared.sqlite"
    fleet = Fleet(str(store), tmp_path)
    home = tmp_path / "server-home"
    home.mkdir()
    with Server(home, "--workers", "0", "--store", str(store), "--no-builtins", "--plugin", str(fleet.tools), env=fleet.env) as server:
        with server.client() as client:
            started = client.post("/v1/runs", json={"goal": "queued over HTTP", "plan": plan("h", 2, 0.2)})
            assert started.status_code == 202 and started.json()["status"] == "queued"
            run_id = started.json()["run_id"]
            time.sleep(0.5)
            assert client.get(f"/v1/runs/{run_id}").json()["status"] == "queued"  # nothing runs it in the server
            fleet.worker("--once")
            with connect_sse(client, "GET", f"/v1/runs/{run_id}/events") as source:
                events = [e for e in source.iter_sse() if e.event in {"step", "done"}]
            assert events[-1].event == "done" and json.loads(events[-1].data)["final_answer"] == "h:0 h:1"
            assert [json.loads(e.data)["index"] for e in events[:-1]] == [0, 1, 2]
            # Approval tools asked for in the request stay with the queued run: the worker waits too.
            gated = client.post("/v1/runs", json={"goal": "gated", "plan": plan("g", 1, 0.01), "approve_tools": ["slow_step"]}).json()
            fleet.worker("--once").wait(60)
            assert client.get(f"/v1/runs/{gated['run_id']}").json()["status"] == "waiting"
    fleet.stop()
    assert fleet.calls() == Counter({"h 0": 1, "h 1": 1})


def test_sigterm_gives_unfinished_runs_back_to_the_queue(tmp_path):
    with postgres_store_url() as url:
        fleet = Fleet(url, tmp_path)
        run_id = fleet.queue("t", 3, 1.0)
        store = RunStore(url, readonly=True)
        try:
            stopping = fleet.worker("--grace-seconds", "0")
            wait_until(lambda: fleet.calls()["t 1"] == 1, 30, "the second step to start")
            stopping.terminate()
            out, _ = stopping.communicate(timeout=30)
            assert stopping.returncode == 0 and "given back to the queue" in out
            run = store.get(run_id)
            assert run.status == "queued" and run.owner is None and [s.index for s in run.steps] == [0]
            fleet.worker("--once").wait(60)
            run = store.get(run_id)
            assert run.status == "completed" and run.final_answer == "t:0 t:1 t:2"
            assert fleet.calls()["t 0"] == 1  # the committed step did not run again
        finally:
            fleet.stop()

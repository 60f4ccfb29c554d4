"""The service keeps its word (in process, through FastAPI's TestClient): cancel, approve and resume
act on the run's status in the store, never on a map of this process; event streams read from a
cursor and share one poll per run; store calls never block the event loop; bad input is refused."""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from planvm.engine import Engine
from planvm.server import create_app
from tests.serve_helpers import TOOLS, slow_plan, wait_status
from vm import RunStore

ECHO = {"tool_name": "slow_echo", "tool_params": {"text": "draft", "seconds": 0.01}, "output_vars": ["d"]}


def mail_plan() -> list[dict[str, Any]]:
    return [
        {"seq_no": 0, "type": "calling", "parameters": ECHO},
        {"seq_no": 1, "type": "calling", "parameters": {"tool_name": "send_email", "tool_params": {"to": "ops@example.com", "body": "${d}"},
                                                        "output_vars": ["final_answer"]}},
    ]


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "calls.log"
    monkeypatch.setenv("PLANVM_TEST_CALL_LOG", str(log))
    return log


def service(tmp_path: Path, **kwargs: Any) -> tuple[TestClient, Engine]:
    engine = Engine({"store_path": str(tmp_path / "runs.sqlite"), "no_builtins": True, "plugins": [TOOLS],
                     "approve_tools": ["send_email"], **kwargs.pop("options", {})})
    return TestClient(create_app(engine, **kwargs)), engine


def sent(calls: Path) -> list[str]:
    return [line for line in calls.read_text().splitlines() if line.startswith("send_email")] if calls.exists() else []


def test_cancel_of_a_waiting_run_cancels_it_and_a_later_approve_runs_nothing(tmp_path, calls):
    client, engine = service(tmp_path)
    with client:
        run_id = client.post("/v1/runs", json={"goal": "mail", "plan": mail_plan()}).json()["run_id"]
        wait_status(client, run_id, {"waiting"})
        cancelled = client.post(f"/v1/runs/{run_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        approve = client.post(f"/v1/runs/{run_id}/approve?wait=true", json={"seq_no": 1, "approved": True})
        assert approve.status_code == 409 and "cancelled" in approve.json()["error"]["message"]
        assert sent(calls) == []
        run = client.get(f"/v1/runs/{run_id}").json()
        assert run["status"] == "cancelled" and run["final_answer"] is None
        # Cancelled is final: resume is refused too (fork to go on), and a second cancel says so.
        assert client.post(f"/v1/runs/{run_id}/resume").status_code == 409
        assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 409
        # Nothing of these runs stays in the process: no task, no watch.
        app_service = client.app.state.service
        assert app_service.tasks == {} and app_service.hub.watching() == 0
    engine.close()


def test_resume_after_a_reject_or_a_first_step_failure_is_not_busy(tmp_path, calls):
    client, engine = service(tmp_path)
    with client:
        run_id = client.post("/v1/runs", json={"goal": "mail", "plan": mail_plan()}).json()["run_id"]
        wait_status(client, run_id, {"waiting"})
        rejected = client.post(f"/v1/runs/{run_id}/approve?wait=true", json={"seq_no": 1, "approved": False, "reason": "no"})
        assert rejected.json()["status"] == "failed"
        again = client.post(f"/v1/runs/{run_id}/resume?wait=true")
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "waiting"  # it asks for the approval again
        bad = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "slow_echo", "tool_params": {"text": "x", "seconds": -1},
                                                                "output_vars": ["final_answer"]}}]
        failed = client.post("/v1/runs?wait=true", json={"goal": "bad", "plan": bad}).json()
        assert failed["status"] == "failed"
        resumed = client.post(f"/v1/runs/{failed['run_id']}/resume?wait=true")
        assert resumed.status_code == 200 and resumed.json()["status"] == "failed"
        assert client.app.state.service.tasks == {}
    engine.close()


def test_a_run_executed_by_another_process_can_be_cancelled_and_its_executor_stops(tmp_path, calls):
    client, engine = service(tmp_path)
    with client:
        other = RunStore(tmp_path / "runs.sqlite", owner="otherhost:4242:abcdef", lease_seconds=300)
        run_id = other.create_run(slow_plan(3, 0.01), goal="elsewhere")  # running, under a live lease of another process
        assert client.get(f"/v1/runs/{run_id}").json()["executor"] == "otherhost:4242:abcdef"
        assert client.post(f"/v1/runs/{run_id}/resume").status_code == 409  # busy: the lease says so
        assert client.post(f"/v1/runs/{run_id}/cancel").json()["status"] == "cancelled"
        from vm import RunCancelled, StepRecord

        with pytest.raises(RunCancelled):
            other.record_step(run_id, 0, StepRecord(0, "calling"))
        assert other.head(run_id)["steps"] == 0
    engine.close()


def test_limits_of_a_queued_run_are_kept_and_only_lowered(tmp_path, calls):
    client, engine = service(tmp_path, execute=False)
    with client:
        run_id = client.post("/v1/runs", json={"goal": "slow", "plan": slow_plan(6, 0.0), "limits": {"max_steps": 2}}).json()["run_id"]
        stored = engine.store.get(run_id)
        assert stored.status == "queued" and stored.limits["max_steps"] == 2
        too_high = client.post("/v1/runs", json={"goal": "x", "plan": slow_plan(1, 0.0), "limits": {"max_steps": 10**6}})
        assert too_high.status_code == 422
    engine.close()
    from planvm.worker import Worker
    import asyncio

    with Engine({"store_path": str(tmp_path / "runs.sqlite"), "no_builtins": True, "plugins": [TOOLS]}, role="worker") as worker_engine:
        asyncio.run(Worker(worker_engine, concurrency=1, poll_seconds=0.05, grace_seconds=1, once=True).serve())
        run = worker_engine.store.get(run_id)
    assert run.status == "failed" and len(run.steps) == 2 and "step budget of 2" in run.error


def test_a_queue_only_server_leaves_workers_runs_alone_when_it_starts(tmp_path, calls):
    worker = RunStore(tmp_path / "runs.sqlite", owner="worker", lease_seconds=0.01)
    run_id = worker.create_run(slow_plan(1, 0.0), goal="a worker's")
    time.sleep(0.05)  # its lease ran out: the worker died
    client, engine = service(tmp_path, execute=False)
    with client:
        assert client.get(f"/v1/runs/{run_id}").json()["status"] == "running"  # left for a worker to take
    assert engine.store.claim_next() == run_id
    engine.close()


def test_event_streams_share_one_poll_and_read_only_what_is_new(tmp_path, calls):
    client, engine = service(tmp_path)
    reads: dict[str, int] = {"head": 0, "get_with_steps": 0, "steps_read": 0}
    store = engine.store
    head, get, page = store.head, store.get, store.steps_page

    def counted_head(*a, **k):
        reads["head"] += 1
        return head(*a, **k)

    def counted_get(run_id, *, steps=True):
        reads["get_with_steps"] += steps
        return get(run_id, steps=steps)

    def counted_page(*a, **k):
        found = page(*a, **k)
        reads["steps_read"] += len(found)
        return found

    store.head, store.get, store.steps_page = counted_head, counted_get, counted_page
    with client:
        run_id = client.post("/v1/runs?wait=true", json={"goal": "g", "plan": slow_plan(30, 0.0)}).json()["run_id"]
        reads.update(head=0, get_with_steps=0, steps_read=0)
        results: list[list[dict[str, Any]]] = []

        def read() -> None:
            with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
                events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
            results.append(events)

        readers = [threading.Thread(target=read) for _ in range(5)]
        for r in readers:
            r.start()
        for r in readers:
            r.join(30)
    assert len(results) == 5 and all(len(events) == 1 + 31 + 2 for events in results)
    assert all(events[-1]["final_answer"] == events[-2 - 1]["outputs"]["final_answer"] for events in results)
    assert reads["get_with_steps"] == 0  # never the whole run at once
    assert reads["steps_read"] <= 5 * 31 + 31  # each stream its history once, the outcome once
    assert reads["head"] <= 5  # one watch for the run (one per opening, at most)
    engine.close()


def test_healthz_answers_503_fast_while_the_store_hangs_and_the_loop_stays_free(tmp_path, calls):
    client, engine = service(tmp_path)
    hang = threading.Event()
    ping = engine.store.ping

    def stuck_ping():
        hang.wait(10)
        return ping()

    with client:
        assert client.get("/healthz").json()["ok"] is True
        engine.store.ping = stuck_ping
        took = []
        for _ in range(3):
            began = time.perf_counter()
            answer = client.get("/healthz")
            took.append(time.perf_counter() - began)
            assert answer.status_code == 503 and "did not answer within 50 ms" in answer.json()["store"]
        assert max(took) < 0.5
        hang.set()
        time.sleep(0.1)
        assert client.get("/healthz").status_code == 200
    engine.close()


def test_validating_a_large_plan_does_not_block_healthz(tmp_path, monkeypatch):
    """The check runs in a worker thread: no step of the event loop does work proportional to the
    plan (timed in the loop thread's CPU time, which this machine's other load does not change)."""
    import httpx

    from tests.loop_probe import LoopServer

    plan = [{"seq_no": i, "type": "assign", "parameters": {f"v{i}": f"${{v{i - 1}}} + 1" if i else 0}} for i in range(40_000)]
    plan.append({"seq_no": 40_000, "type": "assign", "parameters": {"final_answer": "${v39999}"}})
    with LoopServer(tmp_path, monkeypatch, slow=0.05, max_plan_bytes=64 * 1024 * 1024) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        client.post("/v1/validate", json={"plan": plan[:3]})  # what a first request sets up (models, imports) is not the plan's work
        server.slow_steps.clear()
        result = client.post("/v1/validate", json={"plan": plan}).json()
        assert client.get("/healthz").status_code == 200
    assert result["valid"] is True
    assert server.slow_steps == [], server.slow_steps


def test_smaller_edges(tmp_path, calls, caplog):
    client, engine = service(tmp_path, token="s3cret-token")
    auth = {"Authorization": "Bearer s3cret-token"}
    with client:
        assert client.get("/v1/runs").status_code == 401
        assert client.head("/healthz").status_code == 200
        health = client.get("/healthz").text
        assert str(tmp_path) not in health and "runs.sqlite" not in health
        missing = client.get("/v1/runs/feedfacefeedface", headers=auth)
        assert missing.status_code == 404 and str(tmp_path) not in missing.text and "runs.sqlite" not in missing.text
        run_id = client.post("/v1/runs", json={"goal": "mail", "plan": mail_plan()}, headers=auth).json()["run_id"]
        client.headers.update(auth)
        wait_status(client, run_id, {"waiting"})
        yes = client.post(f"/v1/runs/{run_id}/approve", json={"seq_no": 1, "approved": "yes"}, headers=auth)
        assert yes.status_code == 422 and "approved" in yes.text
        negative = client.post(f"/v1/runs/{run_id}/approve", json={"seq_no": -3, "approved": True}, headers=auth)
        assert negative.status_code == 409  # a seq_no a plan may have; this run waits at seq_no 1
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(3):
                invalid = client.post("/v1/runs", json={"goal": "x", "plan": [{"seq_no": 0, "type": "nope"}]}, headers=auth)
                assert invalid.status_code == 422
            gc.collect()
        assert "never retrieved" not in caplog.text
    engine.close()
    with pytest.raises(ValueError, match="blank"):
        create_app(Engine({"store_path": str(tmp_path / "r2.sqlite"), "no_builtins": True}), token="  ")


def test_a_stream_whose_window_starts_past_the_stored_steps_does_not_spin(tmp_path):
    """A resume drops a failed step, so the store can hold fewer steps than a watch counted: the
    stream reads what there is, then goes on from the window (no busy loop, no hang)."""
    import asyncio

    from planvm.engine.events import SPAN, Event, EventHub, run_events
    from vm import StepRecord

    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(slow_plan(3, 0.0))
    for i in range(2):
        record = StepRecord(i, "calling")
        record.outputs = {"r": i}
        store.record_step(run_id, i, record)
    reads: list[int] = []

    async def io(name: str, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)  # as a thread hop would: a stream that spun would still let the test go on
        if name == "steps_page":
            reads.append(args[1])
        return getattr(store, name)(*args, **kwargs)

    async def main() -> list[Event]:
        hub = EventHub(io)
        watch = hub.watch(run_id)
        watch.started, watch.floor, watch.committed, watch.status = True, 3, 3, "running"  # counted 3, the store has 2
        watch.active = True  # no poller needed: this test feeds the window
        seen: list[Event] = []

        async def read() -> None:
            async for event in run_events(hub, run_id):
                seen.append(event)

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.2)
        watch.add(Event(3 * SPAN + 999_999, "done", {"status": "failed"}))
        await asyncio.wait_for(reader, 5)
        return seen

    seen = asyncio.run(main())
    assert [e.event for e in seen] == ["run", "step", "step", "done"]
    assert len(reads) <= 3  # the history was read, once past its end, not in a loop

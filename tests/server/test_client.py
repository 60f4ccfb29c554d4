"""planvm.Client against a real `planvm serve` process: the same shapes as the engine in-process,
paging, event streams, approvals, and the service's errors as ServiceError. No fakes."""

from __future__ import annotations

import pytest
from serve_helpers import Server, slow_plan

from planvm import Client, ServiceError
from planvm.engine.shapes import RunDetail, RunOutcome

PLAN = [{"seq_no": 0, "type": "assign", "parameters": {"a": 2}},
        {"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${a} * 21"}}]
APPROVAL = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "send_email", "tool_params": {"to": "x@y", "body": "hi"},
                                                              "output_vars": "sent"}},
            {"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${sent}"}}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("client"), "--token", "client-secret-token") as s:
        yield s


def test_runs_read_the_same_as_in_process(server):
    with Client(server.url, token="client-secret-token") as client:
        outcome = client.run(plan=PLAN, goal="forty-two")
        assert isinstance(outcome, RunOutcome)
        assert (outcome.status, outcome.final_answer, outcome.steps) == ("completed", 42, 2)
        detail = client.get_run(outcome.run_id, steps=True)
        assert isinstance(detail, RunDetail) and detail.goal == "forty-two" and detail.steps == 2 and len(detail.trace) == 2
        started = client.run(plan=slow_plan(3, 0.05), wait=False)
        events = list(client.events(started["run_id"]))
        assert events[-1]["event"] == "done" and events[-1]["data"]["status"] == "completed"
        assert [e["data"]["index"] for e in events if e["event"] == "step" and e["data"].get("phase") == "finished"] == [0, 1, 2, 3]
        ids = [r.id for r in client.runs(page_size=1)]  # paged one at a time, newest first
        assert ids[:2] == [started["run_id"], outcome.run_id]


def test_approvals_and_cancel(server):
    with Client(server.url, token="client-secret-token") as client:
        waiting = client.run(plan=APPROVAL, approve_tools=["send_email"])
        assert waiting.status == "waiting" and waiting.pending["seq_no"] == 0
        client.approve(waiting.run_id, 0, approved=False, reason="not today")
        final = [e for e in client.events(waiting.run_id)][-1]["data"]
        assert final["status"] == "failed" and "not today" in final["error"]
        again = client.run(plan=APPROVAL, approve_tools=["send_email"])
        assert client.cancel(again.run_id)["status"] == "cancelled"
        with pytest.raises(ServiceError) as refused:
            client.approve(again.run_id, 0)
        assert refused.value.status == 409


def test_errors_come_back_as_service_errors(server):
    with Client(server.url, token="client-secret-token") as client:
        with pytest.raises(ServiceError) as missing:
            client.get_run("nope")
        assert (missing.value.status, missing.value.kind) == (404, "RunNotFound")
        with pytest.raises(ServiceError) as invalid:
            client.run(plan=[{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "nope", "tool_params": {}}}])
        assert invalid.value.status == 422 and any("nope" in p for p in invalid.value.problems)
        assert client.validate(PLAN) == {"valid": True, "problems": []}
    with Client(server.url, token="wrong") as intruder, pytest.raises(ServiceError) as denied:
        intruder.get_run("nope")
    assert denied.value.status == 401
    with Client("http://127.0.0.1:9", timeout=2) as nowhere, pytest.raises(ServiceError, match="cannot be reached"):
        nowhere.get_run("x")

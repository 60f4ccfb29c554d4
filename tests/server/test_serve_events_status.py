"""What an event stream says of a run before it executes: a goal being planned streams `planning`
first, then `running` once its plan starts (in process; the planner's model is the scripted
chat-completions server, its reply held until the test releases it)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from planvm.engine import Engine
from planvm.server import create_app
from planner.prompt import format_completion
from tests.fake_openai import FakeChatServer
from tests.serve_helpers import TOOLS

PLAN = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "slow_echo", "tool_params": {"text": "hi", "seconds": 0},
                                                        "output_vars": ["final_answer"]}}]


def test_a_planning_run_streams_planning_first_then_running(tmp_path: Path, monkeypatch) -> None:
    release = threading.Event()

    def held_plan(_request: dict[str, Any]) -> str:  # the plan, once the test has looked at the stream
        assert release.wait(30)
        return format_completion("echo it", PLAN)

    with FakeChatServer() as model:
        model.responder = held_plan
        monkeypatch.setenv("PLANVM_LLM_BASE_URL", model.url)
        monkeypatch.setenv("PLANVM_LLM_MODEL", "m")
        engine = Engine({"store_path": str(tmp_path / "runs.sqlite"), "no_builtins": True, "plugins": [TOOLS]})
        with TestClient(create_app(engine)) as client:
            run_id = client.post("/v1/runs", json={"goal": "say hi", "planner": "llm"}).json()["run_id"]
            assert client.get(f"/v1/runs/{run_id}").json()["status"] == "planning"
            events: list[tuple[str, dict[str, Any]]] = []
            first = threading.Event()
            reader = threading.Thread(target=read, args=(client, run_id, events, first))
            reader.start()
            assert first.wait(10)
            assert events[0] == ("run", {"run_id": run_id, "status": "planning"})  # while the planner works
            release.set()
            reader.join(30)
        engine.close()
    statuses = [data["status"] for kind, data in events if kind == "run"]
    assert statuses == ["planning", "running", "completed"], events
    assert events[-1][0] == "done" and events[-1][1]["final_answer"] == "hi"


def read(client: TestClient, run_id: str, events: list[tuple[str, dict[str, Any]]], first: threading.Event) -> None:
    """The run's event stream to its end, as (event, data) pairs; ``first`` is set at the first."""
    with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                first.set()

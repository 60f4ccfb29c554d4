"""Streamed planning (planvm.engine.streamed): calls start while the planner writes the plan, and
the run records what plan-then-run records.

The planner model is a scripted chat-completions server on loopback (tests/fake_openai.py, the
fake at the edge) streaming the plan in small pieces at a set pace; the tools are real tools that
log when they start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeChatServer, chat_reply, stream

from planvm.engine import Engine
from tools import tool
from vm import CallContext

PAUSE = 0.02  # seconds between pieces of the planner's reply
PIECE = 12  # characters a piece

started: list[tuple[str, str, float]] = []  # (tool, argument, time.monotonic())


@tool
async def search(query: str) -> str:
    """Look something up.

    Args:
        query: What to look up.
    """
    started.append(("search", query, time.monotonic()))
    await asyncio.sleep(0.15)
    return f"found {query}"


@tool
async def ask(prompt: str, ctx: CallContext) -> str:
    """Ask the model.

    Args:
        prompt: The question.
    """
    started.append(("ask", prompt, time.monotonic()))
    reply = await ctx.llm.acomplete(prompt)
    return reply.text


@tool(side_effects=True)
def write_file(path: str, text: str) -> str:
    """Write a file.

    Args:
        path: Where.
        text: What.
    """
    started.append(("write_file", path, time.monotonic()))
    Path(path).write_text(text, encoding="utf-8")
    return "written"


def call(seq: int, name: str, params: dict[str, Any], out: str) -> dict[str, Any]:
    return {"seq_no": seq, "type": "calling", "parameters": {"tool_name": name, "tool_params": params, "output_vars": [out]}}


def assign(seq: int, **values: Any) -> dict[str, Any]:
    return {"seq_no": seq, "type": "assign", "parameters": values}


SHAPES = {
    "chain": [call(0, "search", {"query": "a"}, "a"), call(1, "search", {"query": "then ${a}"}, "b"),
              call(2, "ask", {"prompt": "sum up ${b}"}, "c"), assign(3, final_answer="${c}")],
    "fan-out and join": [call(0, "search", {"query": "x"}, "x"), call(1, "search", {"query": "y"}, "y"),
                         call(2, "search", {"query": "z"}, "z"), call(3, "ask", {"prompt": "join ${x} ${y} ${z}"}, "j"),
                         assign(4, final_answer="${j}")],
    "loop": [assign(0, i=0, seen=""), call(1, "search", {"query": "round ${i}"}, "hit"),
             assign(2, i="${i} + 1", seen="${seen} ${hit}"),
             {"seq_no": 3, "type": "jmp", "parameters": {"condition": "${i} < 3", "jump_if_true": 1}},
             assign(4, final_answer="${seen}")],
    "forward jump": [call(0, "search", {"query": "first"}, "f"),
                     {"seq_no": 1, "type": "jmp", "parameters": {"target_seq": 4}},
                     call(2, "search", {"query": "skipped"}, "s"), call(3, "search", {"query": "skipped too"}, "t"),
                     call(4, "search", {"query": "after ${f}"}, "g"), assign(5, final_answer="${g}")],
}


def reply_of(plan: list[dict[str, Any]]) -> str:
    return f"<think>as planned</think>\nThe plan:\n```json\n{json.dumps(plan, indent=1)}\n```"


def paced(text: str) -> tuple[Any, ...]:
    return stream([text[i:i + PIECE] for i in range(0, len(text), PIECE)], pause=PAUSE)


@pytest.fixture
def model(monkeypatch):
    """The scripted model: planner replies are queued per test; every other request (the ask
    tool) is answered from its prompt."""
    with FakeChatServer() as server:
        server.responder = lambda body: "answer to " + body["messages"][-1]["content"][-40:]
        monkeypatch.setenv("PLANVM_LLM_BASE_URL", server.url)
        monkeypatch.setenv("PLANVM_LLM_MODEL", "planner")
        started.clear()
        yield server


def engine_at(folder: Path, **options: Any) -> Engine:
    engine = Engine({"store_path": str(folder / "runs.sqlite"), "no_builtins": True, "no_library": True, **options})
    for t in (search, ask, write_file):
        engine.registry.register(t)
    return engine


_TIMING = {"started_at", "duration_s", "finished_at", "created_at"}


def recorded(engine: Engine, run_id: str) -> dict[str, Any]:
    """What a run stores, less what differs between any two runs (ids, times)."""
    run = engine.store.get(run_id)
    steps = [{k: v for k, v in dataclasses.asdict(s).items() if k not in _TIMING} for s in run.steps]
    planning = {k: v for k, v in run.planning.items() if k not in ("seconds", "arrivals", "early_calls")}
    return {"status": run.status, "final_answer": run.final_answer, "plan": run.plan, "planning": planning,
            "steps": [json.loads(json.dumps(s, default=str)) for s in steps]}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_streamed_run_records_what_plan_then_run_records(tmp_path, model, shape):
    plan = SHAPES[shape]
    text = reply_of(plan)
    model.actions.append(("json", 200, chat_reply(text)))
    with engine_at(tmp_path / "whole") as engine:
        whole = asyncio.run(engine.run_goal("do it"))
        expected = recorded(engine, whole.run_id)
    calls_whole = sorted((name, arg) for name, arg, _ in started)
    started.clear()
    model.actions.append(paced(text))
    with engine_at(tmp_path / "streamed") as engine:
        began = time.monotonic()
        streamed = asyncio.run(engine.run_goal("do it", stream_plan=True))
        got = recorded(engine, streamed.run_id)
        planning = engine.store.get(streamed.run_id).planning
    assert whole.status == streamed.status == "completed", (whole.error, streamed.error)
    assert got == expected
    assert sorted((name, arg) for name, arg, _ in started) == calls_whole  # each call made once, the same ones
    # When each instruction arrived is kept, in order; the first call started before the plan was whole.
    arrivals = planning["arrivals"]
    assert list(arrivals) == [str(ins["seq_no"]) for ins in plan]
    assert list(arrivals.values()) == sorted(arrivals.values())
    first_call = min(at for _, _, at in started) - began
    assert first_call < arrivals[str(plan[-1]["seq_no"])] < planning["seconds"] + 0.01
    assert planning["early_calls"] and set(planning["early_calls"]) <= {ins["seq_no"] for ins in plan}


def test_a_jump_waits_for_its_target_and_the_steps_it_skips_never_start(tmp_path, model):
    model.actions.append(paced(reply_of(SHAPES["forward jump"])))
    with engine_at(tmp_path) as engine:
        began = time.monotonic()
        result = asyncio.run(engine.run_goal("do it", stream_plan=True))
        planning = engine.store.get(result.run_id).planning
    assert result.final_answer == "found after found first"
    assert [arg for _, arg, _ in started] == ["first", "after found first"]  # never "skipped", "skipped too"
    after = next(at for _, arg, at in started if arg == "after found first") - began
    # seq 4 started once it arrived (after the jmp to it), before the plan was whole
    assert planning["arrivals"]["4"] <= after + 0.05 and after < planning["arrivals"]["5"]
    assert planning["early_calls"] == [0, 4]


def test_the_calls_a_run_takes_count_against_its_llm_budget(tmp_path, model):
    model.actions.append(paced(reply_of(SHAPES["chain"])))
    with engine_at(tmp_path, max_llm_calls=0) as engine:
        result = asyncio.run(engine.run_goal("do it", stream_plan=True))
    assert result.status == "failed" and "LLM-call budget of 0" in str(result.error)


def test_side_effecting_tools_wait_for_the_whole_plan_and_so_does_what_follows_them(tmp_path, model):
    target = tmp_path / "out.txt"
    plan = [call(0, "write_file", {"path": str(target), "text": "hi"}, "w"), call(1, "search", {"query": "q"}, "s"),
            assign(2, final_answer="${w} ${s}")]
    model.actions.append(paced(reply_of(plan)))
    with engine_at(tmp_path) as engine:
        began = time.monotonic()
        result = asyncio.run(engine.run_goal("do it", stream_plan=True))
        planning = engine.store.get(result.run_id).planning
    assert result.final_answer == "written found q"
    assert planning["early_calls"] == []
    assert [name for name, _, _ in started] == ["write_file", "search"]
    assert started[0][2] - began >= planning["seconds"]  # once the plan was whole and valid


def test_a_tool_that_needs_approval_is_not_started_early(tmp_path, model):
    model.actions.append(paced(reply_of([call(0, "search", {"query": "q"}, "s"), assign(1, final_answer="${s}")])))
    with engine_at(tmp_path) as engine:
        result = asyncio.run(engine.run_goal("do it", stream_plan=True, approve_tools=["search"]))
    assert result.status == "waiting" and started == []


def test_a_plan_from_the_library_is_not_streamed(tmp_path, model):
    plan = SHAPES["chain"]
    model.actions.append(("json", 200, chat_reply(reply_of(plan))))
    from planner.library import PlanLibrary

    with Engine({"store_path": str(tmp_path / "runs.sqlite"), "no_builtins": True}) as engine:
        for t in (search, ask, write_file):
            engine.registry.register(t)
        engine._library = PlanLibrary(engine.store)  # goals matched by their words: no embedding model to load
        first = asyncio.run(engine.run_goal("do it"))
        engine.library.keep(engine.store.get(first.run_id))
        planner_requests = sum(1 for r in model.requests if "stream" in r or "plan" in json.dumps(r.get("response_format") or {}))
        again = asyncio.run(engine.run_goal("do it", stream_plan=True))
        planning = engine.store.get(again.run_id).planning
    assert again.status == "completed" and planning["planner"] == "library"
    assert "arrivals" not in planning and "early_calls" not in planning
    assert sum(1 for r in model.requests if "stream" in r or "plan" in json.dumps(r.get("response_format") or {})) == planner_requests


def test_http_and_mcp_stream_the_plan_when_asked(tmp_path, model):
    from fastapi.testclient import TestClient
    from mcp import Client

    from planvm.mcp.server import build_server
    from planvm.server import create_app

    plan = SHAPES["fan-out and join"]
    with engine_at(tmp_path) as engine:
        with TestClient(create_app(engine)) as client:
            model.actions.append(paced(reply_of(plan)))
            by_http = client.post("/v1/runs?wait=true", json={"goal": "do it", "stream_plan": True}).json()
            shown_http = client.get(f"/v1/runs/{by_http['run_id']}").json()
            refused = client.post("/v1/runs", json={"goal": "do it", "stream_plan": "yes"})

        async def over_mcp() -> dict[str, Any]:
            async with Client(build_server(engine)) as mcp:
                model.actions.append(paced(reply_of(plan)))
                return (await mcp.call_tool("run_goal", {"goal": "do it", "stream_plan": True})).structured_content

        by_mcp = asyncio.run(over_mcp())
        shown_mcp = engine.store.get(by_mcp["run_id"]).planning
    assert by_http["final_answer"] == by_mcp["final_answer"] == "answer to " + f"join found x found y found z"[-40:]
    for planning in (shown_http["planning"], shown_mcp):
        assert list(planning["arrivals"]) == ["0", "1", "2", "3", "4"] and planning["early_calls"][:3] == [0, 1, 2]
    assert refused.status_code == 422

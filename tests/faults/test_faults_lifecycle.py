"""A run's lifecycle under faults nobody scripted: its limits kept through every way of going on
with it (a kill, a resume, an approval, a fork), a run whose process died while it was being
planned, and a cancel racing an approval from another process on every store backend.

Real processes where the fault is a process: ``planvm exec`` and ``planvm serve`` killed with
SIGKILL, ``planvm run`` stopped with SIGINT, two processes racing. The only fake is the scripted
model server (tests/fake_openai.py) where a planner is needed."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from databases import BACKENDS, store_url_for
from fake_openai import FakeChatServer, chat_reply
from serve_helpers import ROOT, TOOLS, Server

from planvm.engine import Engine
from vm import RunStateError, RunStore
from vm.errors import StepLimitExceeded, TimeLimitExceeded

pytestmark = pytest.mark.faults


def echo(seq: int, seconds: float, text: str = "start") -> dict[str, Any]:
    return {"seq_no": seq, "type": "calling", "parameters": {"tool_name": "slow_echo", "tool_params": {"text": text, "seconds": seconds},
                                                            "output_vars": ["r"]}}


def steps(n: int, seconds: float, *, first: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """A plan of ``n`` steps after ``first`` (the last one assigns the answer): far more than the
    budgets the tests give, so only a budget stops it early."""
    head = first or []
    k = len(head)
    # Each step reads the one before: one at a time, never overlapping.
    return [*head, *(echo(k + i, seconds, "${r}" if i else "start") for i in range(n - 1)),
            {"seq_no": k + n - 1, "type": "assign", "parameters": {"final_answer": "${r}"}}]


def engine(store: Path | str, **options: Any) -> Engine:
    return Engine({"store_path": str(store), "plugins": [TOOLS], "no_builtins": True, **options})


def write_plan(folder: Path, plan: list[dict[str, Any]]) -> str:
    path = folder / "plan.json"
    path.write_text(json.dumps(plan), encoding="utf-8")
    return str(path)


def wait_for(check: Any, seconds: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# --- 3. a run's limits are its own, through every way of going on with it -------------------------

def test_a_run_killed_and_resumed_keeps_its_max_steps_over_its_whole_life(tmp_path: Path) -> None:
    store_path = tmp_path / "runs.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PLANVM_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "planvm", "exec", write_plan(tmp_path, steps(40, 0.2)), "--max-steps", "12",
                             "--plugin", TOOLS, "--no-builtins", "--store", str(store_path)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_id = wait_for(lambda: (runs := _runs(store_path)) and runs[0]["steps"] >= 3 and runs[0]["id"], what="3 steps")
    finally:
        proc.send_signal(signal.SIGKILL)  # kill -9: nothing of the process runs after this
        proc.wait(10)
    before = RunStore(store_path).head(run_id)["steps"]
    assert before < 12

    with engine(store_path) as plain:  # no limits given: the run's own
        result = asyncio.run(asyncio.wait_for(plain.resume(run_id), 20))
    assert result.status == "failed" and isinstance(result.error, StepLimitExceeded), result.error
    assert len(result.trace) == 12 and RunStore(store_path).head(run_id)["steps"] == 12  # 12 in all, not 12 more


def test_limits_given_on_resume_only_lower_the_runs_own(tmp_path: Path) -> None:
    store_path = tmp_path / "runs.sqlite"
    ids = []
    with engine(store_path) as first:
        for _ in range(2):
            async def interrupted() -> str:
                started: list[str] = []
                task = asyncio.create_task(first.exec_plan(steps(40, 0.05), limits={"max_steps": 12},
                                                           listener=_listener(started)))
                wait = time.monotonic() + 10
                while not (started and first.store.head(started[0])["steps"] >= 2) and time.monotonic() < wait:
                    await asyncio.sleep(0.01)
                task.cancel()  # as Ctrl-C does: the run is kept as interrupted
                await asyncio.gather(task, return_exceptions=True)
                return started[0]

            ids.append(asyncio.run(interrupted()))
    lower, higher = ids
    assert RunStore(store_path).head(lower)["status"] == "interrupted"
    with engine(store_path, max_steps=8) as stricter:
        result = asyncio.run(asyncio.wait_for(stricter.resume(lower), 20))
    assert isinstance(result.error, StepLimitExceeded) and len(result.trace) == 8
    notes: list[str] = []
    with Engine({"store_path": str(store_path), "plugins": [TOOLS], "no_builtins": True, "max_steps": 500},
                notify=notes.append) as looser:
        result = asyncio.run(asyncio.wait_for(looser.resume(higher), 20))
    assert isinstance(result.error, StepLimitExceeded) and len(result.trace) == 12  # clamped to the run's 12
    assert any("keeps its own max_steps of 12" in n and "500" in n for n in notes), notes


def _runs(store_path: Path) -> list[dict[str, Any]]:
    """The newest run of a store another process may be creating (none while it is not made yet)."""
    from vm import StoreError

    try:
        with RunStore(store_path, readonly=True) as store:
            return store.list_runs(1)
    except StoreError:
        return []


def _listener(started: list[str]) -> Any:
    from vm import RunListener

    return RunListener(on_start=started.append)


def test_max_seconds_counts_the_runs_execution_over_its_life_not_per_resume(tmp_path: Path) -> None:
    store_path = tmp_path / "runs.sqlite"
    with engine(store_path) as first:
        async def interrupted() -> str:
            started: list[str] = []
            task = asyncio.create_task(first.exec_plan(steps(40, 0.1), limits={"max_seconds": 1.0}, listener=_listener(started)))
            await asyncio.sleep(0.6)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return started[0]

        run_id = asyncio.run(interrupted())
    used = sum(s.duration_s for s in RunStore(store_path).get(run_id).steps)  # one step at a time
    before = RunStore(store_path).head(run_id)["steps"]
    assert 0.3 < used < 0.8
    time.sleep(0.5)  # stopped: not counted
    with engine(store_path) as plain:
        began = time.monotonic()
        result = asyncio.run(asyncio.wait_for(plain.resume(run_id), 10))
        took = time.monotonic() - began
    assert result.status == "failed" and isinstance(result.error, TimeLimitExceeded), result.error
    assert "budget of 1 s" in str(result.error)
    assert took < 1.0 - used + 0.5  # what was left of the run's second, not a second more
    assert len(result.trace) >= before + 2  # it did go on: the time it was stopped is not counted


def test_an_approved_run_keeps_its_max_steps(tmp_path: Path) -> None:
    store_path = tmp_path / "runs.sqlite"
    send = {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "send_email", "tool_params": {"to": "a@b", "body": "hi"},
                                                          "output_vars": ["sent"]}}
    plan = steps(40, 0.0, first=[send])
    with engine(store_path) as first:
        waiting = asyncio.run(first.exec_plan(plan, limits={"max_steps": 3}, approve_tools=["send_email"]))
    assert waiting.status == "waiting"
    with engine(store_path) as plain:
        result = asyncio.run(asyncio.wait_for(plain.approve(waiting.run_id, 0, True), 20))
    assert isinstance(result.error, StepLimitExceeded) and len(result.trace) == 3


def test_a_fork_goes_on_under_its_parents_limits(tmp_path: Path) -> None:
    store_path = tmp_path / "runs.sqlite"
    plan = steps(40, 0.0, first=[{"seq_no": 0, "type": "assign", "parameters": {"x": 1}}])
    with engine(store_path) as first:
        parent = asyncio.run(first.exec_plan(plan, limits={"max_steps": 5}))
    assert isinstance(parent.error, StepLimitExceeded)
    with engine(store_path) as plain:
        fork = asyncio.run(asyncio.wait_for(plain.fork(parent.run_id, 1, plan=plan), 20))
    assert isinstance(fork.error, StepLimitExceeded) and len(fork.trace) == 5
    assert RunStore(store_path).get(fork.run_id).limits["max_steps"] == 5

    with engine(store_path) as plain:  # a live replay re-executes the plan under the run's limits too
        from vm import replay_live

        live = replay_live(RunStore(store_path).get(parent.run_id), plain.vm)
    assert isinstance(live.result.error, StepLimitExceeded) and len(live.result.trace) == 5


# --- 4. a run whose planner stopped: abandoned, planned again ------------------------------------

SAY_HI = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "hi"}}]


def planner_env(server: FakeChatServer, home: Path) -> dict[str, str]:
    return {"PLANVM_HOME": str(home), "PLANVM_LLM_BASE_URL": server.url, "PLANVM_LLM_MODEL": "planner", "PLANVM_LLM_MAX_RETRIES": "0",
            "PLANVM_LLM_TIMEOUT": "120", "PYTHONPATH": str(ROOT)}


def plan_reply(plan: list[dict[str, Any]] = SAY_HI) -> str:
    return f"```json\n{json.dumps(plan)}\n```"


def test_a_run_whose_server_was_killed_while_planning_is_abandoned_and_planned_again_on_resume(tmp_path: Path) -> None:
    with FakeChatServer() as model:
        model.actions.append(("sleep", 20, chat_reply(plan_reply())))  # the planner is still answering at the kill
        model.responder = lambda _body: plan_reply()
        env = planner_env(model, tmp_path)
        first = Server(tmp_path, "--no-builtins", env=env).start()
        try:
            with first.client() as client:
                started = client.post("/v1/runs", json={"goal": "say hi", "planner": "llm"})
                assert started.status_code == 202, started.text
                run_id = started.json()["run_id"]
            wait_for(lambda: model.requests, what="the planner's request")
        finally:
            first.kill()  # kill -9 while the planner answers
        assert RunStore(tmp_path / "runs.sqlite").head(run_id)["status"] == "planning"
        with Server(tmp_path, "--no-builtins", env=env) as second, second.client() as client:
            shown = client.get(f"/v1/runs/{run_id}").json()
            assert shown["status"] == "interrupted" and "resume it to plan it again" in shown["error"]
            resumed = client.post(f"/v1/runs/{run_id}/resume?wait=true")
            assert resumed.status_code == 200, resumed.text
            done = client.get(f"/v1/runs/{run_id}").json()
    assert done["status"] == "completed" and done["final_answer"] == "hi", done
    assert len(model.requests) == 2  # planned again, once


def test_a_worker_takes_a_run_whose_planner_died_and_plans_it_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_path = tmp_path / "runs.sqlite"
    dead = RunStore(store_path, owner="a server that died", lease_seconds=30)
    run_id = dead.create_run(None, goal="say hi", status="planning", limits={"max_steps": 5})
    dead._write(lambda conn: conn.exec_driver_sql(f"UPDATE leases SET expires_at = 0 WHERE run_id = '{run_id}'"))
    with FakeChatServer() as model:
        model.responder = lambda _body: plan_reply()
        for name, value in planner_env(model, tmp_path).items():
            monkeypatch.setenv(name, value)
        with engine(store_path, planner_kind="llm") as worker:
            assert worker.store.claim_next() == run_id
            result = asyncio.run(asyncio.wait_for(worker.run_queued(run_id), 20))
    assert result.status == "completed" and result.final_answer == "hi"
    assert RunStore(store_path).get(run_id).planning["planner"] == "llm"


def test_ctrl_c_of_planvm_run_while_planning_keeps_the_run_as_interrupted_and_resume_plans_it(tmp_path: Path,
                                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeChatServer() as model:
        model.actions.append(("sleep", 20, chat_reply(plan_reply())))
        model.responder = lambda _body: plan_reply()
        env = {**os.environ, **planner_env(model, tmp_path)}
        proc = subprocess.Popen([sys.executable, "-m", "planvm", "run", "say hi", "--planner", "llm", "--no-builtins"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: model.requests, what="the planner's request")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
        runs = RunStore(tmp_path / "runs.sqlite").list_runs()
        assert [r["status"] for r in runs] == ["interrupted"], runs
        for name, value in planner_env(model, tmp_path).items():
            monkeypatch.setenv(name, value)
        with engine(tmp_path / "runs.sqlite", planner_kind="llm") as again:
            result = asyncio.run(asyncio.wait_for(again.resume(runs[0]["id"]), 20))
    assert result.status == "completed" and result.final_answer == "hi"


# --- 5. a cancel racing an approval, from two processes --------------------------------------------

_SIDE_EFFECTS: list[str] = []  # the file the tool appends to, set in the process that runs it

SEND = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "send", "tool_params": {"to": "x"}, "output_vars": ["r"]}},
        {"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${r}"}}]


def _send_tool() -> Any:
    from tools import tool

    @tool
    def send(to: str) -> str:
        """Send a message: here, append the run's id to the side-effect file."""
        with open(_SIDE_EFFECTS[0], "a", encoding="utf-8") as f:
            f.write(_SIDE_EFFECTS[1] + "\n")
        return "sent"

    return send


def _approver(url: str, run_ids: list[str], delays: list[float], barrier: Any, out: Any, side: str) -> None:
    from tools import ToolRegistry
    from vm import VM

    _SIDE_EFFECTS[:] = [side, ""]
    with RunStore(url) as store, VM(ToolRegistry([_send_tool()]), store=store, approve_tools=["send"]) as vm:
        for run_id, delay in zip(run_ids, delays, strict=True):
            _SIDE_EFFECTS[1] = run_id
            barrier.wait(30)
            time.sleep(max(-delay, 0.0))  # a negative delay: the cancel goes first by that much
            try:
                out.put(("approve", run_id, vm.approve(run_id, 0, True).status))
            except Exception as exc:  # (a refusal; anything else fails the test)
                out.put(("approve", run_id, f"{type(exc).__name__}: {exc}"))


def _canceller(url: str, run_ids: list[str], delays: list[float], barrier: Any, out: Any) -> None:
    with RunStore(url) as store:
        for run_id, delay in zip(run_ids, delays, strict=True):
            barrier.wait(30)
            time.sleep(max(delay, 0.0))
            try:
                store.cancel(run_id, "stop")
            except RunStateError as exc:
                out.put(("cancel", run_id, None if "is completed" in str(exc) else f"{type(exc).__name__}: {exc}"))
                continue
            except Exception as exc:
                out.put(("cancel", run_id, f"{type(exc).__name__}: {exc}"))
                continue
            out.put(("cancel", run_id, store.get(run_id, steps=False).error))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancel_that_reported_success_means_the_approved_tool_never_ran(backend: str, tmp_path: Path) -> None:
    import random

    from tools import ToolRegistry
    from vm import VM

    races = 100
    side = tmp_path / "side-effects.txt"
    _SIDE_EFFECTS[:] = [str(side), "timing"]
    with store_url_for(backend, tmp_path) as url:
        with RunStore(url) as store, VM(ToolRegistry([_send_tool()]), store=store, approve_tools=["send"]) as vm:
            run_ids = [vm.run(SEND).run_id for _ in range(races + 1)]
            began = time.perf_counter()  # how long an approval takes here: the cancels land all over it
            assert vm.approve(run_ids.pop(), 0, True).status == "completed"
            took = time.perf_counter() - began
        side.write_text("")
        shuffle = random.Random(5)
        delays = [took * (2 * i / races - 0.5) for i in range(races)]  # the cancel from half an approval early to 1.5 late
        shuffle.shuffle(delays)
        ctx = multiprocessing.get_context("fork")
        barrier, out = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_approver, args=(url, run_ids, delays, barrier, out, str(side))),
                 ctx.Process(target=_canceller, args=(url, run_ids, delays, barrier, out))]
        for p in procs:
            p.start()
        answers: dict[tuple[str, str], Any] = {}
        try:
            while len(answers) < 2 * races:
                who, run_id, said = out.get(timeout=60)
                answers[who, run_id] = said
        finally:
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
        with RunStore(url) as store:
            statuses = {run_id: store.head(run_id)["status"] for run_id in run_ids}
    ran = side.read_text().splitlines()
    assert len(ran) == len(set(ran))  # no call twice
    clean_cancels = late_cancels = approvals_won = 0
    for run_id in run_ids:
        cancelled = answers["cancel", run_id]
        approved = answers["approve", run_id]
        assert approved in ("completed", "cancelled") or approved.startswith("RunStateError"), approved  # refused: cancelled
        if cancelled is None:  # the approval won: the run went on to its end
            approvals_won += 1
            assert statuses[run_id] == "completed" and run_id in ran
        elif "had already started" in cancelled:  # too late to stop the call, and the cancel says so
            late_cancels += 1
            assert run_id in ran and statuses[run_id] == "cancelled"
        else:  # the cancel won the decision: the tool never ran
            clean_cancels += 1
            assert run_id not in ran, f"run {run_id}: the cancel reported success, then the approved tool ran"
            assert statuses[run_id] == "cancelled" and answers["approve", run_id] != "completed"
    print(f"{backend}: {clean_cancels} cancels first, {late_cancels} after the call started, {approvals_won} approvals first "
          f"(an approval takes {took * 1000:.1f} ms)")
    assert clean_cancels and approvals_won + late_cancels  # both sides won some of the races

"""A run's lifecycle through the VM: a cancel made by one process stopping the run another
executes, approvals, and `planvm runs cancel`. (The store's own transitions, on every backend, are
checked in tests/store/conformance/test_conformance_lifecycle.py.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.conftest import make_registry
from tools import ToolRegistry, tool
from vm import VM, RunCancelled, RunStateError, RunStore
from vm.store.lifecycle import TRANSITIONS


def test_every_transition_of_the_table_is_named_in_the_docstring() -> None:
    import vm.store.lifecycle as lifecycle

    for event, rule_ in TRANSITIONS.items():
        assert f"──{event}" in lifecycle.__doc__, event
        assert rule_.target in lifecycle.STATUSES and rule_.sources <= lifecycle.STATUSES


# --- a cancel made by another process stops the executor ------------------------------------------

@tool
async def nap(seconds: float) -> float:
    """Sleep, then return the seconds slept."""
    await asyncio.sleep(seconds)
    return seconds


def slow_plan(n: int, seconds: float) -> list[dict]:
    plan = [{"seq_no": i, "type": "calling", "parameters": {"tool_name": "nap", "tool_params": {"seconds": seconds},
                                                            "output_vars": [f"r{i}"]}} for i in range(n)]
    return plan + [{"seq_no": n, "type": "assign", "parameters": {"final_answer": "done"}}]


@pytest.mark.parametrize("threads", [False, True])
def test_a_cancel_from_another_process_stops_the_run_at_its_next_commit(tmp_path: Path, threads: bool) -> None:
    executor_store = RunStore(tmp_path / "runs.sqlite", owner="executor", lease_seconds=30)
    other = RunStore(tmp_path / "runs.sqlite", owner="other")
    vm = VM(ToolRegistry([nap]), store=executor_store, store_in_threads=threads, concurrency=1)
    started: list[str] = []
    vm.on_start = started.append

    async def main():
        task = asyncio.create_task(vm.arun(slow_plan(20, 0.05)))
        while executor_store.head(started[0])["steps"] < 2 if started else True:
            await asyncio.sleep(0.01)
        other.cancel(started[0], "stopped from elsewhere")
        at_cancel = other.head(started[0])["steps"]
        return await asyncio.wait_for(task, 10), at_cancel

    result, at_cancel = asyncio.run(main())
    head = other.head(result.run_id)
    assert result.status == "cancelled" and result.final_answer is None
    assert head["status"] == "cancelled" and head["owner"] is None
    assert 2 <= head["steps"] == at_cancel < 20  # nothing committed after the cancel
    assert other.get(result.run_id).error == "stopped from elsewhere"
    with pytest.raises(RunStateError, match="cancelled"):
        other.claim(result.run_id)  # a cancelled run is final: fork it to go on
    vm.close()


def test_a_long_step_is_stopped_by_the_heartbeat_when_the_run_is_cancelled(tmp_path: Path) -> None:
    executor_store = RunStore(tmp_path / "runs.sqlite", owner="executor", lease_seconds=0.3)
    other = RunStore(tmp_path / "runs.sqlite", owner="other")
    vm = VM(ToolRegistry([nap]), store=executor_store, store_in_threads=True)
    started: list[str] = []
    vm.on_start = started.append

    async def main():
        task = asyncio.create_task(vm.arun(slow_plan(1, 30)))
        while not started:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        other.cancel(started[0])
        began = time.monotonic()
        result = await asyncio.wait_for(task, 10)
        return result, time.monotonic() - began

    result, took = asyncio.run(main())
    assert result.status == "cancelled" and took < 2  # not the 30 s the step would take
    assert other.head(result.run_id)["steps"] == 0
    vm.close()


def test_approving_a_cancelled_run_runs_nothing(tmp_path: Path) -> None:
    calls: list[str] = []

    @tool
    def send(to: str) -> str:
        """Send a message."""
        calls.append(to)
        return "sent"

    store = RunStore(tmp_path / "runs.sqlite")
    vm = VM(ToolRegistry([send]), store=store, approve_tools=["send"])
    plan = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "send", "tool_params": {"to": "x"}, "output_vars": "r"}},
            {"seq_no": 1, "type": "assign", "parameters": {"final_answer": "${r}"}}]
    waiting = vm.run(plan)
    assert waiting.status == "waiting"
    RunStore(tmp_path / "runs.sqlite", owner="someone else").cancel(waiting.run_id)
    with pytest.raises(RunStateError, match="cancelled"):
        vm.approve(waiting.run_id, 0, True)
    assert calls == [] and store.head(waiting.run_id)["status"] == "cancelled"
    vm.close()


def test_a_vm_without_a_store_needs_none_for_the_lifecycle() -> None:
    result = VM(make_registry()).run([{"seq_no": 0, "type": "assign", "parameters": {"final_answer": 2}}])
    assert result.status == "completed" and result.run_id is None


def test_planvm_runs_cancel_from_the_command_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from planvm.cli.main import build_cli

    store = RunStore(tmp_path / "runs.sqlite", owner="a worker somewhere", lease_seconds=300)
    run_id = store.create_run([{"seq_no": 0, "type": "assign", "parameters": {"final_answer": 1}}])
    cli = build_cli()
    done = CliRunner().invoke(cli, ["runs", "cancel", run_id[:6], "--store", str(tmp_path / "runs.sqlite")])
    assert done.exit_code == 0 and f"cancelled run {run_id}" in done.stdout
    assert store.head(run_id)["status"] == "cancelled"
    again = CliRunner().invoke(cli, ["runs", "cancel", run_id, "--store", str(tmp_path / "runs.sqlite")])
    assert again.exit_code == 2 and "is cancelled" in again.stderr and "fork it" in again.stderr


def test_planvm_runs_cancel_names_an_approved_call_that_had_already_started(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from planvm.cli.main import build_cli

    store = RunStore(tmp_path / "runs.sqlite", owner="a worker somewhere", lease_seconds=300)
    run_id = store.create_run([{"seq_no": 0, "type": "assign", "parameters": {"final_answer": 1}}])
    store.start_call(run_id, 0, "send_email")
    done = CliRunner().invoke(build_cli(), ["runs", "cancel", run_id, "--store", str(tmp_path / "runs.sqlite")])
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == (f"cancelled run {run_id}; the approved call at seq_no 0 to 'send_email' had already started; "
                                   f"it may have taken effect")
    with pytest.raises(RunCancelled):
        store.start_call(run_id, 1, "send_email")  # nothing starts after the cancel

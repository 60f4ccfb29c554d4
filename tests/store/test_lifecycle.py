"""A run's lifecycle in the store: every transition of ``vm/store/lifecycle.py``, checked against a
model over random sequences of start / plan / step / call / wait / approve / cancel / resume / kill /
abandon, made by two processes (two stores with different lease owners on one store), on SQLite,
PostgreSQL and MariaDB; and a cancel made by one process stopping the run another executes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from tests.conftest import make_registry
from tests.databases import BACKENDS, store_url_for
from tools import ToolRegistry, tool
from vm import VM, LeaseLost, RunBusy, RunCancelled, RunStateError, RunStore, StepRecord
from vm.store.lifecycle import TRANSITIONS

OWNERS = ("a", "b")
EXECUTED = {"running", "planning"}  # a process holds a lease on the run while it plans or runs it


def expire_lease(store: RunStore, run_id: str) -> None:
    """What time does to a lease whose holder died: it runs out."""
    store._write(lambda conn: conn.exec_driver_sql(f"UPDATE leases SET expires_at = 0 WHERE run_id = '{run_id}'"))


class Lifecycle(RuleBasedStateMachine):
    """The model: a status, the lease (holder, live) and whether its holder started a call. Each
    rule says what the store must do. ``stores`` (one per owner, on one store) is set per backend;
    each example works on a run of its own."""

    stores: dict[str, RunStore] = {}

    def __init__(self) -> None:
        super().__init__()
        self.run_id = ""
        self.status = ""
        self.holder: str | None = None
        self.live = False
        self.calling = False
        self.steps = 0

    @initialize(status=st.sampled_from(["queued", "running", "planning"]), owner=st.sampled_from(OWNERS))
    def start(self, status: str, owner: str) -> None:
        store = self.stores[owner]
        plan = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": 1}}]
        self.run_id = store.create_run(None if status == "planning" else plan, status=status)
        self.status = status
        self.holder, self.live = (None, False) if status == "queued" else (owner, True)

    # --- what the model expects ------------------------------------------------------------------

    def expect(self, action, *, ok: tuple[str, str | None, bool] | None, error: type[Exception] | None) -> None:
        """Run ``action``; on ``ok`` the model becomes (status, holder, live) and no call is under
        way; else ``error`` is raised and nothing changed."""
        before = self.stores["a"].head(self.run_id)
        if error is not None:
            try:
                action()
            except error:
                pass
            else:  # (an AssertionError: hypothesis shrinks it; pytest.raises' own failure it would not see)
                raise AssertionError(f"expected {error.__name__} in status {self.status}, the store allowed it")
            after = self.stores["a"].head(self.run_id)
            assert (after["status"], after["steps"]) == (before["status"], before["steps"])
            return
        action()
        self.status, self.holder, self.live = ok  # type: ignore[misc]
        self.calling = False

    def executor_refusal(self, owner: str, sources: frozenset[str] = frozenset({"running"})) -> type[Exception] | None:
        if self.status == "cancelled":
            return RunCancelled
        if self.status not in sources:
            return LeaseLost
        if self.live and self.holder != owner:
            return LeaseLost
        return None

    # --- rules -----------------------------------------------------------------------------------

    @rule(owner=st.sampled_from(OWNERS))
    def resume(self, owner: str) -> None:
        if self.live:
            error: type[Exception] | None = RunBusy
        elif self.status in {"queued", "running", "failed", "interrupted", "planning"}:
            error = None
        else:
            error = RunStateError
        self.expect(lambda: self.stores[owner].claim(self.run_id), ok=("running", owner, True), error=error)

    @rule(owner=st.sampled_from(OWNERS))
    def approve(self, owner: str) -> None:
        error = None if self.status == "waiting" else RunStateError
        if self.live:
            error = RunBusy
        self.expect(lambda: self.stores[owner].claim(self.run_id, approving=True), ok=("running", owner, True), error=error)

    @rule(owner=st.sampled_from(OWNERS))
    def step(self, owner: str) -> None:
        record = StepRecord(self.steps, "assign")
        if self.status == "running" and self.holder == owner and self.live:
            self.stores[owner].record_step(self.run_id, self.steps, record)
            self.steps += 1
            return
        expected = RunCancelled if self.status == "cancelled" else LeaseLost
        self.expect(lambda: self.stores[owner].record_step(self.run_id, self.steps, record), ok=None, error=expected)

    @rule(owner=st.sampled_from(OWNERS))
    def start_call(self, owner: str) -> None:
        """An approved call claimed before its tool starts: only by the live holder of a running run."""
        error = self.executor_refusal(owner)
        if error is None and not (self.live and self.holder == owner):
            error = LeaseLost  # its lease ran out: another process may take the run
        if error is None:
            self.stores[owner].start_call(self.run_id, self.steps, "send")
            self.calling = True
            return
        self.expect(lambda: self.stores[owner].start_call(self.run_id, self.steps, "send"), ok=None, error=error)

    @rule(owner=st.sampled_from(OWNERS))
    def wait(self, owner: str) -> None:
        pending = {"seq_no": 0, "tool": "t", "tool_params": {}, "index": self.steps}
        self.expect(lambda: self.stores[owner].wait(self.run_id, pending), ok=("waiting", None, False),
                    error=self.executor_refusal(owner))

    @rule(owner=st.sampled_from(OWNERS), status=st.sampled_from(["completed", "failed", "interrupted"]))
    def finish(self, owner: str, status: str) -> None:
        # planning may fail or be interrupted (Ctrl-C), not complete
        sources = frozenset({"running"} if status == "completed" else {"running", "planning"})
        self.expect(lambda: self.stores[owner].finish(self.run_id, status), ok=(status, None, False),
                    error=self.executor_refusal(owner, sources))

    @rule(owner=st.sampled_from(OWNERS))
    def release(self, owner: str) -> None:
        self.expect(lambda: self.stores[owner].release(self.run_id), ok=("queued", None, False), error=self.executor_refusal(owner))

    @rule(owner=st.sampled_from(OWNERS))
    def cancel(self, owner: str) -> None:
        error = None if self.status in {"planning", "queued", "running", "waiting", "interrupted"} else RunStateError
        calling = self.calling
        self.expect(lambda: self.stores[owner].cancel(self.run_id, "stop"), ok=("cancelled", None, False), error=error)
        if error is None:  # the cancel says whether a call it could not stop was under way
            said = self.stores[owner].get(self.run_id, steps=False).error
            assert ("had already started" in said) == calling, said

    @precondition(lambda self: self.live)
    @rule()
    def kill(self) -> None:
        expire_lease(self.stores["a"], self.run_id)
        self.live = False

    @rule(owner=st.sampled_from(OWNERS))
    def abandon(self, owner: str) -> None:
        marked = self.stores[owner].mark_abandoned()  # (other examples' runs may be among them)
        if self.status in EXECUTED and not self.live:
            assert self.run_id in marked
            self.status, self.holder, self.calling = "interrupted", None, False
        else:
            assert self.run_id not in marked

    @invariant()
    def store_agrees(self) -> None:
        if not self.run_id:
            return
        head = self.stores["b"].head(self.run_id)
        assert head["status"] == self.status
        assert head["steps"] == self.steps
        # A lease exists only on a run being planned or run, and only a live one is the holder's.
        if head["owner"] is not None:
            assert self.status in EXECUTED
        if self.live:
            assert head["owner"] == self.holder and head["lease_expires_at"] > time.time()


@pytest.mark.parametrize("backend", BACKENDS)
def test_lifecycle_transitions(backend: str, tmp_path: Path) -> None:
    # SQLite is fast enough for many examples; a database server gets fewer (each rule is round trips).
    examples = 150 if backend == "sqlite" else 30
    with store_url_for(backend, tmp_path) as url:
        stores = {o: RunStore(url, owner=o, lease_seconds=60) for o in OWNERS}

        class OnBackend(Lifecycle):
            pass

        OnBackend.stores = stores
        try:
            run_state_machine_as_test(OnBackend, settings=settings(
                max_examples=examples, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]))
        finally:
            for store in stores.values():
                store.close()


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


def test_claim_next_takes_a_dead_workers_run_before_queued_ones(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite", owner="w1")
    plan = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": 1}}]
    queued = [store.create_run(plan, status="queued") for _ in range(3)]
    dead = RunStore(tmp_path / "runs.sqlite", owner="dead")
    taken = dead.claim_next()
    assert taken == queued[0]
    expire_lease(store, taken)
    later = store.create_run(plan, status="queued")
    assert store.claim_next() == taken  # the dead worker's run first
    assert store.claim_next() == queued[1]
    assert later not in (taken, queued[1])


def test_mark_abandoned_leaves_runs_of_live_processes(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite", owner="server")
    worker = RunStore(tmp_path / "runs.sqlite", owner="worker", lease_seconds=60)
    plan = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": 1}}]
    live = worker.create_run(plan)
    dead = worker.create_run(plan)
    expire_lease(store, dead)
    assert store.mark_abandoned() == [dead]
    assert store.head(live)["status"] == "running" and store.head(dead)["status"] == "interrupted"


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

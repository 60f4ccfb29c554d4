"""Conformance: a run's lifecycle in the store, every transition of ``vm/store/lifecycle.py``,
checked against a model over random sequences of start / plan / step / call / wait / approve /
cancel / resume / kill / abandon, made by two processes (two stores with different lease owners
on one store), on every backend."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test
from store_suite import expire_lease, location  # noqa: F401  (location: a fixture)

from vm import LeaseLost, RunBusy, RunCancelled, RunStateError, RunStore, StepRecord
from vm.store import open_store

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


def test_lifecycle_transitions(location: str) -> None:
    stores = {o: open_store(location, owner=o, lease_seconds=60) for o in OWNERS}
    # SQLite is fast enough for many examples; a database server gets fewer (each rule is round trips).
    examples = 150 if stores["a"].dialect == "sqlite" else 30

    class OnBackend(Lifecycle):
        pass

    OnBackend.stores = stores
    try:
        run_state_machine_as_test(OnBackend, settings=settings(
            max_examples=examples, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]))
    finally:
        for store in stores.values():
            store.close()

"""Conformance: leases (taken, renewed, run out, a late commit refused) and the queue (oldest
first, a dead worker's run before queued ones, two claimers never taking one run), on every backend."""

from __future__ import annotations

import threading
import time

import pytest
from store_suite import PLAN, expire_lease, location, other, store  # noqa: F401  (fixtures)

from vm import LeaseLost, RunBusy, RunCancelled, StepRecord
from vm.store import Store, open_store


def step(index: int) -> StepRecord:
    record = StepRecord(index, "assign")
    record.outputs = {"x": index}
    return record


def test_a_run_started_here_is_held_under_this_stores_lease(store: Store, other: Store) -> None:
    run_id = store.create_run(PLAN)
    head = store.head(run_id)
    assert head["owner"] == store.worker_id == "a" and head["lease_expires_at"] > time.time() + 50
    before = head["lease_expires_at"]
    time.sleep(0.01)
    assert store.renew(run_id) and store.head(run_id)["lease_expires_at"] > before
    with pytest.raises(RunBusy):
        other.claim(run_id)
    assert not other.renew(run_id)
    with pytest.raises(LeaseLost):
        other.record_step(run_id, 0, step(0))
    store.record_step(run_id, 0, step(0))
    assert other.step_count(run_id) == 1


def test_a_lease_run_out_is_taken_and_the_late_commit_is_refused(store: Store, other: Store) -> None:
    run_id = store.create_run(PLAN)
    store.record_step(run_id, 0, step(0))
    expire_lease(store, run_id)
    taken = other.claim(run_id)
    assert taken.status == "running" and taken.owner == "b" and len(taken.steps) == 1
    with pytest.raises(LeaseLost):  # the first worker woke up after its lease ran out
        store.record_step(run_id, 1, step(1))
    with pytest.raises(LeaseLost):
        store.finish(run_id, "completed", final_answer=1)
    assert not store.renew(run_id)
    other.record_step(run_id, 1, step(1))
    other.finish(run_id, "completed", final_answer=1)
    done = store.get(run_id)
    assert done.status == "completed" and [s.index for s in done.steps] == [0, 1] and done.owner is None


def test_the_last_step_and_the_runs_end_are_written_together_or_not_at_all(store: Store, other: Store) -> None:
    run_id = store.create_run(PLAN)
    store.record_step(run_id, 0, step(0))
    expire_lease(store, run_id)
    other.claim(run_id)
    with pytest.raises(LeaseLost):  # the lease is another's: neither the step nor the end is written
        store.finish(run_id, "completed", final_answer=1, step=(1, step(1)))
    assert store.head(run_id)["status"] == "running" and store.step_count(run_id) == 1
    with pytest.raises(LeaseLost):  # another process recorded this position: the run stays as it was
        other.finish(run_id, "completed", final_answer=1, step=(0, step(7)))
    assert store.head(run_id)["status"] == "running" and [s.seq_no for s in store.steps_page(run_id)] == [0]
    other.finish(run_id, "completed", final_answer=1, step=(1, step(1)))
    done = store.get(run_id)
    assert done.status == "completed" and done.final_answer == 1 and done.owner is None
    assert [(s.index, s.outputs) for s in done.steps] == [(0, {"x": 0}), (1, {"x": 1})]
    cancelled = store.create_run(PLAN)
    other.cancel(cancelled)
    with pytest.raises(RunCancelled):  # cancelled from another process before its last commit
        store.finish(cancelled, "completed", final_answer=1, step=(0, step(0)))
    assert store.head(cancelled)["status"] == "cancelled" and store.step_count(cancelled) == 0


def test_a_step_position_is_recorded_once(store: Store) -> None:
    run_id = store.create_run(PLAN)
    store.record_step(run_id, 0, step(0))
    with pytest.raises(LeaseLost):  # another process recorded this position: it owns the run
        store.record_step(run_id, 0, step(5))
    assert [s.seq_no for s in store.steps_page(run_id)] == [0]


def test_the_queue_gives_the_oldest_run_first(store: Store, other: Store) -> None:
    queued = []
    for _ in range(3):
        queued.append(store.create_run(PLAN, status="queued"))
        time.sleep(0.002)  # distinct creation times
    assert store.head(queued[0])["owner"] is None  # a queued run is owned by no one
    assert [store.claim_next(), other.claim_next(), store.claim_next()] == queued
    assert store.claim_next() is None and other.claim_next() is None
    assert [store.head(r)["owner"] for r in queued] == ["a", "b", "a"]


def test_a_dead_workers_run_is_taken_before_queued_ones(store: Store, other: Store) -> None:
    queued = []
    for _ in range(3):
        queued.append(store.create_run(PLAN, status="queued"))
        time.sleep(0.002)
    taken = other.claim_next()
    assert taken == queued[0]
    expire_lease(store, taken)
    later = store.create_run(PLAN, status="queued")
    assert store.claim_next() == taken  # the dead worker's run first
    assert store.claim_next() == queued[1]
    assert later not in (taken, queued[1])


def test_two_claimers_never_take_one_run(location: str, store: Store) -> None:
    runs = {store.create_run(PLAN, status="queued") for _ in range(12)}
    workers = [open_store(location, owner=f"w{i}", lease_seconds=60) for i in range(4)]
    taken: list[list[str]] = [[] for _ in workers]
    errors: list[BaseException] = []
    start = threading.Barrier(len(workers))

    def work(i: int) -> None:
        start.wait()
        try:
            while (found := workers[i].claim_next()) is not None:
                taken[i].append(found)
        except BaseException as exc:  # a claimer refused (RunBusy) or failing is a failure of the queue
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for worker in workers:
        worker.close()
    assert errors == []
    everything = [r for got in taken for r in got]
    assert sorted(everything) == sorted(runs)  # each run taken once, by one claimer
    for i, got in enumerate(taken):
        assert all(store.head(r)["owner"] == f"w{i}" for r in got)


def test_abandoned_runs_are_marked_and_live_ones_left_alone(store: Store, other: Store) -> None:
    live = other.create_run(PLAN)
    dead = other.create_run(None, status="planning")
    expire_lease(store, dead)
    assert dead in store.mark_abandoned() and live not in store.mark_abandoned()
    assert store.head(live)["status"] == "running" and store.head(dead)["status"] == "interrupted"
    assert "plan it again" in store.get(dead).error

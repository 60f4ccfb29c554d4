"""Conformance: namespaces. A store seen from one namespace never reads, changes, claims, forks or
deletes another's runs, steps, judgements or library entries; quotas hold under concurrency.
The same tests on every backend."""

from __future__ import annotations

import threading

import pytest
from store_suite import PLAN, expire_lease, location, store  # noqa: F401  (fixtures)

from vm import QuotaExceeded, RunNotFound, StepRecord
from vm.store import Store, open_store


def _step(index: int, tokens: int = 0) -> StepRecord:
    record = StepRecord(index, "assign")
    record.outputs = {"x": index}
    if tokens:
        record.llm_calls = [{"model": "m", "prompt_tokens": tokens - 1, "completion_tokens": 1}]
    return record


def test_a_run_of_one_namespace_is_not_there_for_another(store: Store) -> None:
    a, b = store.in_namespace("team-a"), store.in_namespace("team-b")
    run_id = a.create_run(PLAN, goal="secret goal of a")
    a.record_step(run_id, 0, _step(0))
    a.set_judgement(run_id, {"score": 7})
    assert a.get(run_id).goal == "secret goal of a" and a.namespace == "team-a"
    for read in (b.get, b.head, b.status_of, b.resolve, b.cancel, b.claim, b.delete_run,
                 lambda rid: b.create_run(PLAN, parent_id=rid, inherit_steps=1)):
        with pytest.raises(RunNotFound):
            read(run_id)
    with pytest.raises(RunNotFound):
        b.resolve(run_id[:6])  # a prefix neither
    assert b.steps_page(run_id) == [] and b.step_count(run_id) == 0
    assert b.list_runs() == [] and b.children(run_id) == [] and b.completed_runs() == []
    assert store.list_runs() == []  # the default namespace is one more namespace
    b.set_judgement(run_id, {"score": 0})  # changes nothing of a's run
    b.mark_best(run_id, run_id)
    assert a.get(run_id).judgement == {"score": 7} and a.get(run_id).best_of is None
    assert [r["id"] for r in a.list_runs()] == [run_id]


def test_an_executor_of_another_namespace_cannot_write_a_run(store: Store) -> None:
    from vm import LeaseLost

    a = store.in_namespace("team-a")
    run_id = a.create_run(PLAN)
    b = store.in_namespace("team-b")  # (the same lease owner: only the namespace differs)
    with pytest.raises((LeaseLost, RunNotFound)):
        b.record_step(run_id, 0, _step(0))
    with pytest.raises((LeaseLost, RunNotFound)):
        b.finish(run_id, "completed", final_answer=1)
    assert a.get(run_id).status == "running" and a.step_count(run_id) == 0


def test_workers_take_only_their_namespaces_runs(store: Store) -> None:
    a, b = store.in_namespace("team-a"), store.in_namespace("team-b")
    queued = a.create_run(PLAN, status="queued")
    assert b.claim_next() is None and store.claim_next() is None
    stale = a.create_run(PLAN)
    expire_lease(a, stale)
    assert b.mark_abandoned() == [] and a.get(stale).status == "running"
    assert a.claim_next() == stale and a.claim_next() == queued


def test_the_plan_library_is_per_namespace(store: Store) -> None:
    a, b = store.in_namespace("team-a"), store.in_namespace("team-b")
    entry = {"goal": "g", "goal_key": "g", "plan": PLAN, "tools": []}
    kept, _ = a.library_put(entry)
    assert b.library_entries() == [] and b.library_signature()[0] == 0
    with pytest.raises(Exception, match="no best plan"):
        b.library_remove(kept)
    other, replaced = b.library_put(entry)  # the same goal in b replaces nothing of a's
    assert replaced == [] and [e["id"] for e in a.library_entries()] == [kept]
    assert [e["id"] for e in b.library_entries()] == [other]


def test_runs_at_once_never_pass_the_quota_under_concurrency(location: str) -> None:
    quota, clients = 4, 16
    stores = [open_store(location, owner=f"w{i}").in_namespace("team-q", max_active_runs=quota) for i in range(clients)]
    made: list[str] = []
    refused: list[BaseException] = []
    failed: list[BaseException] = []
    start = threading.Barrier(clients)

    def client(s: Store) -> None:
        start.wait()
        try:
            made.append(s.create_run(PLAN, status="queued"))
        except QuotaExceeded as exc:
            refused.append(exc)
        except BaseException as exc:  # noqa: BLE001 - shown by the assertion below
            failed.append(exc)

    threads = [threading.Thread(target=client, args=(s,)) for s in stores]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not failed, failed
        assert len(made) == quota and len(refused) == clients - quota
        assert "quota of runs at once is 4" in str(refused[0]) and refused[0].retry_after
        q = stores[0]
        assert len(q.list_runs()) == quota
        # A run that ends makes room; resuming a stopped one counts again.
        q.claim(made[0])
        q.finish(made[0], "interrupted")
        again = q.create_run(PLAN, status="queued")
        with pytest.raises(QuotaExceeded):
            q.claim(made[0])
        q.cancel(again)
        assert q.claim(made[0]).status == "running"
        # Another namespace has its own count.
        assert stores[1].in_namespace("team-r", max_active_runs=1).create_run(PLAN, status="queued")
    finally:
        for s in stores:
            s.close()


def test_the_days_tokens_are_counted_and_a_spent_quota_refuses_new_runs(store: Store) -> None:
    t = store.in_namespace("team-t", tokens_per_day=100)
    assert t.tokens_left() == 100
    run_id = t.create_run(PLAN)
    t.record_step(run_id, 0, _step(0, tokens=60))
    t.record_step(run_id, 1, _step(1, tokens=50))
    t.finish(run_id, "completed", final_answer=1)
    assert t.tokens_today() == 110 and t.tokens_left() == 0
    assert store.in_namespace("team-u").tokens_today() == 0
    with pytest.raises(QuotaExceeded, match="tokens of today"):
        t.create_run(PLAN)

"""A worker serving several namespaces when one namespace's quota refuses it (QuotaExceeded) at
the moment it takes a run, or while the run is being resumed: that namespace is passed over (its
runs stay queued, none is failed), the others are served, and the worker does not stop."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from planvm.engine import Engine, EngineConfig
from planvm.worker import Worker
from vm import QuotaExceeded

pytestmark = pytest.mark.faults

ASSIGN = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "done"}}]


@pytest.fixture
def engine(tmp_path, monkeypatch):
    (tmp_path / "planvm.toml").write_text(f"store = {json.dumps(str(tmp_path / 'runs.sqlite'))}\n"
                                          "[namespaces.alpha]\nmax_active_runs = 5\n[namespaces.beta]\n")
    monkeypatch.setenv("PLANVM_CONFIG", str(tmp_path / "planvm.toml"))
    with Engine(EngineConfig.load(), role="worker") as built:
        yield built


def refused(namespace: str) -> QuotaExceeded:
    return QuotaExceeded(f"namespace '{namespace}' has 5 runs under way, its quota of runs at once is 5", namespace=namespace,
                         retry_after=1.0)


def test_a_quota_refusing_a_take_passes_the_namespace_over(engine, monkeypatch, caplog):
    alpha, beta = engine.in_namespace("alpha"), engine.in_namespace("beta")
    waiting = alpha.enqueue(None, plan=ASSIGN)
    served = [beta.enqueue(None, plan=ASSIGN) for _ in range(2)]
    asked = []

    def claim_next() -> str | None:
        asked.append("alpha")
        raise refused("alpha")

    monkeypatch.setattr(alpha.store, "claim_next", claim_next)
    worker = Worker(engine, concurrency=1, poll_seconds=0.05, grace_seconds=1, once=True, namespaces=["alpha", "beta"])
    with caplog.at_level(logging.WARNING, logger="planvm.worker"):
        assert asyncio.run(worker.serve()) == 2
    assert asked == ["alpha"]  # asked once, then passed over for its retry_after
    assert [beta.get_run(r).status for r in served] == ["completed", "completed"]
    assert alpha.get_run(waiting).status == "queued"
    assert "quota of runs at once is 5; its runs wait (asked again in 1 s)" in caplog.text


def test_a_quota_refusing_a_run_being_resumed_gives_it_back_to_the_queue(engine, monkeypatch, caplog):
    alpha, beta = engine.in_namespace("alpha"), engine.in_namespace("beta")
    waiting = alpha.enqueue(None, plan=ASSIGN)
    served = beta.enqueue(None, plan=ASSIGN)

    async def run_queued(run_id: str) -> None:
        raise refused("alpha")

    monkeypatch.setattr(alpha, "run_queued", run_queued)
    worker = Worker(engine, concurrency=1, poll_seconds=0.05, grace_seconds=1, once=True, namespaces=["alpha", "beta"])
    with caplog.at_level(logging.WARNING, logger="planvm.worker"):
        assert asyncio.run(worker.serve()) == 1
    assert beta.get_run(served).status == "completed"
    run = alpha.get_run(waiting)
    assert run.status == "queued" and not run.error  # given back, not failed
    assert f"run {waiting} given back to the queue" in caplog.text

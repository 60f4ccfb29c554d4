"""An engine is given everything it needs when it is built: its role (a command, a service, a
worker), its progress callbacks, whether it only reads. Nothing is set on it afterwards."""

from __future__ import annotations

import asyncio

from conftest import ROOT
from serve_helpers import slow_plan

from planvm.engine import Engine
from planvm.worker import Worker

TOOLS = str(ROOT / "tests" / "serve_tools.py")


def test_a_worker_built_from_python_gives_a_run_it_stops_back_to_the_queue(tmp_path):
    """`planvm.worker.Worker` over a plain engine (as a Python caller builds one): a run stopped
    with the worker is queued again, and the next claim takes it (it was left `interrupted`)."""
    engine = Engine({"store_path": str(tmp_path / "runs.sqlite"), "no_builtins": True, "plugins": [TOOLS]})
    run_id = engine.enqueue(None, plan=slow_plan(20, 0.2))

    async def stop_mid_run() -> None:
        worker = Worker(engine, concurrency=1, poll_seconds=0.05, grace_seconds=0.05)
        serving = asyncio.create_task(worker.serve())
        for _ in range(200):
            await asyncio.sleep(0.02)
            if engine.store.head(run_id)["steps"] >= 1:
                break
        worker.stopping.set()
        await asyncio.wait_for(serving, 10)

    asyncio.run(stop_mid_run())
    assert engine.status_of(run_id) == "queued"
    assert engine.store.claim_next() == run_id
    assert engine.vm.stopped_status == "interrupted"  # the caller's own engine is unchanged
    engine.close()


def test_an_engine_that_only_reads_builds_no_tools_models_or_vm(tmp_path):
    with Engine({"store_path": str(tmp_path / "runs.sqlite"), "no_builtins": True, "plugins": [TOOLS]}) as writer:
        done = asyncio.run(writer.exec_plan(slow_plan(1, 0.0), goal="one"))
    with Engine({"store_path": str(tmp_path / "runs.sqlite")}, readonly=True) as reader:
        page = reader.list_runs()
        assert [r.id for r in page.runs] == [done.run_id] and reader.get_run(done.run_id[:6]).status == "completed"
        assert not {"vm", "registry", "llms"} & set(vars(reader))
    with Engine({"store_path": str(tmp_path / "none.sqlite")}, readonly=True) as nothing:
        assert nothing.list_runs().runs == [] and nothing.library_entries() == []
        assert not (tmp_path / "none.sqlite").exists()


def test_roles_share_one_engine_and_differ_only_in_how_runs_stop_and_reach_the_store(tmp_path):
    with Engine({"store_path": str(tmp_path / "runs.sqlite"), "no_builtins": True}) as engine:
        service, worker = engine.as_role("service"), engine.as_role("worker")
        assert (engine.vm.store_in_threads, engine.vm.stopped_status) == (False, "interrupted")
        assert (service.vm.store_in_threads, service.vm.stopped_status) == (True, "interrupted")
        assert (worker.vm.store_in_threads, worker.vm.stopped_status) == (False, "queued")  # SQLite: one writer anyway
        assert service.store is engine.store and engine.as_role("local") is engine
        assert service.registry is engine.registry and worker.llms is engine.llms  # built once, shared

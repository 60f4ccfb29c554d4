"""``planvm worker``: take queued runs (and runs whose lease ran out) from a shared store and run them.

Many workers, on one machine or many, share one store (PostgreSQL or MySQL for several machines;
SQLite for one). Each run is taken under a lease (``SELECT … FOR UPDATE SKIP LOCKED``), so no two
workers execute it at once; a worker that dies leaves its runs to the others once their leases
run out. SIGTERM (or Ctrl-C) stops taking runs, lets those in flight finish for up to
``--grace-seconds``, then gives the rest back to the queue with their completed steps kept.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import click

from planvm.cli import kb_option, make_engine, store_option, tool_options
from planvm.render import echo_err, guarded

log = logging.getLogger("planvm.worker")


class Worker:
    """Takes runs from the engine's store and executes them, ``concurrency`` at a time."""

    def __init__(self, engine: Any, *, concurrency: int, poll_seconds: float, grace_seconds: float, once: bool = False) -> None:
        self.engine = engine
        self.store = engine.store
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.once = once
        self.stopping = asyncio.Event()
        self.running: dict[str, asyncio.Task[Any]] = {}
        self.done = 0

    async def execute(self, run_id: str) -> None:
        from vm import LeaseLost, PlanningError, StoreError

        store, engine = self.store, self.engine
        try:
            stored = await asyncio.to_thread(store.get, run_id)
            if stored.plan is None:  # a queued goal: plan it here, with this worker's planner
                try:
                    # A goal queued with --no-library (or "library": false) is planned without it.
                    library = False if (stored.planning or {}).get("no_library") else None
                    planned = await asyncio.to_thread(lambda: engine.plan(stored.goal or "", stored.metadata, use_library=library))
                except (PlanningError, ValueError) as exc:
                    await asyncio.to_thread(store.finish, run_id, "failed", error=f"planning failed: {exc}")
                    log.warning("run %s: planning failed: %s", run_id, exc)
                    return
                engine.check_knowledge_base(planned.plan)
                await asyncio.to_thread(store.set_plan, run_id, planned.plan, planned.record())
            result = await engine.for_stored(stored.limits).aresume(run_id, claimed=True)
            self.done += 1
            log.info("run %s %s (%d steps)", run_id, result.status, result.steps)
        except LeaseLost as exc:
            log.warning("run %s: %s", run_id, exc)
        except StoreError as exc:
            log.warning("run %s: the store failed (%s); the run is left to be taken again when its lease runs out", run_id, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a plan that no longer validates, a tool registry that changed...
            log.warning("run %s could not run: %s", run_id, exc)
            try:
                await asyncio.to_thread(store.finish, run_id, "failed", error=str(exc))
            except StoreError:
                pass

    async def take(self) -> str | None:
        from vm import StoreError

        try:
            return await asyncio.to_thread(self.store.claim_next)
        except StoreError as exc:
            log.warning("cannot take runs from the store (%s); trying again", exc)
            await asyncio.sleep(self.poll_seconds)
            return None

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        while not self.stopping.is_set():
            while len(self.running) < self.concurrency and not self.stopping.is_set():
                run_id = await self.take()
                if run_id is None:
                    break
                task = asyncio.create_task(self.execute(run_id))
                self.running[run_id] = task
                task.add_done_callback(lambda _t, r=run_id: self.running.pop(r, None))
            if self.once and not self.running:
                break
            waiters = [asyncio.ensure_future(self.stopping.wait()), *self.running.values()]
            await asyncio.wait(waiters, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED)
            waiters[0].cancel()
        await self.stop()
        return self.done

    async def stop(self) -> None:
        """Let runs in flight finish for grace_seconds, then give the rest back to the queue."""
        if not self.running:
            return
        log.warning("stopping: waiting up to %.0f s for %d run(s) in flight", self.grace_seconds, len(self.running))
        _done, pending = await asyncio.wait(list(self.running.values()), timeout=self.grace_seconds)
        unfinished = [run_id for run_id, task in list(self.running.items()) if task in pending]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for run_id in unfinished:
            try:
                if await asyncio.to_thread(self.store.status_of, run_id) != "queued":  # (the VM gives back runs it executes)
                    await asyncio.to_thread(self.store.release, run_id)
                log.warning("run %s given back to the queue", run_id)
            except Exception as exc:  # its lease may be gone already: another worker has it
                log.warning("run %s: not given back (%s)", run_id, exc)


@click.command()
@tool_options
@kb_option
@store_option
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="Runs executed at once.")
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    envvar="PLANVM_LEASE_SECONDS",
    help="A run this worker holds becomes anyone's this long after its last heartbeat.",
)
@click.option("--poll-seconds", type=click.FloatRange(min=0.05), default=1.0, show_default=True, help="How often to look for queued runs.")
@click.option("--grace-seconds", type=click.FloatRange(min=0), default=10.0, show_default=True, help="On SIGTERM: how long runs in flight may finish.")
@click.option("--once", is_flag=True, help="Stop when the queue is empty (instead of waiting for more).")
@guarded
def worker(concurrency: int, lease_seconds: float, poll_seconds: float, grace_seconds: float, once: bool, **options: Any) -> None:
    """Run queued runs from the store (and runs whose worker died), until stopped."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO, force=True)
    options["lease_seconds"] = lease_seconds
    engine = make_engine(options)
    engine.vm.store_in_threads = engine.store.dialect != "sqlite"  # many runs share this loop: none waits on a database server
    engine.vm.stopped_status = "queued"  # runs stopped with the worker go back to the queue
    engine.vm.on_step = None
    engine.vm.on_start = None
    echo_err(f"planvm worker {engine.store.worker_id} on {engine.store.path}: {concurrency} run(s) at once")
    runner = Worker(engine, concurrency=concurrency, poll_seconds=poll_seconds, grace_seconds=grace_seconds, once=once)
    done = asyncio.run(runner.serve())
    echo_err(f"planvm worker stopped after {done} run(s)")

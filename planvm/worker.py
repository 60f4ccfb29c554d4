"""Workers: take queued runs (and runs whose lease ran out) from a shared store and run them.

Many workers, on one machine or many, share one store (PostgreSQL or MySQL for several machines;
SQLite for one). Each run is taken under a lease (``SELECT … FOR UPDATE SKIP LOCKED``), so no two
workers execute it at once; a worker that dies leaves its runs to the others once their leases
run out. :meth:`Worker.stop` lets runs in flight finish for ``grace_seconds``, then gives the rest
back to the queue with their completed steps kept. What a worker does with one run is
:meth:`planvm.engine.Engine.run_queued`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from vm.errors import LeaseLost, RunStateError, StoreError

__all__ = ["Worker"]

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
        from vm import LeaseLost, StoreError

        try:
            result = await self.engine.run_queued(run_id)
            self.done += 1
            if result is None:
                log.warning("run %s: planning failed (kept as a failed run)", run_id)
            else:
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
                await asyncio.to_thread(self.store.finish, run_id, "failed", error=str(exc))
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
            except (LeaseLost, RunStateError, StoreError) as exc:  # its lease may be gone: another worker has it
                log.warning("run %s: not given back (%s)", run_id, exc)
            except Exception:
                log.exception("run %s: not given back (an unexpected error; its traceback follows)", run_id)

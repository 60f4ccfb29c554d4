"""Workers: take queued runs (and runs whose lease ran out) from a shared store and run them.

Many workers, on one machine or many, share one store (PostgreSQL or MySQL for several machines;
SQLite for one). Each run is taken under a lease (``SELECT … FOR UPDATE SKIP LOCKED``), so no two
workers execute it at once; a worker that dies leaves its runs to the others once their leases
run out. :meth:`Worker.stop` lets runs in flight finish for ``grace_seconds``, then gives the rest
back to the queue with their completed steps kept. What a worker does with one run is
:meth:`planvm.engine.Engine.run_queued`.

A worker serves one namespace (its engine's) or several (``namespaces``): each run is taken from
its namespace's view of the store and executed by that namespace's engine (its tools, models,
limits and quotas), and the namespaces take turns, so a long queue in one does not starve
another. A namespace whose quota stops it (its tokens of the day are spent) is passed over until
it may go on; its queued runs wait, they are not failed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any

from vm.errors import BadInput, LeaseLost, QuotaExceeded, RunStateError, StoreError

__all__ = ["Worker"]

log = logging.getLogger("planvm.worker")

#: Most seconds a namespace stopped by its quota is passed over before it is asked again.
QUOTA_RECHECK_SECONDS = 60.0


class Worker:
    """Takes runs from the store for ``namespaces`` (default: the engine's own) and executes them,
    ``concurrency`` at a time, asking the namespaces in turn."""

    def __init__(self, engine: Any, *, concurrency: int, poll_seconds: float, grace_seconds: float, once: bool = False,
                 namespaces: Sequence[str] | None = None) -> None:
        names = list(namespaces) if namespaces else [engine.config.namespace]
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise BadInput(f"namespace {', '.join(map(repr, doubled))} is named more than once; name each namespace once")
        self.engine = engine
        #: Each served namespace's engine (BadInput for one that is not declared).
        self.engines: dict[str, Any] = {name: engine.in_namespace(name) for name in names}
        self.store = engine.store
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.once = once
        self.stopping = asyncio.Event()
        self.running: dict[str, asyncio.Task[Any]] = {}
        self.namespace_of: dict[str, str] = {}  # run in flight -> its namespace
        self.done = 0
        self._first = 0  # the namespace asked first for the next run (turns: see take)
        self._passed_over: dict[str, float] = {}  # namespace stopped by its quota -> when it is asked again (monotonic)

    @property
    def namespaces(self) -> list[str]:
        return list(self.engines)

    def _pass_over(self, namespace: str, exc: QuotaExceeded) -> None:
        wait = min(QUOTA_RECHECK_SECONDS, max(self.poll_seconds, exc.retry_after or self.poll_seconds))
        self._passed_over[namespace] = time.monotonic() + wait
        log.warning("%s; its runs wait (asked again in %.0f s)", exc, wait)

    async def execute(self, run_id: str, namespace: str | None = None) -> None:
        namespace = namespace or self.namespaces[0]
        engine = self.engines[namespace]
        try:
            result = await engine.run_queued(run_id)
            self.done += 1
            if result is None:
                log.warning("run %s: planning failed (kept as a failed run)", run_id)
            else:
                log.info("run %s %s (%d steps)", run_id, result.status, result.steps)
        except QuotaExceeded as exc:
            self._pass_over(namespace, exc)
            await self._give_back(engine.store, run_id)
        except LeaseLost as exc:
            log.warning("run %s: %s", run_id, exc)
        except StoreError as exc:
            log.warning("run %s: the store failed (%s); the run is left to be taken again when its lease runs out", run_id, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a plan that no longer validates, a tool registry that changed...
            log.warning("run %s could not run: %s", run_id, exc)
            try:
                await asyncio.to_thread(engine.store.finish, run_id, "failed", error=str(exc))
            except StoreError:
                pass

    async def _tokens_spent(self, namespace: str) -> bool:
        """Whether ``namespace``'s tokens of the day are spent (it is then passed over for a while)."""
        store = self.engines[namespace].store
        if store.tokens_per_day is None or await asyncio.to_thread(store.tokens_left) > 0:
            return False
        from vm.store.quotas import today

        self._pass_over(namespace, QuotaExceeded(
            f"namespace '{namespace}' used its {store.tokens_per_day} tokens of today ({today()}, UTC)", namespace=namespace,
            retry_after=QUOTA_RECHECK_SECONDS))
        return True

    async def take(self) -> tuple[str, str] | None:
        """The next run to execute and its namespace, or None when no served namespace has one.
        Namespaces are asked in turn: the one after the namespace of the last run taken first."""
        names = self.namespaces
        now = time.monotonic()
        for turn in range(len(names)):
            index = (self._first + turn) % len(names)
            namespace = names[index]
            if self._passed_over.get(namespace, 0.0) > now:
                continue
            try:
                if await self._tokens_spent(namespace):
                    continue
                run_id = await asyncio.to_thread(self.engines[namespace].store.claim_next)
            except QuotaExceeded as exc:
                self._pass_over(namespace, exc)
                continue
            except StoreError as exc:
                log.warning("cannot take runs from the store (%s); trying again", exc)
                await asyncio.sleep(self.poll_seconds)
                return None
            if run_id is not None:
                self._first = (index + 1) % len(names)
                return namespace, run_id
        return None

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        while not self.stopping.is_set():
            while len(self.running) < self.concurrency and not self.stopping.is_set():
                taken = await self.take()
                if taken is None:
                    break
                namespace, run_id = taken
                task = asyncio.create_task(self.execute(run_id, namespace))
                self.running[run_id] = task
                self.namespace_of[run_id] = namespace
                task.add_done_callback(lambda _t, r=run_id: (self.running.pop(r, None), self.namespace_of.pop(r, None)))
            if self.once and not self.running:
                break
            waiters = [asyncio.ensure_future(self.stopping.wait()), *self.running.values()]
            await asyncio.wait(waiters, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED)
            waiters[0].cancel()
        await self.stop()
        return self.done

    async def _give_back(self, store: Any, run_id: str) -> None:
        try:
            if await asyncio.to_thread(store.status_of, run_id) != "queued":  # (the VM gives back runs it executes)
                await asyncio.to_thread(store.release, run_id)
            log.warning("run %s given back to the queue", run_id)
        except (LeaseLost, RunStateError, StoreError) as exc:  # its lease may be gone: another worker has it
            log.warning("run %s: not given back (%s)", run_id, exc)
        except Exception:
            log.exception("run %s: not given back (an unexpected error; its traceback follows)", run_id)

    async def stop(self) -> None:
        """Let runs in flight finish for grace_seconds, then give the rest back to the queue."""
        if not self.running:
            return
        log.warning("stopping: waiting up to %.0f s for %d run(s) in flight", self.grace_seconds, len(self.running))
        _done, pending = await asyncio.wait(list(self.running.values()), timeout=self.grace_seconds)
        unfinished = [(run_id, self.namespace_of.get(run_id)) for run_id, task in list(self.running.items()) if task in pending]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for run_id, namespace in unfinished:
            engine = self.engines.get(namespace or "", self.engine)
            await self._give_back(engine.store, run_id)

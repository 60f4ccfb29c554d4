"""Runs executing as tasks of one event loop, their events, and the store reached from threads
within a timeout: what any long-running front end (the HTTP service, a WebSocket or gRPC API)
needs, below all of them.

:class:`RunTasks` holds the engine (in its ``service`` role: the store is called in threads), the
:class:`~planvm.engine.events.EventHub`, and the runs executing here (a cache: the store's leases
say who executes a run), for one namespace; :meth:`RunTasks.in_namespace` gives another
namespace's, over its own engine and view of the store, so a run is executed, streamed and
read only through the store of its namespace.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from planvm.engine.events import EventHub
from vm import RunListener
from vm.errors import BadInput, PlanVMError, StoreUnavailable

__all__ = ["HEALTH_TIMEOUT", "RunTasks"]

log = logging.getLogger("planvm.serve")
_FINISHED = frozenset({"completed", "failed", "cancelled"})
HEALTH_TIMEOUT = 0.05  # /healthz answers within 100 ms, whatever the database does


class RunTasks:
    """The engine (in its ``service`` role), the event hub, and a cache of the runs executing here."""

    def __init__(self, engine: Any, store_timeout: float, *, _home: RunTasks | None = None) -> None:
        if engine.store is None:
            raise BadInput("the service needs a run store")
        self._origin = engine  # (the engine other namespaces' engines are made from)
        self.engine = engine.as_role("service")  # no store call waits on the event loop
        self.store = engine.store
        self._home = _home
        self._spaces: dict[str, RunTasks] = {}
        self._spaces_lock = threading.Lock()
        self.store_timeout = store_timeout
        self.hub = EventHub(self.io)
        # A cache, never the truth (that is the store's status and lease): the tasks of runs this
        # process executes, to stop one at once when it is cancelled, and to end them on shutdown.
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self._health: asyncio.Future[Any] | None = None
        self._health_pool = ThreadPoolExecutor(1, thread_name_prefix="planvm-health")

    def in_namespace(self, name: str) -> RunTasks:
        """The runs, events and engine of namespace ``name`` (this when it is its own), made once
        (in a thread: its engine reads its settings); they stop with this one."""
        home = self._home or self
        if name == home.engine.config.namespace:
            return home
        with home._spaces_lock:
            found = home._spaces.get(name)
            if found is None:
                found = home._spaces[name] = RunTasks(home._origin.in_namespace(name), home.store_timeout, _home=home)
            return found

    def namespaces(self) -> list[RunTasks]:
        """This namespace's and every other namespace's made so far."""
        home = self._home or self
        return [home, *home._spaces.values()]

    async def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)`` in a worker thread, bounded by the store timeout."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(function, *args, **kwargs), self.store_timeout)
        except TimeoutError:
            raise StoreUnavailable(
                f"the run store did not answer within {self.store_timeout:g} s; try again when it is back"
            ) from None

    async def io(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await self.call(getattr(self.store, name), *args, **kwargs)

    async def health(self) -> str | None:
        """None when the store answers within HEALTH_TIMEOUT, else why not. One ping at a time:
        while one hangs (a database cut off), later checks wait on it, not on a new one."""
        if self._health is None or self._health.done():
            self._health = asyncio.get_running_loop().run_in_executor(self._health_pool, self.store.ping)
        try:
            await asyncio.wait_for(asyncio.shield(self._health), HEALTH_TIMEOUT)
        except TimeoutError:
            return f"the run store did not answer within {HEALTH_TIMEOUT * 1000:.0f} ms"
        except PlanVMError as exc:
            return self.engine.public(str(exc))
        return None

    async def launch(
        self, start: Callable[[RunListener], Awaitable[Any]], *, resumed: bool = False
    ) -> tuple[str, asyncio.Task[Any]]:
        """Start a run in the background; answer its id once it is in the store (or raise what
        stopped it before that: an invalid plan, a planning failure, a run in another state)."""
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = self._drive(start, None, ready=ready, resumed=resumed)
        return await ready, task

    def start(self, run_id: str, start: Callable[[RunListener], Awaitable[Any]]) -> asyncio.Task[Any]:
        """Run ``start`` in the background for a run already in the store (a goal being planned)."""
        return self._drive(start, run_id)

    def _drive(
        self, start: Callable[[RunListener], Awaitable[Any]], run_id: str | None, *, ready: asyncio.Future[str] | None = None,
        resumed: bool = False,
    ) -> asyncio.Task[Any]:
        """The task executing one run here, its events fed to the hub. An error before the run is in
        the store goes to ``ready`` (the request reports it); one after it is logged, and the run,
        if still ``running`` under this process, is marked ``interrupted``."""
        hub = self.hub
        cell: dict[str, str] = {"id": run_id} if run_id is not None else {}

        def on_open(opened: str, committed: int) -> None:
            cell["id"] = opened
            self.tasks[opened] = task
            hub.opened(opened, committed, resumed=resumed)
            if ready is not None and not ready.done():
                ready.set_result(opened)

        listener = RunListener(
            on_open=on_open,
            on_step=lambda record: hub.step_finished(cell["id"], record),
            on_step_start=lambda seq_no, kind, tool: hub.step_started(cell["id"], seq_no, kind, tool),
            on_token=lambda seq_no, delta: hub.token(cell["id"], seq_no, delta),
        )

        async def drive() -> Any:
            try:
                return await start(listener)
            except Exception as exc:
                if ready is not None and not ready.done():
                    ready.set_exception(exc)  # the request that started it reports it
                elif "id" in cell:
                    log.warning("run %s stopped: %s", cell["id"], self.engine.public(str(exc)))
                    try:  # not left `running` under a lease nobody renews: say what happened, where we still can
                        await self.call(self.store.finish, cell["id"], "interrupted",
                                        error=self.engine.public(f"the server could not go on: {exc}"))
                    except PlanVMError:
                        pass
                return None
            except BaseException:
                if ready is not None and not ready.done():
                    ready.set_exception(RuntimeError("the server stopped before the run started"))
                raise
            finally:
                done_id = cell.get("id")
                if done_id is not None:
                    if self.tasks.get(done_id) is task:
                        del self.tasks[done_id]
                    hub.ended(done_id)

        task = asyncio.create_task(drive())
        if run_id is not None:
            self.tasks[run_id] = task
        return task

    def close(self) -> None:
        self._health_pool.shutdown(wait=False, cancel_futures=True)


    async def finished(self, run_id: str, max_seconds: float | None) -> None:
        """Until a worker has finished the run (or it waits), or max_seconds (and a minute) passed."""
        deadline = asyncio.get_running_loop().time() + (max_seconds or 600.0) + 60.0
        while asyncio.get_running_loop().time() < deadline:
            if await self.io("status_of", run_id) in _FINISHED | {"waiting"}:
                return
            await asyncio.sleep(0.2)

    async def outcome(self, run_id: str) -> dict[str, Any]:
        """The stored run's outcome (a page of steps at a time), as ``planvm exec --json`` prints it."""
        from planvm.engine.events import stored_outcome

        return await stored_outcome(self.io, run_id)

    async def mark_abandoned(self, namespaces: Iterable[str] = ()) -> None:
        """Runs a dead process left ``running`` can be resumed: say so in the store (in this
        namespace, and in each of ``namespaces``)."""
        await self.call(self.store.mark_abandoned)
        for name in namespaces:
            if name != self.store.namespace:
                await self.call(self.store.in_namespace(name).mark_abandoned)

    async def stop(self) -> None:
        """Stop the runs executing here, in every namespace (each kept as its VM keeps a stopped
        run), and the threads."""
        tasks = [task for space in self.namespaces() for task in space.tasks.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.close()

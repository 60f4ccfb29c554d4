"""Plan, then run: the one path from a stored goal to a running plan, for every front end.

``planvm run``, ``POST /v1/runs`` with a goal, MCP's ``run_goal``, a worker's queued goal and a
resumed run stopped while it was planned all store the goal first (status ``planning``, or a
queued run claimed), then call :meth:`_Planning.plan_then_run`: it asks the planner (any call that
returns a ``PlanResult``: the configured planner, or a streamed one) within what is left of the
run's ``max_seconds``, records the planning on the run — its success, or its failure with the
planner's attempts, one way — and runs the plan under the limits kept with the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from vm import VM, RunListener, RunResult
from vm.errors import BadInput, LLMError, PlanningError, PlanVMError

__all__ = ["in_daemon_thread"]

PlannerCall = Callable[[], Any]  # returns a planner.PlanResult; raises PlanningError or LLMError


def in_daemon_thread(work: Callable[[], Any]) -> asyncio.Future[Any]:
    """``work()`` in a thread of its own that does not hold the process open: a planner call cut
    off by the run's deadline (or Ctrl-C) is left to end by itself while the command exits, and
    sends no request after that (tools.abandon)."""
    import threading

    from tools.abandon import abandoned_when

    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    given_up = threading.Event()
    future.add_done_callback(lambda done: given_up.set() if done.cancelled() else None)

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def run() -> None:
        try:
            with abandoned_when(given_up):
                outcome, error = work(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, outcome, error)
        except RuntimeError:
            pass  # the loop is gone: nobody waits for this any more

    threading.Thread(target=run, name="planvm-planner", daemon=True).start()
    return future


class _Planning:
    """The engine's plan-then-run path (mixed into :class:`planvm.engine.Engine`)."""

    vm: VM
    limits: Any
    approve_tools: frozenset[str]
    config: Any

    def open_planning(
        self, goal: str, *, metadata: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
        approve_tools: Iterable[str] = (), use_library: bool | None = None, planner_kind: str | None = None,
    ) -> str:
        """Store ``goal`` as a run in status ``planning``, held by this process, and return its id
        at once (the service answers with it before the planner has said a word); the knowledge
        base is checked first when the template planner will write the plan (it always retrieves)."""
        store = self._store()  # type: ignore[attr-defined]
        if self.planner_name(planner_kind) == "template":
            self.check_knowledge_base(None)  # type: ignore[attr-defined]
        return store.create_run(
            None, goal=goal, metadata=metadata or None, limits=self.limits.model_copy(update=limits or {}).model_dump(),
            approve_tools=sorted(self.approve_tools | frozenset(approve_tools)) or None, status="planning", tools=self.vm.tool_sources,
            planning={"no_library": True} if use_library is False else None,
        )

    def planner_name(self, kind: str | None) -> str:
        """Who writes the plan for ``kind`` (None: the configured choice): ``llm`` or ``template``."""
        kind = kind or self.config.planner_kind
        return "template" if kind == "template" or (kind == "auto" and not self.has_model("planner")) else "llm"  # type: ignore[attr-defined]

    def planner_call(self, goal: str, metadata: dict[str, Any] | None, kind: str | None, use_library: bool | None,
                     streamed: Any = None) -> PlannerCall:
        """The default planner call of :meth:`plan_then_run`: :meth:`Engine.plan` (``streamed``:
        hearing the plan's instructions as they are written, see planvm.engine.streamed)."""
        return lambda: self.plan(goal, metadata, kind, use_library=use_library, streamed=streamed)  # type: ignore[attr-defined]

    async def plan_then_run(
        self, run_id: str, plan: PlannerCall, *, vm: VM | None = None, spent: float = 0.0, kind: str | None = None,
        listener: RunListener | None = None, planned: Callable[[Any], None] | None = None, streamed: Any = None,
    ) -> RunResult:
        """Plan the run ``run_id`` this process holds (being planned, or a queued goal it claimed)
        with ``plan()``, within ``vm``'s wall-clock budget less the ``spent`` seconds the run used
        before; keep the planning with the run; run it under the limits kept with it.

        ``planned(result)`` is called with the planner's result before the run starts. A planning
        that fails (``PlanningError``, ``LLMError``, or ``BadInput``: the plan retrieves from a
        knowledge base that is not there) ends the run as failed, with the planner's attempts,
        and is raised with ``run_id`` set. A planning stopped from outside (Ctrl-C, a task
        cancelled) leaves the run as this engine's VM leaves a stopped run: ``interrupted``
        (resuming it plans it again), or ``queued`` again (a worker). A run cancelled meanwhile
        raises ``RunStateError``."""
        vm = vm or self.vm
        began = time.monotonic()
        try:
            result, _vm, record = await self._plan_within(vm, plan, spent, streamed=streamed)
            if planned is not None:
                planned(result)
            self.check_knowledge_base(result.plan)  # type: ignore[attr-defined]
        except (PlanningError, LLMError, BadInput) as exc:
            await asyncio.to_thread(self._fail_planning, run_id, exc, kind, time.monotonic() - began)
            exc.run_id = run_id  # type: ignore[attr-defined]
            raise
        except BaseException:
            self._stop_planning(run_id)
            raise
        await asyncio.to_thread(self._store().set_plan, run_id, result.plan, record)  # type: ignore[attr-defined]
        # Under the limits kept with it: the time planning took counts against its max_seconds.
        from planvm.engine.streamed import served_by

        return await served_by(self.vm, streamed).aresume(run_id, claimed=True, listener=listener)

    async def _plan_within(self, vm: VM, plan: PlannerCall, spent: float = 0.0, *, streamed: Any = None) -> tuple[Any, VM, dict[str, Any]]:
        """``plan()`` within ``vm``'s wall-clock budget, less the ``spent`` seconds the run used
        before (``PlanningError`` past it); return the plan, the VM to run it with (not recorded:
        its budget is what planning left) and the planning's record, with the seconds it took."""
        budget = vm.limits.max_seconds
        began = time.monotonic()
        try:
            result = await asyncio.wait_for(in_daemon_thread(plan), None if budget is None else max(budget - spent, 0.001))
        except TimeoutError:
            raise PlanningError(
                f"planning took more than the run's {budget:g} s (--max-seconds / max_seconds, which planning counts "
                f"against); raise it, or check the planner's model server", attempts=[]) from None
        finally:
            if streamed is not None:
                streamed.finish()  # nothing more starts early; the calls started go on for the run to take
        took = time.monotonic() - began
        if budget is not None:  # what planning used is gone from the run's wall-clock budget
            left = max(budget - took, 0.001)
            vm = vm.derive(limits=vm.limits.model_copy(update={"max_seconds": left}), keep=vm.kept_limits or vm.limits)
        record = {**result.record(), "seconds": round(took, 3)}
        return result, vm, (streamed.annotate(record) if streamed is not None else record)

    def _fail_planning(self, run_id: str, exc: Exception, kind: str | None, took: float) -> None:
        """End a run this process was planning as failed, with the planner's attempts (left as it
        is when it was cancelled meanwhile, or when the store is away: the error is what matters)."""
        from vm.errors import RunStateError

        attempts = [a.to_dict() for a in getattr(exc, "attempts", None) or ()]
        record = {"planner": self.planner_name(kind), "attempts": attempts, "error": str(exc), "seconds": round(took, 3)}
        try:
            self._store().fail_planning(run_id, f"planning failed: {exc}", record)  # type: ignore[attr-defined]
        except RunStateError:
            pass  # cancelled while it was being planned
        except PlanVMError:
            pass

    def _stop_planning(self, run_id: str) -> None:
        """A planning stopped from outside: the run becomes what a stopped run of this engine's VM
        becomes (``interrupted``: resuming it plans it again; ``queued``: a worker gives it back).
        Not in a thread: the task may be being cancelled."""
        store = self._store()  # type: ignore[attr-defined]
        try:
            if self.vm.stopped_status == "queued":
                store.release(run_id)
            else:
                store.finish(run_id, "interrupted", error="interrupted while its plan was being written; resume it to plan it again")
        except PlanVMError:
            pass  # cancelled meanwhile, or the store is away: a later start marks it abandoned

"""The VM: the one object an application holds to validate, run, resume and fork plans.

The interpreter itself is in :mod:`vm.interpreter`; the run store in :mod:`vm.store`.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from vm import bulk, telemetry
from vm.errors import (
    ApprovalNeeded,
    BadInput,
    ForkError,
    LeaseLost,
    Problem,
    RunCancelled,
    RunError,
    RunStateError,
    StoreError,
    StoreUnavailable,
    ToolRejected,
)
from vm.interpreter import Interpreter
from vm.limits import Limits, continuing
from vm.llm import LLM
from vm.plan import canonical_instruction, load_plan_data
from vm.program import FINAL_ANSWER, Program
from vm.store.interface import Store
from vm.store.records import StoredRun
from vm.threads import StoreThreads, Threads
from vm.tooling import RunLLM, ToolCatalog
from vm.trace import RunListener, RunResult, StepRecord
from vm.validate import LARGE_PLAN, compile_plan, large_plan, validate_plan

__all__ = ["VM"]

T = TypeVar("T")


class VM:
    """Runs plans against a tool catalog, with an optional LLM, under :class:`Limits`.

    >>> vm = VM(registry, llm=my_llm, limits=Limits(max_steps=200), store=RunStore())  # doctest: +SKIP
    >>> result = vm.run("plan.json")                                                    # doctest: +SKIP
    >>> result.final_answer, result.run_id                                              # doctest: +SKIP

    ``llm`` answers tools such as ``llm_generate``; ``condition_llm`` (default: ``llm``) decides
    ``jmp`` conditions. ``allowed_tools`` limits the run to those tool names (checked statically
    and again before every call). ``approve_tools``: before calling one of these, a recorded run
    stops with status ``waiting`` until :meth:`approve` decides. ``on_step`` is called with each
    :class:`StepRecord` as it is committed; ``on_start`` with the run id as soon as a recorded run
    is created, resumed or forked; ``on_token(seq_no, text)`` with streamed answer text (a
    :class:`RunListener` passed to one run adds its own callbacks).
    ``store`` records every run step by step (needed by :meth:`resume` and :meth:`fork`).
    ``concurrency`` is how many tool calls may overlap when steps are independent (1: strictly
    one step at a time); results are committed in ``seq_no`` order either way.
    ``store_in_threads``: the async methods call the store, and validate plans, in worker threads
    (for an event loop that serves other work meanwhile: a service, a worker).
    ``stopped_status``: what a run stopped from outside (Ctrl-C, a task cancelled) becomes:
    ``interrupted`` (resume it), or ``queued`` (a worker stopping gives its runs back to the queue).
    ``tool_sources``: where the tools came from (plugin files and hashes, MCP servers, builtins),
    kept with each run it starts so that going on with the run later takes the same tools.
    """

    def __init__(
        self,
        registry: ToolCatalog | None = None,
        llm: LLM | None = None,
        limits: Limits | None = None,
        *,
        allowed_tools: Iterable[str] | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
        on_start: Callable[[str], None] | None = None,
        on_token: Callable[[int, str], None] | None = None,
        store: Store | None = None,
        concurrency: int = 8,
        max_threads: int = 8,
        condition_llm: LLM | None = None,
        approve_tools: Iterable[str] = (),
        store_in_threads: bool = False,
        stopped_status: Literal["interrupted", "queued"] = "interrupted",
        tool_sources: dict[str, Any] | None = None,
    ) -> None:
        if concurrency < 1:
            raise BadInput("concurrency must be at least 1 (1 runs one step at a time)")
        if stopped_status not in ("interrupted", "queued"):
            raise BadInput("stopped_status is 'interrupted' (resume the run) or 'queued' (a worker gives it back)")
        self.registry = registry
        self.llm = llm
        self.limits = limits or Limits()
        self.kept_limits: Limits | None = None  # the limits a new run is stored with, when not these (see derive)
        self.tool_sources = tool_sources
        self.allowed_tools = frozenset(allowed_tools) if allowed_tools is not None else None
        self.on_step = on_step
        self.on_start = on_start
        self.on_token = on_token
        self.condition_llm = condition_llm
        self.approve_tools = frozenset(approve_tools)
        self.store = store
        # Store calls (and validation) in worker threads, so the event loop never waits on the
        # database: for a process serving many runs at once (the service, a worker).
        self.store_in_threads = store_in_threads
        self.stopped_status = stopped_status
        self.concurrency = concurrency
        self._pool = Threads(max_threads)
        # Store calls from async code (store_in_threads): as many threads as the store's backend
        # usefully takes (SQLite serializes writers anyway: one thread, in order; a server a few).
        self._store_pool = StoreThreads(store.parallel_calls if store is not None else 1, "planvm-store")
        telemetry.configure_from_env()

    # --- validation ---------------------------------------------------------------------------

    def validate(self, plan: Any, *, variables: Iterable[str] = ()) -> list[Problem]:
        """Every static problem of ``plan`` against this VM's tools (empty when it is valid)."""
        return validate_plan(plan, self.registry, allowed_tools=self.allowed_tools, predefined=variables, limits=self.limits)[1]

    def compile(self, plan: Any, *, variables: Iterable[str] = ()) -> Program:
        """Validate and compile ``plan`` (raises ``PlanValidationError``); reuse it across runs."""
        if isinstance(plan, Program):
            return plan
        return compile_plan(plan, self.registry, allowed_tools=self.allowed_tools, predefined=variables, limits=self.limits)

    # --- running ------------------------------------------------------------------------------

    def run(
        self,
        plan: Any,
        *,
        variables: dict[str, Any] | None = None,
        goal: str | None = None,
        metadata: dict[str, Any] | None = None,
        approve_tools: Iterable[str] | None = None,
    ) -> RunResult:
        """Validate and run ``plan`` (a path, JSON text, parsed data or a compiled Program).

        Raises ``PlanError`` when the plan cannot run at all; every failure after the first step
        started is returned as a failed :class:`RunResult` (``result.raise_for_error()`` raises it).
        ``goal`` and ``metadata`` are recorded with the run; ``approve_tools`` adds tools that
        need approval in this run (kept with it, so they still do when it is resumed).
        """
        return self._sync(self.arun(plan, variables=variables, goal=goal, metadata=metadata, approve_tools=approve_tools))

    async def arun(
        self,
        plan: Any,
        *,
        variables: dict[str, Any] | None = None,
        goal: str | None = None,
        metadata: dict[str, Any] | None = None,
        approve_tools: Iterable[str] | None = None,
        listener: RunListener | None = None,
        planning: dict[str, Any] | None = None,
    ) -> RunResult:
        """The async form of :meth:`run`; ``listener`` hears this run's progress, ``planning``
        (how the plan was made: planner, reasoning, model, tokens) is recorded with it."""
        state: dict[str, Any] = dict(variables or {})
        program = await self.acompile(plan, variables=state)
        approve = self.approve_tools | frozenset(approve_tools or ())
        run_id = None
        if self.store is not None:
            run_id = await self._io(
                self.store.create_run, program.to_data(), variables=state, goal=goal, metadata=metadata,
                limits=(self.kept_limits or self.limits).model_dump(), planning=planning, approve_tools=sorted(approve) or None,
                tools=self.tool_sources,
            )
        return await self._execute(program, state, run_id=run_id, listener=listener, approve_tools=approve)

    def resume(self, run_id: str) -> RunResult:
        """Continue a stored run that was killed or failed, from its last completed step.

        Completed steps are not executed again; the variables are rebuilt from the record. A run
        that another live process is executing raises :class:`~vm.errors.RunBusy`.
        """
        return self._sync(self.aresume(run_id))

    async def aresume(
        self,
        run_id: str,
        *,
        listener: RunListener | None = None,
        approvals: dict[int, dict[str, Any]] | None = None,
        claimed: bool = False,
        approving: bool = False,
    ) -> RunResult:
        """``claimed``: this process already holds the run's lease (a worker that took it from the
        queue); ``approving``: the run waits for the approval in ``approvals`` (and is taken only
        while it still does: a run cancelled meanwhile runs nothing)."""
        store = self._need_store("resume")
        if claimed:
            stored = await self._io(store.claim, run_id, held=True, approving=approving)
            try:
                program = await self.acompile(stored.plan, variables=stored.variables)
            except BaseException:
                await self._io(store.finish, stored.id, "failed", error="the recorded plan no longer validates against these tools")
                raise
        else:
            # Checked against these tools before the run is taken: a command given the wrong tools
            # changes nothing (a waiting run still waits, an interrupted one can still be resumed).
            peek = await self._io(store.get, run_id, steps=False)
            program = await self.acompile(peek.plan, variables=peek.variables)
            stored = await self._io(store.claim, peek.id, approving=approving)
        run_id = stored.id  # the full id, when a prefix was given
        trace = [StepRecord.from_stored(s) for s in stored.steps]
        state = stored.variables_at()
        if trace and FINAL_ANSWER in trace[-1].outputs:  # killed after its last step was written
            await self._io(store.finish, run_id, "completed", final_answer=state.get(FINAL_ANSWER))
            return RunResult("completed", state.get(FINAL_ANSWER), state, trace, run_id=run_id)
        approve = self.approve_tools | frozenset(stored.approve_tools or ())
        return await self.for_run(stored.limits)._execute(
            program, state, run_id=run_id, trace=trace, start_pc=_next_position(program, stored), listener=listener,
            approve_tools=approve, approvals=approvals, spent=stored.active_seconds(),
        )

    def approve(
        self, run_id: str, seq_no: int, approved: bool, *, tool_params: dict[str, Any] | None = None, reason: str | None = None
    ) -> RunResult:
        """Decide the call a ``waiting`` run waits for, and continue it: ``approved`` runs the tool
        (with ``tool_params`` instead of the planned parameters, when given); otherwise the step
        fails with :class:`~vm.errors.ToolRejected`."""
        return self._sync(self.aapprove(run_id, seq_no, approved, tool_params=tool_params, reason=reason))

    async def aapprove(
        self,
        run_id: str,
        seq_no: int,
        approved: bool,
        *,
        tool_params: dict[str, Any] | None = None,
        reason: str | None = None,
        listener: RunListener | None = None,
    ) -> RunResult:
        store = self._need_store("approve")
        stored = await self._io(store.get, run_id)
        pending = stored.pending
        if stored.status != "waiting" or not pending:
            raise RunStateError(
                f"run '{stored.id}' is {stored.status}, not waiting for an approval; nothing to approve",
                run_id=stored.id, status=stored.status, path=str(store.path),
            )
        if pending.get("seq_no") != seq_no:
            raise RunStateError(
                f"run '{stored.id}' waits for the call at seq_no {pending.get('seq_no')} (tool '{pending.get('tool')}'), "
                f"not seq_no {seq_no}; approve or reject that one",
                run_id=stored.id, status=stored.status, path=str(store.path),
            )
        decision = {"approved": bool(approved), "tool_params": tool_params, "reason": reason}
        return await self.aresume(stored.id, listener=listener, approvals={seq_no: decision}, approving=True)

    def fork(self, run_id: str, from_seq: int, plan: Any, *, planning: dict[str, Any] | None = None) -> RunResult:
        """Start a new run that reuses ``run_id``'s steps before ``from_seq`` and continues with ``plan``.

        Every instruction the parent executed before the fork point must be unchanged in
        ``plan`` (so the reused steps stay true); the new run records its parent, and
        ``planning`` (how the new plan was made) when given.
        """
        return self._sync(self.afork(run_id, from_seq, plan, planning=planning))

    async def afork(
        self, run_id: str, from_seq: int, plan: Any, *, listener: RunListener | None = None, planning: dict[str, Any] | None = None
    ) -> RunResult:
        store = self._need_store("fork")
        parent = await self._io(store.get, run_id)
        run_id = parent.id  # the full id, when a prefix was given
        reached = [i for i, s in enumerate(parent.steps) if s.seq_no == from_seq]
        if not reached:
            executed = sorted({s.seq_no for s in parent.steps})
            if not executed:
                raise ForkError(
                    f"run '{run_id}' ({parent.status}) executed no step, so there is no seq_no {from_seq} to fork from; "
                    f"start a new run with the plan instead (planvm exec, or POST /v1/runs with a plan)",
                    path=str(store.path),
                )
            raise ForkError(
                f"run '{run_id}' never reached seq_no {from_seq} (it executed seq_no {_ranges(executed)}); "
                f"fork from one of those",
                path=str(store.path),
            )
        prefix = reached[0]
        program = await self.acompile(plan, variables=parent.variables)
        if from_seq not in program.position:
            raise ForkError(f"the new plan has no seq_no {from_seq} to continue from; add it or fork from another step")

        def unchanged() -> None:
            old = {ins["seq_no"]: canonical_instruction(ins) for ins in load_plan_data(parent.plan) if isinstance(ins, dict)}
            new = {ins["seq_no"]: ins for ins in program.to_data()}
            for seq in sorted({s.seq_no for s in parent.steps[:prefix]}):
                if new.get(seq) != old.get(seq):
                    raise ForkError(
                        f"the new plan changes seq_no {seq}, which the run already executed before seq_no {from_seq}; "
                        f"keep it as it was, or fork from seq_no {seq} or earlier"
                    )

        if len(program) > LARGE_PLAN:
            await asyncio.to_thread(unchanged)
        else:
            unchanged()
        approve = self.approve_tools | frozenset(parent.approve_tools or ())
        runner = self.for_run(parent.limits)  # the parent's limits go on with the fork (lowered, never raised)
        fork_id = await self._io(
            store.create_run, program.to_data(), variables=parent.variables, goal=parent.goal, metadata=parent.metadata,
            parent_id=run_id, fork_seq=from_seq, inherit_steps=prefix, limits=runner.limits.model_dump(),
            approve_tools=sorted(approve) or None, planning=planning, tools=self.tool_sources or parent.tools,
        )
        trace = [StepRecord.from_stored(s) for s in parent.steps[:prefix]]
        state = parent.variables_at(prefix)
        # Its steps and time so far are the inherited steps' (and its new plan's planning).
        forked = StoredRun(fork_id, "running", [], {}, parent.steps[:prefix], planning=planning)
        return await runner._execute(
            program, state, run_id=fork_id, trace=trace, start_pc=program.position[from_seq], listener=listener, approve_tools=approve,
            spent=forked.active_seconds(),
        )

    async def _execute(self, program: Program, state: dict[str, Any], *, run_id: str | None, **kwargs: Any) -> RunResult:
        if telemetry.tracer is None:
            return await self._execute_run(program, state, run_id=run_id, **kwargs)
        with telemetry.span("planvm.run", {"planvm.run_id": run_id, "planvm.instructions": len(program.steps)}) as current:
            result = await self._execute_run(program, state, run_id=run_id, **kwargs)
            current.set_attribute("planvm.status", result.status)
            current.set_attribute("planvm.steps", len(result.trace))
            if result.error is not None:
                telemetry.fail(current, result.error)
            return result

    async def _execute_run(
        self,
        program: Program,
        state: dict[str, Any],
        *,
        run_id: str | None,
        trace: list[StepRecord] | None = None,
        start_pc: int = 0,
        listener: RunListener | None = None,
        approve_tools: frozenset[str] = frozenset(),
        approvals: dict[int, dict[str, Any]] | None = None,
        spent: float = 0.0,
    ) -> RunResult:
        """``spent``: the seconds the run executed before (max_seconds counts the run's whole life)."""
        on_start, on_step, on_token = _both(self.on_start, listener and listener.on_start), _both(
            self.on_step, listener and listener.on_step
        ), _both(self.on_token, listener and listener.on_token)
        if run_id is not None and on_start is not None:
            on_start(run_id)
        if run_id is not None and listener is not None and listener.on_open is not None:
            listener.on_open(run_id, len(trace or ()))
        limits = self.limits
        started = time.monotonic()
        deadline = started + limits.max_seconds - spent if limits.max_seconds is not None else None
        run_llm = RunLLM(
            self.llm, limits.max_llm_calls, asyncio.get_running_loop(), self._threads, max_reply_bytes=limits.max_value_bytes,
            condition_llm=self.condition_llm, max_tokens=limits.max_tokens, on_token=on_token,
        )
        store = self.store if run_id is not None else None
        persist: Any = None
        complete: Any = None  # the step that assigns final_answer and the run's end: one transaction
        if store is not None:
            if self.store_in_threads:
                async def persist(index: int, record: StepRecord) -> None:
                    await self._io(store.record_step, run_id, index, record)

                async def complete(index: int, record: StepRecord) -> None:
                    await self._io(store.finish, run_id, "completed", final_answer=record.outputs[FINAL_ANSWER], step=(index, record))
            else:
                def persist(index: int, record: StepRecord) -> None:
                    store.record_step(run_id, index, record)

                def complete(index: int, record: StepRecord) -> None:
                    store.finish(run_id, "completed", final_answer=record.outputs[FINAL_ANSWER], step=(index, record))
        start_call: Any = None
        if store is not None:
            async def start_call(seq_no: int, tool: str) -> None:
                await self._io(store.start_call, run_id, seq_no, tool)
        run = Interpreter(
            self, program, state, run_llm, deadline, trace=trace, persist=persist, complete=complete, on_step=on_step,
            on_step_start=listener.on_step_start if listener is not None else None,
            approve_tools=approve_tools, approvals=approvals, run_id=run_id, start_call=start_call,
        )
        error: RunError | None = None
        cancelled = _Cancel(asyncio.current_task())

        def stopped() -> RunResult:
            return RunResult(
                status="cancelled", final_answer=None, variables=state, trace=run.trace, llm_calls=run.llm.calls,
                duration_s=time.monotonic() - started, run_id=run_id, tokens=run.llm.tokens,
            )

        heartbeat = _Heartbeat(store, run_id, cancelled) if store is not None and run_id is not None else None
        try:
            await run.execute(start_pc)
        except ApprovalNeeded as wait:
            if store is None or run_id is None:
                error = ToolRejected(
                    wait.tool_name, "it needs approval, and a run that is not recorded cannot wait for one (give the VM a store)"
                )
                error.locate(wait.seq_no or 0, "calling")
                return RunResult("failed", None, state, run.trace, error=error, llm_calls=run.llm.calls, run_id=run_id)
            pending = {"seq_no": wait.seq_no, "tool": wait.tool_name, "tool_params": wait.tool_params, "index": len(run.trace)}
            try:
                await self._io(store.wait, run_id, pending)
            except RunCancelled:
                return stopped()
            return RunResult(
                status="waiting", final_answer=None, variables=state, trace=run.trace, llm_calls=run.llm.calls,
                duration_s=time.monotonic() - started, run_id=run_id, pending=pending, tokens=run.llm.tokens,
            )
        except RunError as exc:
            error = exc
        except RunCancelled:
            return stopped()  # cancelled by another process (or request): its record stays as the cancel left it
        except LeaseLost:
            raise  # another worker may own the run now: write nothing more
        except BaseException as exc:
            if cancelled.seen and isinstance(exc, asyncio.CancelledError):
                cancelled.absorb()
                return stopped()
            if store is not None and run_id is not None:
                try:
                    await self._record_stop(store, run_id, exc, deadline)
                except RunCancelled:
                    if isinstance(exc, asyncio.CancelledError):  # a cancel made in the store, then here: it ended as asked
                        cancelled.absorb()
                        return stopped()
                except StoreError:
                    pass  # the first error is the one to see; a run nobody could mark is taken back when its lease runs out
                except asyncio.CancelledError:
                    if not isinstance(exc, asyncio.CancelledError):
                        raise  # stopped while it waited for the store to come back: stop now
            raise
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
        done = error is None
        final = state.get(FINAL_ANSWER) if done else None
        if store is not None and run_id is not None and not run.completed:
            try:
                await self._io(store.finish, run_id, "completed" if done else "failed", final_answer=final,
                               error=str(error) if error else None)
            except RunCancelled:
                return stopped()
            except StoreUnavailable as exc:  # its steps are recorded; resuming it records its end
                try:
                    await self._record_stop(store, run_id, exc, deadline)
                except StoreError:
                    pass
                raise
        return RunResult(
            status="completed" if done else "failed",
            final_answer=final,
            variables=state,
            trace=run.trace,
            error=error,
            llm_calls=run.llm.calls,
            duration_s=time.monotonic() - started,
            run_id=run_id,
            tokens=run.llm.tokens,
        )

    # --- plumbing -------------------------------------------------------------------------------

    async def _record_stop(self, store: Store, run_id: str, exc: BaseException, deadline: float | None) -> None:
        """Record that ``run_id`` stopped before it ended (``exc``): ``interrupted``, to be resumed
        (``queued`` again, for a worker giving its runs back). A store that failed did not fail the
        run: its message (without the store's location) is kept, written once the store answers,
        tried with backoff until the run's deadline (past it, its lease has run out: it is taken
        back as any abandoned run). In the store's threads (``store_in_threads``)."""
        failed = isinstance(exc, StoreError)
        why = (f"the run store failed ({store.public(str(exc))}); resume the run once the store is back" if failed
               else "interrupted before it ended")

        def record() -> None:
            if self.stopped_status == "queued":
                store.release(run_id)
            else:
                store.finish(run_id, "interrupted", error=why)

        if not self.store_in_threads:
            record()
            return
        until = deadline if deadline is not None else time.monotonic() + 600.0
        delay = 0.1
        while True:
            # Shielded: a task being cancelled still records why it stopped (a second cancel stops the wait).
            attempt = self._store_pool.call(record)
            try:
                await asyncio.shield(attempt)
                return
            except StoreUnavailable:
                if not failed or time.monotonic() + delay > until:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _io(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` (a store call): in the store's threads when
        ``store_in_threads`` is set."""
        if not self.store_in_threads:
            return function(*args, **kwargs)
        return await self._store_pool.call(function, *args, **kwargs)

    async def acompile(self, plan: Any, *, variables: Iterable[str] = ()) -> Program:
        """:meth:`compile`; a large plan (seconds of checking) in a worker thread, so an event loop
        that serves other work meanwhile is not held."""
        if large_plan(plan):
            def compiled() -> Program:
                with bulk.making():
                    program = self.compile(plan, variables=variables)
                    program.to_data()  # made once, here: the run stores it
                return program

            return await asyncio.to_thread(compiled)
        return self.compile(plan, variables=variables)

    def _need_store(self, what: str) -> Store:
        if self.store is None:
            raise BadInput(f"{what} needs a run store: VM(..., store=RunStore())")
        return self.store

    @staticmethod
    def _sync(coro: Coroutine[Any, Any, T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        coro.close()
        raise RuntimeError("a blocking VM method was called from a running event loop; use its async form (await vm.arun(...))")

    def for_run(self, kept: dict[str, Any] | None) -> VM:
        """This VM, or one like it, under the limits to go on with a stored run: those kept with
        the run, lowered (never raised) by limits this VM was given explicitly (see
        :func:`vm.limits.continuing`)."""
        limits, _raised = continuing(kept, self.limits)
        return self if limits == self.limits else self.derive(limits=limits)

    def derive(
        self, *, limits: Limits | None = None, keep: Limits | None = None, store_in_threads: bool | None = None,
        stopped_status: Literal["interrupted", "queued"] | None = None,
    ) -> VM:
        """A VM with other limits (or another ``store_in_threads`` / ``stopped_status``), sharing
        this one's tools, LLMs, store and thread pools (close only the original). ``keep``: the
        limits its new runs are stored with instead (a run whose planning used part of its time
        runs with what is left, and keeps what was asked)."""
        other = copy.copy(self)
        if limits is not None:
            other.limits = limits
            other.kept_limits = keep
        if store_in_threads is not None:
            other.store_in_threads = store_in_threads
        if stopped_status is not None:
            other.stopped_status = stopped_status
        return other

    def share_store_threads(self, other: VM) -> None:
        """Make this VM's store calls in ``other``'s store threads: VMs over views of one store
        (its namespaces) then write in one order, as one VM does, instead of contending for it."""
        self._store_pool = other._store_pool

    def close(self) -> None:
        """Release the thread pool used for sync tools (also done by ``with VM(...) as vm``)."""
        self._pool.close()
        self._store_pool.close()

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _threads(self) -> ThreadPoolExecutor:
        return self._pool.get()


class _Cancel:
    """How a run's heartbeat stops the run's task when the run was cancelled in the store."""

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.seen = False

    def fire(self) -> None:
        self.seen = True
        if self.task is not None:
            self.task.cancel()

    def absorb(self) -> None:
        """The task ends normally (as ``cancelled``) instead of raising CancelledError."""
        if self.task is not None:
            self.task.uncancel()


class _Heartbeat:
    """Renews the run's lease while it executes (a third of the lease at a time), so a long step
    does not lose it. A run cancelled in the store (by any process) is stopped here at once; any
    other failed renewal leaves the next step's commit to refuse. Until the first renewal is due
    it is a timer, not a task: most runs end before it."""

    def __init__(self, store: Store, run_id: str, cancel: _Cancel) -> None:
        self.interval = min(max(store.lease_seconds / 3, 0.05), 2.0)
        self.args = store, run_id, cancel
        self.task: asyncio.Task[None] | None = None
        self.timer = asyncio.get_running_loop().call_later(self.interval, self._start)

    def _start(self) -> None:
        self.task = asyncio.ensure_future(self._beat(*self.args))

    async def _beat(self, store: Store, run_id: str, cancel: _Cancel) -> None:
        while True:
            try:
                if not await asyncio.to_thread(store.renew, run_id):
                    if await asyncio.to_thread(store.status_of, run_id) == "cancelled":
                        cancel.fire()
                    return
            except StoreError:
                pass  # the database is away: the commit that follows retries or reports it
            await asyncio.sleep(self.interval)

    def cancel(self) -> None:
        self.timer.cancel()
        if self.task is not None:
            self.task.cancel()


def _both(first: Callable[..., None] | None, second: Callable[..., None] | None) -> Callable[..., None] | None:
    """One callback calling both (None when neither is set)."""
    if first is None or second is None:
        return first or second

    def both(*args: Any) -> None:
        first(*args)
        second(*args)

    return both


def _next_position(program: Program, stored: StoredRun) -> int:
    """Where a resumed run continues: after its last completed step."""
    if not stored.steps:
        return 0
    last = stored.steps[-1]
    if last.type == "jmp":
        return program.position[last.next_seq] if last.next_seq is not None else len(program)
    return program.position[last.seq_no] + 1


def _ranges(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers)) if len(numbers) <= 12 else ", ".join(map(str, numbers[:12])) + ", ..."

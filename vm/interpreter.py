"""The engine behind :class:`vm.VM`: one run's program counter, variables, trace and budgets.

Semantics (each one tested in ``tests/``):

* steps run in ascending ``seq_no``; a ``jmp`` moves the program counter to another ``seq_no``;
* all values of one ``assign`` are computed from the variables as they were *before* the step,
  then stored together (so ``{"a": "${b}", "b": "${a}"}`` swaps);
* the run completes as soon as a step assigns the variable named exactly ``final_answer``;
  running past the last step without it is :class:`~vm.errors.NoFinalAnswer`;
* a tool's own exception is chained into :class:`~vm.errors.ToolFailed`, never turned into text;
* the step, wall-clock and LLM-call budgets of :class:`~vm.limits.Limits` end a run with a
  :class:`~vm.errors.LimitExceeded` error instead of letting it hang.

Concurrency: inside a straight-line stretch of steps (no jump leaves or enters it), a step may
start as soon as the steps that write what it reads have finished, so independent tool calls
overlap. Results are still *committed* in ``seq_no`` order — variables, trace, store rows and
``on_step`` calls — so what a caller observes equals sequential execution. If a step fails, the
steps after it are cancelled and never committed (a tool already running cannot be un-run).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections import ChainMap
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from vm import telemetry
from vm.condition import evaluate_condition
from vm.errors import (
    ApprovalNeeded,
    NoFinalAnswer,
    RunError,
    StepLimitExceeded,
    TimeLimitExceeded,
    ToolFailed,
    ToolNotAllowed,
    ToolNotFound,
    ToolRejected,
    UnstorableValue,
    ValueTooLarge,
)
from vm.jsonsafe import ValueLimitError, storable
from vm.outputs import map_outputs
from vm.program import (
    FINAL_ANSWER,
    AssignStep,
    CallingStep,
    JmpStep,
    Program,
    ReasoningStep,
    Step,
)
from vm.tooling import CallContext, RunLLM, StepLLM
from vm.trace import StepRecord
from vm.values import TEXT_LIMIT, render_text

__all__ = ["Interpreter"]

_DONE = -1  # "the run completed" from a block


class Interpreter:
    """Executes one run of ``program`` from position ``start_pc``, after the ``trace`` so far."""

    def __init__(
        self,
        vm: Any,
        program: Program,
        variables: dict[str, Any],
        llm: RunLLM,
        deadline: float | None,
        *,
        trace: list[StepRecord] | None = None,
        persist: Callable[[int, StepRecord], Any] | None = None,
        complete: Callable[[int, StepRecord], Any] | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
        on_step_start: Callable[[int, str, str | None], None] | None = None,
        approve_tools: frozenset[str] = frozenset(),
        approvals: dict[int, dict[str, Any]] | None = None,
        run_id: str | None = None,
        start_call: Callable[[int, str], Awaitable[None]] | None = None,
    ) -> None:
        self.vm = vm
        self.run_id = run_id  # for trace spans
        self.program = program
        self.store = variables
        self.llm = llm
        self.deadline = deadline
        self.trace: list[StepRecord] = trace if trace is not None else []
        self.persist = persist
        self._persist_async = asyncio.iscoroutinefunction(persist)  # a store written from a worker thread
        # Records the step that assigns final_answer and ends the run in the store, in one
        # transaction (``completed`` then says the run's end is recorded).
        self.complete = complete
        self.completed = False
        self.on_step = on_step
        self.on_step_start = on_step_start
        self.approve_tools = approve_tools
        self.approvals = dict(approvals or {})
        # Claims an approved call in the store before its tool starts (RunCancelled: it never starts).
        self.start_call = start_call
        self.concurrency = max(1, vm.concurrency)
        self.calls_in_flight = asyncio.Semaphore(self.concurrency)

    # --- the loop -----------------------------------------------------------------------------

    async def execute(self, start_pc: int = 0) -> None:
        token = TEXT_LIMIT.set(self.vm.limits.max_value_bytes)
        try:
            await self._execute(start_pc)
        finally:
            TEXT_LIMIT.reset(token)

    def keep(self, value: Any, what: str) -> Any:
        """``value`` as the run may keep it: JSON-storable, within max_value_bytes and max_depth."""
        limits = self.vm.limits
        try:
            return storable(value, max_bytes=limits.max_value_bytes, max_depth=limits.max_depth)
        except ValueLimitError as exc:
            if exc.limit == "json":
                raise UnstorableValue(f"{what} cannot be recorded: {exc}") from None
            bound = limits.max_value_bytes if exc.limit == "max_value_bytes" else limits.max_depth
            raise ValueTooLarge(bound, f"{what}: {exc}", limit=exc.limit) from None

    async def _execute(self, start_pc: int) -> None:
        steps = self.program.steps
        block_end = self.program.block_end
        block_calls = self.program.block_calls
        n = len(steps)
        max_steps = self.vm.limits.max_steps
        deadline = self.deadline
        trace = self.trace
        parallel = self.concurrency > 1
        loop_edge: tuple[int, int] | None = None
        pc = start_pc
        while True:
            if pc >= n:
                last = steps[-1]
                raise NoFinalAnswer(seq_no=last.seq_no, instruction_type=last.type)
            step = steps[pc]
            if len(trace) >= max_steps:
                if loop_edge:
                    why = (f" (the jmp at seq_no {loop_edge[1]} loops back to seq_no {loop_edge[0]}); a jump loop may "
                           f"never end: check its condition, or raise Limits.max_steps / --max-steps")
                else:
                    why = "; the plan has more steps than the budget: raise Limits.max_steps / --max-steps"
                raise StepLimitExceeded(
                    max_steps,
                    f"step budget of {max_steps} exceeded{why}",
                    seq_no=step.seq_no,
                    instruction_type=step.type,
                )
            if deadline is not None and time.monotonic() > deadline:
                raise self._time_up(step)
            if parallel and block_calls[pc] > 1 and not (self.approve_tools and self._asks_approval(pc, block_end[pc])):
                nxt = await self._block(pc, block_end[pc])
                if nxt == _DONE:
                    return
                pc = nxt
                continue
            handler = _SYNC_HANDLERS.get(type(step))
            if handler is not None:
                record, nxt, error = self._guard_sync(handler, step, pc, self.store)
            else:
                record, nxt, error = await self._guard(step, pc, self.store)
            await self._commit(record, error)
            if FINAL_ANSWER in record.outputs:
                return
            if nxt <= pc:
                loop_edge = (steps[nxt].seq_no, step.seq_no)
            pc = nxt

    async def _commit(self, record: StepRecord, error: RunError | None) -> None:
        """Make a finished step observable: variables, trace, store row, callback; raise its error.

        A step that waits for approval did not run: it is not committed, and the run stops there."""
        if isinstance(error, ApprovalNeeded):
            raise error
        if error is None:
            self.store.update(record.outputs)
        index = len(self.trace)
        self.trace.append(record)
        if error is None and self.complete is not None and FINAL_ANSWER in record.outputs:
            ended = self.complete(index, record)
            if ended is not None:
                await ended
            self.completed = True
        elif self.persist is not None:
            if self._persist_async:
                await self.persist(index, record)
            else:
                self.persist(index, record)
        if self.on_step is not None:
            self.on_step(record)
        if error is not None:
            raise error

    def _step_span(self, step: Step) -> Any:
        return telemetry.span(f"planvm.step {step.type}", {
            "planvm.run_id": self.run_id, "planvm.seq_no": step.seq_no, "planvm.instruction.type": step.type,
            "planvm.tool": getattr(step, "tool_name", None),
        })

    @staticmethod
    def _spanned(current: Any, outcome: tuple[StepRecord, int, RunError | None]) -> tuple[StepRecord, int, RunError | None]:
        if outcome[2] is not None:
            telemetry.fail(current, outcome[2])
        return outcome

    def _guard_sync(self, handler: Any, step: Step, pc: int, view: Mapping[str, Any]) -> tuple[StepRecord, int, RunError | None]:
        if telemetry.tracer is not None:
            with self._step_span(step) as current:
                return self._spanned(current, self._guard_sync_run(handler, step, pc, view))
        return self._guard_sync_run(handler, step, pc, view)

    def _guard_sync_run(self, handler: Any, step: Step, pc: int, view: Mapping[str, Any]) -> tuple[StepRecord, int, RunError | None]:
        record = StepRecord(step.seq_no, step.type)
        record.started_at = time.time()
        started = time.perf_counter()
        try:
            nxt = handler(self, step, pc, record, view)
        except RunError as exc:
            return self._failed(record, exc, step, started)
        record.duration_s = time.perf_counter() - started
        return record, nxt, None

    async def _guard(self, step: Step, pc: int, view: Mapping[str, Any]) -> tuple[StepRecord, int, RunError | None]:
        handler = _SYNC_HANDLERS.get(type(step))
        if handler is not None:
            return self._guard_sync(handler, step, pc, view)
        if telemetry.tracer is not None:
            with self._step_span(step) as current:
                return self._spanned(current, await self._guard_run(step, pc, view))
        return await self._guard_run(step, pc, view)

    async def _guard_run(self, step: Step, pc: int, view: Mapping[str, Any]) -> tuple[StepRecord, int, RunError | None]:
        record = StepRecord(step.seq_no, step.type)
        if self.on_step_start is not None:
            self.on_step_start(step.seq_no, step.type, getattr(step, "tool_name", None))
        record.started_at = time.time()
        started = time.perf_counter()
        try:
            nxt = await _ASYNC_HANDLERS[type(step)](self, step, pc, record, view)
        except RunError as exc:
            return self._failed(record, exc, step, started)
        record.duration_s = time.perf_counter() - started
        return record, nxt, None

    @staticmethod
    def _failed(record: StepRecord, exc: RunError, step: Step, started: float) -> tuple[StepRecord, int, RunError]:
        exc.locate(step.seq_no, step.type)
        record.error = str(exc)
        record.duration_s = time.perf_counter() - started
        return record, -1, exc

    # --- overlapping independent steps --------------------------------------------------------

    def _asks_approval(self, start: int, end: int) -> bool:
        """Whether a step of ``start..end`` calls a tool that needs approval: such a stretch runs one
        step at a time, so no step after the waiting one has run when the run stops to wait."""
        return any(getattr(step, "tool_name", None) in self.approve_tools for step in self.program.steps[start:end])

    async def _block(self, start: int, end: int) -> int:
        """Run steps ``start..end`` (no jump in or out) overlapping, and commit them in order."""
        steps = self.program.steps
        end = min(end, start + self.vm.limits.max_steps - len(self.trace))
        tasks: list[asyncio.Task[Any]] = []
        for pc in range(start, end):
            reads = steps[pc].reads
            deps = [tasks[i - start] for i in range(start, pc) if steps[i].writes & reads]
            tasks.append(asyncio.ensure_future(self._after(deps, pc)))
        try:
            for task in tasks:
                record, _nxt, error = await task
                await self._commit(record, error)
                if FINAL_ANSWER in record.outputs:
                    return _DONE
            return end
        finally:
            pending = [t for t in tasks if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _after(self, deps: list[asyncio.Task[Any]], pc: int) -> tuple[StepRecord, int, RunError | None]:
        """Wait for the steps whose outputs ``pc`` reads, then run it against them."""
        overlay: dict[str, Any] = {}
        for dep in deps:
            record, _nxt, error = await dep
            if error is not None:
                # The dependency failed: the commit loop stops there, so this result is never used.
                return record, -1, error
            overlay.update(record.outputs)
        view: Mapping[str, Any] = ChainMap(overlay, self.store) if overlay else self.store
        return await self._guard(self.program.steps[pc], pc, view)

    # --- budgets ------------------------------------------------------------------------------

    def _time_up(self, step: Any) -> TimeLimitExceeded:
        seconds = self.vm.limits.max_seconds
        return TimeLimitExceeded(
            seconds or 0.0,
            f"wall-clock budget of {seconds:g} s exceeded; raise Limits.max_seconds or speed up the slow step",
            seq_no=step.seq_no,
            instruction_type=step.type,
        )

    async def _traced_call(self, spec: Any, bound: dict[str, Any], ctx: CallContext, step: Any) -> Any:
        """A tool call in an ``execute_tool`` span; a sync tool runs in the span's context, so the
        LLM exchanges it makes are the span's children."""
        name = step.tool_name
        with telemetry.span(f"execute_tool {name}", {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name, "planvm.tool": name, "planvm.seq_no": step.seq_no,
            "planvm.run_id": self.run_id,
        }):
            if spec.is_async:
                return await self._bounded(spec.call(bound, ctx), step)
            loop = asyncio.get_running_loop()
            call = functools.partial(contextvars.copy_context().run, spec.call, bound, ctx)
            return await self._bounded(loop.run_in_executor(self.vm._threads(), call), step)

    async def _bounded(self, awaitable: Any, step: Any) -> Any:
        """Await a tool or LLM call, but not past the run's deadline."""
        if self.deadline is None:
            return await awaitable
        remaining = self.deadline - time.monotonic()
        try:
            # asyncio.timeout, unlike wait_for, runs the call in this task: no task per tool call.
            async with asyncio.timeout(max(remaining, 0.0)):
                return await awaitable
        except TimeoutError:
            raise self._time_up(step) from None

    # --- one handler per instruction type; each fills the record and returns the next position --

    def _assign(self, step: AssignStep, pc: int, record: StepRecord, view: Mapping[str, Any]) -> int:
        record.outputs = {name: self.keep(value.evaluate(view), f"the value of '{name}'") for name, value in step.values}
        return pc + 1

    def _reasoning(self, step: ReasoningStep, pc: int, record: StepRecord, view: Mapping[str, Any]) -> int:
        record.inputs = step.parameters
        return pc + 1

    async def _calling(self, step: CallingStep, pc: int, record: StepRecord, view: Mapping[str, Any]) -> int:
        vm = self.vm
        name = step.tool_name
        record.tool = name
        if vm.allowed_tools is not None and name not in vm.allowed_tools:
            raise ToolNotAllowed(name, list(vm.allowed_tools))
        spec = vm.registry.get(name) if vm.registry is not None else None
        if spec is None:
            raise ToolNotFound(name, vm.registry.names() if vm.registry is not None else [])
        params = step.params.evaluate(view)
        if name in self.approve_tools:
            params = self._approved(name, params, step.seq_no)
            if self.start_call is not None:
                await self.start_call(step.seq_no, name)
        record.inputs = params
        bound = spec.bind(params)
        record.llm_calls = calls = []
        ctx = CallContext(step.seq_no, name, step.output_vars, StepLLM(self.llm, f"tool '{name}'", calls, seq_no=step.seq_no))
        record.notes = ctx.notes
        try:
            async with self.calls_in_flight:
                if telemetry.tracer is not None:
                    result = await self._traced_call(spec, bound, ctx, step)
                elif spec.is_async:
                    result = await self._bounded(spec.call(bound, ctx), step)
                else:
                    loop = asyncio.get_running_loop()
                    call = functools.partial(spec.call, bound, ctx)
                    result = await self._bounded(loop.run_in_executor(vm._threads(), call), step)
        except RunError:
            raise
        except Exception as exc:
            raise ToolFailed(name, exc) from exc
        except SystemExit as exc:  # sys.exit() inside a tool ends the step, not the program
            raise ToolFailed(name, RuntimeError(f"the tool called sys.exit({exc.code!r})")) from exc
        result = self.keep(result, f"the result of tool '{name}'")
        record.result = result
        record.outputs = map_outputs(result, step.output_vars, name)
        return pc + 1

    def _approved(self, name: str, params: dict[str, Any], seq_no: int) -> dict[str, Any]:
        """The parameters to call an approval-needing tool with, once a person has decided."""
        decision = self.approvals.pop(seq_no, None)
        if decision is None:
            raise ApprovalNeeded(name, self.keep(params, f"the parameters of tool '{name}'"))
        if not decision.get("approved"):
            raise ToolRejected(name, decision.get("reason"))
        edited = decision.get("tool_params")
        return dict(edited) if isinstance(edited, dict) else params

    async def _jmp(self, step: JmpStep, pc: int, record: StepRecord, view: Mapping[str, Any]) -> int:
        if step.expression is not None:
            result = step.expression.evaluate(view)  # type: ignore[arg-type]
            record.inputs = {"condition": step.expression.text}
            record.result = {"result": result, "explanation": f"{step.expression.text} is {str(result).lower()}"}
            nxt = step.if_true if result else (step.if_false if step.if_false >= 0 else pc + 1)
        elif step.condition is None:
            nxt = step.target
        else:
            condition = render_text(step.condition.evaluate(view))
            context = render_text(step.context.evaluate(view)) if step.context is not None else None
            record.inputs = {"condition_prompt": condition, "context": context}
            record.llm_calls = calls = []
            llm = StepLLM(self.llm, f"the jmp condition at seq_no {step.seq_no}", calls, role="condition", seq_no=step.seq_no)
            result, explanation = await self._bounded(evaluate_condition(llm, condition, context), step)
            record.result = {"result": result, "explanation": explanation}
            if result:
                nxt = step.if_true
            else:
                nxt = step.if_false if step.if_false >= 0 else pc + 1
        steps = self.program.steps
        record.next_seq = steps[nxt].seq_no if nxt < len(steps) else None
        return nxt


# Steps that never wait run synchronously: no coroutine per assign (see bench/vm_overhead.py). Plain
# functions, not an interpreter's bound methods: an interpreter refers to no cycle of its own, so it
# and its program are freed as soon as the run ends (not at the collector's next full pass).
_SYNC_HANDLERS = {AssignStep: Interpreter._assign, ReasoningStep: Interpreter._reasoning}
_ASYNC_HANDLERS = {CallingStep: Interpreter._calling, JmpStep: Interpreter._jmp}

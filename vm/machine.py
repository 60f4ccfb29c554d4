"""The interpreter: run a validated plan step by step, under the run's budgets.

Semantics (each one tested in ``tests/``):

* steps run in ascending ``seq_no``; a ``jmp`` moves the program counter to another ``seq_no``;
* all values of one ``assign`` are computed from the variables as they were *before* the step,
  then stored together (so ``{"a": "${b}", "b": "${a}"}`` swaps);
* the run completes as soon as a step assigns the variable named exactly ``final_answer``;
  running past the last step without it is :class:`~vm.errors.NoFinalAnswer`;
* a tool's own exception is chained into :class:`~vm.errors.ToolFailed`, never turned into text;
* the step, wall-clock and LLM-call budgets of :class:`~vm.limits.Limits` end a run with a
  :class:`~vm.errors.LimitExceeded` error instead of letting it hang.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from vm.condition import evaluate_condition
from vm.errors import (
    NoFinalAnswer,
    Problem,
    RunError,
    StepLimitExceeded,
    TimeLimitExceeded,
    ToolFailed,
    ToolNotAllowed,
    ToolNotFound,
)
from vm.limits import Limits
from vm.llm import LLM
from vm.outputs import map_outputs
from vm.program import FINAL_ANSWER, AssignStep, CallingStep, JmpStep, Program, ReasoningStep
from vm.tooling import CallContext, RunLLM, StepLLM, ToolCatalog
from vm.validate import compile_plan, validate_plan
from vm.values import render_text

__all__ = ["VM", "RunResult", "StepRecord"]


# Shared, read-only defaults: a step record allocates no container it does not fill, which keeps
# the garbage collector's work per step small (see bench/vm_overhead.py).
_NOTHING: Mapping[str, Any] = MappingProxyType({})


class StepRecord:
    """One executed instruction in a run's trace.

    ``inputs``: resolved tool parameters (``calling``), the rendered condition (``jmp``) or the
    reasoning text; ``outputs``: the variables the step set, or a jump's verdict; ``llm_calls``:
    every LLM exchange the step made (prompt, text, reasoning); ``next_seq``: where a jump went.
    """

    __slots__ = ("seq_no", "type", "inputs", "outputs", "duration_s", "tool", "next_seq", "error", "llm_calls")

    def __init__(self, seq_no: int, type: str) -> None:  # noqa: A002 - the plan's own field name
        self.seq_no = seq_no
        self.type = type
        self.inputs: Mapping[str, Any] = _NOTHING
        self.outputs: Mapping[str, Any] = _NOTHING
        self.duration_s = 0.0
        self.tool: str | None = None
        self.next_seq: int | None = None
        self.error: str | None = None
        self.llm_calls: Sequence[dict[str, Any]] = ()

    def __repr__(self) -> str:
        return f"StepRecord(seq_no={self.seq_no}, type={self.type!r}, tool={self.tool!r}, error={self.error!r})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq_no": self.seq_no,
            "type": self.type,
            "tool": self.tool,
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "next_seq": self.next_seq,
            "duration_s": self.duration_s,
            "error": self.error,
            "llm_calls": list(self.llm_calls),
        }


@dataclass(slots=True)
class RunResult:
    """What a run ended with. ``status`` is ``"completed"`` or ``"failed"`` (then ``error`` says why)."""

    status: Literal["completed", "failed"]
    final_answer: Any
    variables: dict[str, Any]
    trace: list[StepRecord]
    error: RunError | None = None
    llm_calls: int = 0
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    @property
    def steps(self) -> int:
        """Number of executed instructions (a loop counts every pass)."""
        return len(self.trace)

    def raise_for_error(self) -> RunResult:
        """Raise the run's error, if it failed; return the result otherwise."""
        if self.error is not None:
            raise self.error
        return self

    def to_dict(self, *, trace: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status,
            "final_answer": self.final_answer,
            "variables": self.variables,
            "steps": self.steps,
            "error": str(self.error) if self.error else None,
        }
        if trace:
            data["trace"] = [r.to_dict() for r in self.trace]
        return data


class VM:
    """Runs plans against a tool catalog, with an optional LLM, under :class:`Limits`.

    >>> vm = VM(registry, llm=my_llm, limits=Limits(max_steps=200))   # doctest: +SKIP
    >>> result = vm.run("plan.json")                                  # doctest: +SKIP
    >>> result.final_answer                                           # doctest: +SKIP

    ``allowed_tools`` limits the run to those tool names (checked statically and again before
    every call). ``on_step`` is called with each :class:`StepRecord` as it completes.
    """

    def __init__(
        self,
        registry: ToolCatalog | None = None,
        llm: LLM | None = None,
        limits: Limits | None = None,
        *,
        allowed_tools: Iterable[str] | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
        max_threads: int = 8,
    ) -> None:
        self.registry = registry
        self.llm = llm
        self.limits = limits or Limits()
        self.allowed_tools = frozenset(allowed_tools) if allowed_tools is not None else None
        self.on_step = on_step
        self._max_threads = max_threads
        self._executor: ThreadPoolExecutor | None = None

    # --- validation ---------------------------------------------------------------------------

    def validate(self, plan: Any, *, variables: Iterable[str] = ()) -> list[Problem]:
        """Every static problem of ``plan`` against this VM's tools (empty when it is valid)."""
        return validate_plan(plan, self.registry, allowed_tools=self.allowed_tools, predefined=variables)[1]

    def compile(self, plan: Any, *, variables: Iterable[str] = ()) -> Program:
        """Validate and compile ``plan`` (raises ``PlanValidationError``); reuse it across runs."""
        if isinstance(plan, Program):
            return plan
        return compile_plan(plan, self.registry, allowed_tools=self.allowed_tools, predefined=variables)

    # --- running ------------------------------------------------------------------------------

    def run(self, plan: Any, *, variables: dict[str, Any] | None = None) -> RunResult:
        """Validate and run ``plan`` (a path, JSON text, parsed data or a compiled Program).

        Raises ``PlanError`` when the plan cannot run at all; every failure after the first step
        started is returned as a failed :class:`RunResult` (``result.raise_for_error()`` raises it).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(plan, variables=variables))
        raise RuntimeError("VM.run() was called from a running event loop; use `await vm.arun(plan)` there")

    async def arun(self, plan: Any, *, variables: dict[str, Any] | None = None) -> RunResult:
        """The async form of :meth:`run`."""
        store: dict[str, Any] = dict(variables or {})
        program = self.compile(plan, variables=store)
        limits = self.limits
        started = time.monotonic()
        deadline = started + limits.max_seconds if limits.max_seconds is not None else None
        run_llm = RunLLM(self.llm, limits.max_llm_calls, asyncio.get_running_loop(), self._threads)
        run = _Run(self, program, store, run_llm, deadline)
        error: RunError | None = None
        try:
            await run.execute()
        except RunError as exc:
            error = exc
        done = error is None
        return RunResult(
            status="completed" if done else "failed",
            final_answer=store.get(FINAL_ANSWER) if done else None,
            variables=store,
            trace=run.trace,
            error=error,
            llm_calls=run.llm.calls,
            duration_s=time.monotonic() - started,
        )

    def close(self) -> None:
        """Release the thread pool used for sync tools (also done by ``with VM(...) as vm``)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _threads(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self._max_threads, thread_name_prefix="planvm-tool")
        return self._executor


class _Run:
    """The state of one run: program counter, variables, trace and budgets."""

    def __init__(self, vm: VM, program: Program, store: dict[str, Any], llm: RunLLM, deadline: float | None) -> None:
        self.vm = vm
        self.program = program
        self.store = store
        self.llm = llm
        self.deadline = deadline
        self.trace: list[StepRecord] = []
        # Steps that never wait run synchronously: no coroutine per assign (see bench/vm_overhead.py).
        self._sync_handlers = {AssignStep: self._assign, ReasoningStep: self._reasoning}
        self._async_handlers = {CallingStep: self._calling, JmpStep: self._jmp}

    async def execute(self) -> None:
        steps = self.program.steps
        n = len(steps)
        max_steps = self.vm.limits.max_steps
        on_step = self.vm.on_step
        deadline = self.deadline
        trace = self.trace
        sync_handlers = self._sync_handlers
        async_handlers = self._async_handlers
        loop_edge: tuple[int, int] | None = None
        pc = 0
        while True:
            if pc >= n:
                last = steps[-1]
                raise NoFinalAnswer(seq_no=last.seq_no, instruction_type=last.type)
            step = steps[pc]
            if len(trace) >= max_steps:
                where = f" (the jmp at seq_no {loop_edge[1]} loops back to seq_no {loop_edge[0]})" if loop_edge else ""
                raise StepLimitExceeded(
                    max_steps,
                    f"step budget of {max_steps} exceeded{where}; a jump loop may never end: check its "
                    f"condition, or raise Limits.max_steps / --max-steps",
                    seq_no=step.seq_no,
                    instruction_type=step.type,
                )
            if deadline is not None and time.monotonic() > deadline:
                raise self._time_up(step)
            record = StepRecord(step.seq_no, step.type)
            started = time.perf_counter()
            try:
                handler = sync_handlers.get(type(step))
                if handler is not None:
                    nxt = handler(step, pc, record)
                else:
                    nxt = await async_handlers[type(step)](step, pc, record)
            except RunError as exc:
                exc.locate(step.seq_no, step.type)
                record.error = str(exc)
                record.duration_s = time.perf_counter() - started
                trace.append(record)
                if on_step is not None:
                    on_step(record)
                raise
            record.duration_s = time.perf_counter() - started
            trace.append(record)
            if on_step is not None:
                on_step(record)
            if FINAL_ANSWER in record.outputs and step.type != "jmp":
                return
            if nxt <= pc:
                loop_edge = (steps[nxt].seq_no, step.seq_no)
            pc = nxt

    def _time_up(self, step: Any) -> TimeLimitExceeded:
        seconds = self.vm.limits.max_seconds
        return TimeLimitExceeded(
            seconds or 0.0,
            f"wall-clock budget of {seconds:g} s exceeded; raise Limits.max_seconds or speed up the slow step",
            seq_no=step.seq_no,
            instruction_type=step.type,
        )

    async def _bounded(self, awaitable: Any, step: Any) -> Any:
        """Await a tool or LLM call, but not past the run's deadline."""
        if self.deadline is None:
            return await awaitable
        remaining = self.deadline - time.monotonic()
        try:
            return await asyncio.wait_for(awaitable, max(remaining, 0.0))
        except TimeoutError:
            raise self._time_up(step) from None

    # --- one handler per instruction type; each returns the next position -------------------

    def _assign(self, step: AssignStep, pc: int, record: StepRecord) -> int:
        store = self.store
        new = {name: value.evaluate(store) for name, value in step.values}
        store.update(new)
        record.outputs = new
        return pc + 1

    def _reasoning(self, step: ReasoningStep, pc: int, record: StepRecord) -> int:
        record.inputs = step.parameters
        return pc + 1

    async def _calling(self, step: CallingStep, pc: int, record: StepRecord) -> int:
        vm = self.vm
        name = step.tool_name
        record.tool = name
        if vm.allowed_tools is not None and name not in vm.allowed_tools:
            raise ToolNotAllowed(name, list(vm.allowed_tools))
        spec = vm.registry.get(name) if vm.registry is not None else None
        if spec is None:
            raise ToolNotFound(name, vm.registry.names() if vm.registry is not None else [])
        params = step.params.evaluate(self.store)
        record.inputs = params
        bound = spec.bind(params)
        record.llm_calls = calls = []
        ctx = CallContext(step.seq_no, name, step.output_vars, StepLLM(self.llm, f"tool '{name}'", calls))
        try:
            if spec.is_async:
                result = await self._bounded(spec.call(bound, ctx), step)
            else:
                loop = asyncio.get_running_loop()
                call = functools.partial(spec.call, bound, ctx)
                result = await self._bounded(loop.run_in_executor(vm._threads(), call), step)
        except RunError:
            raise
        except Exception as exc:
            raise ToolFailed(name, exc) from exc
        outputs = map_outputs(result, step.output_vars, name)
        self.store.update(outputs)
        record.outputs = outputs
        return pc + 1

    async def _jmp(self, step: JmpStep, pc: int, record: StepRecord) -> int:
        if step.condition is None:
            nxt = step.target
        else:
            condition = render_text(step.condition.evaluate(self.store))
            context = render_text(step.context.evaluate(self.store)) if step.context is not None else None
            record.inputs = {"condition_prompt": condition, "context": context}
            record.llm_calls = calls = []
            llm = StepLLM(self.llm, f"the jmp condition at seq_no {step.seq_no}", calls)
            result, explanation = await self._bounded(evaluate_condition(llm, condition, context), step)
            record.outputs = {"result": result, "explanation": explanation}
            if result:
                nxt = step.if_true
            else:
                nxt = step.if_false if step.if_false >= 0 else pc + 1
        steps = self.program.steps
        record.next_seq = steps[nxt].seq_no if nxt < len(steps) else None
        return nxt

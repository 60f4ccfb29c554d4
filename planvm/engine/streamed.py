"""Streamed planning: tool calls start while the planner is still writing the plan.

With ``stream_plan``, the planner's reply is streamed (:mod:`planner.stream`) and each instruction
is handed over as soon as its JSON object is complete. A :class:`Speculation` walks the plan
received so far exactly as the VM would (ascending ``seq_no``, ``jmp`` targets, loops) and starts
a ``calling`` step's tool as soon as:

* the instruction is well-formed, its tool exists, is allowed and its parameters are the tool's
  (the static checks of :mod:`vm.validate` that concern one instruction);
* every variable it reads was assigned earlier on the walked path, by steps whose values are
  known (a call waits for the calls it reads from: independent calls overlap);
* the instruction before it fell through to it (the next instruction has arrived) or jumped to
  it (a ``jmp`` waits for its target to arrive; a ``jmp`` asking the LLM stops the walk);
* the tool is not side-effecting (``approve_tools``, ``@tool(side_effects=True)``, an MCP tool
  not marked read-only): the walk stops there, so nothing after it starts early either.

A plan whose instructions arrive out of ``seq_no`` order, or one that is not well-formed, stops
the walk: the rest waits for the whole plan. Nothing else changes: the whole reply is parsed and
validated as before (the repair loop included: a new attempt discards what the last one started),
the plan is stored and run by the VM from its first step, and each call the VM makes with the
same ``seq_no``, tool and parameters as a call started early takes that call's result (and its
LLM exchanges, counted against the run's budgets) instead of calling again. So a run records
exactly what plan-then-run records (plan, planning, steps), plus, in its planning record, when
each instruction arrived (``arrivals``: seconds after planning began, by ``seq_no``) and which
calls started early (``early_calls``). A call started early that the run does not ask for (the
plan changed in a repair, or a failed call) is left to end by itself, its result unused.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import functools
import json
import time
from collections.abc import Iterable
from typing import Any

from vm.outputs import map_outputs
from vm.plan import INSTRUCTION_ADAPTER
from vm.program import FINAL_ANSWER, AssignStep, CallingStep, JmpStep, ReasoningStep, compile_instruction
from vm.tooling import CallContext, RunLLM, StepLLM
from vm.values import TEXT_LIMIT

__all__ = ["StreamedPlanning", "served_by", "streamed_planning"]


def _quiet(task: asyncio.Future[Any]) -> None:
    """Read a finished task's outcome, so that an early call nobody took logs nothing."""
    if not task.cancelled():
        task.exception()


def _started(work: Any) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(work)
    task.add_done_callback(_quiet)
    return task


def _key(seq_no: int, tool: str, params: Any) -> tuple[int, str, str]:
    return seq_no, tool, json.dumps(params, sort_keys=True, ensure_ascii=False, default=repr)


class _Early:
    """A call started early: its task, and the LLM exchanges and notes it made."""

    __slots__ = ("notes", "records", "task")

    def __init__(self, task: asyncio.Task[Any], records: list[dict[str, Any]], notes: list[str]) -> None:
        self.task, self.records, self.notes = task, records, notes


class Speculation:
    """One attempt's plan as it arrives, walked and started early (module docstring)."""

    def __init__(self, owner: StreamedPlanning) -> None:
        self.owner = owner
        vm = owner.vm
        self.steps: list[Any] = []
        self.index: dict[int, int] = {}  # seq_no -> position in arrival order
        self.ended = self.broken = False
        self.changed = asyncio.Event()
        self.early: dict[tuple[int, str, str], list[_Early]] = {}
        self.waiting: list[asyncio.Task[Any]] = []  # steps waiting for what they read
        self.calls = asyncio.Semaphore(max(1, vm.concurrency))
        limits = vm.limits
        self.llm = RunLLM(
            vm.llm, limits.max_llm_calls, asyncio.get_running_loop(), vm._threads, max_reply_bytes=limits.max_value_bytes,
            condition_llm=vm.condition_llm, max_tokens=limits.max_tokens,
        )
        self.walk = _started(self._walk())

    # --- arrivals (on the event loop) -------------------------------------------------------------

    def arrive(self, data: Any) -> None:
        if self.broken or self.ended:
            return
        try:
            step = compile_instruction(INSTRUCTION_ADAPTER.validate_python(data))
        except Exception:  # noqa: BLE001 - not well-formed: the whole plan's validation says why
            step = None
        if step is None or (self.steps and step.seq_no <= self.steps[-1].seq_no):
            self.broken = True  # out of order (or unreadable): the rest waits for the whole plan
        else:
            self.index[step.seq_no] = len(self.steps)
            self.steps.append(step)
        self.changed.set()

    def end(self) -> None:
        self.ended = True
        self.changed.set()

    def stop(self) -> None:
        """The plan is whole (or planning failed): nothing more starts; calls already started go on."""
        self.ended = self.broken = True
        self.walk.cancel()
        for task in self.waiting:
            task.cancel()

    async def _changed(self) -> None:
        self.changed.clear()
        await self.changed.wait()

    async def _at(self, i: int) -> Any:
        """The ``i``-th instruction, once it has arrived (None: it never will, or the walk stops)."""
        while True:
            if i < len(self.steps):
                return self.steps[i]
            if self.broken or self.ended:
                return None
            await self._changed()

    async def _position(self, seq_no: int) -> int | None:
        """Where the jump target ``seq_no`` is, once it has arrived (None: it is not in the plan)."""
        while True:
            if seq_no in self.index:
                return self.index[seq_no]
            if self.broken or self.ended or (self.steps and self.steps[-1].seq_no > seq_no):
                return None
            await self._changed()

    # --- the walk -------------------------------------------------------------------------------

    async def _walk(self) -> None:
        vm = self.owner.vm
        TEXT_LIMIT.set(vm.limits.max_value_bytes)  # this task's context; the steps it starts copy it
        env: dict[str, asyncio.Task[Any]] = {}  # variable -> the step that assigned it last on the path
        i = taken = 0
        while taken < vm.limits.max_steps:
            step = await self._at(i)
            if step is None:
                return
            taken += 1
            if isinstance(step, ReasoningStep):
                i += 1
                continue
            if any(name not in env for name in step.reads):
                return  # not assigned on this path: the run itself says what is wrong
            if isinstance(step, JmpStep):
                if step.condition is not None:
                    return  # the LLM decides this one: the run asks it
                target = step.target_seq
                if step.expression is not None:
                    try:
                        values = {name: (await env[name])[name] for name in step.reads}
                        holds = step.expression.evaluate(values)
                    except Exception:  # noqa: BLE001 - a failed step or condition: the run reports it
                        return
                    target = step.if_true_seq if holds else step.if_false_seq
                if target is None:
                    i += 1
                    continue
                position = await self._position(target)
                if position is None:
                    return
                i = position
                continue
            if isinstance(step, CallingStep) and not self._may_start(step):
                return  # side-effecting, needs approval, or fails a static check: from here on, the run decides
            reads = {name: env[name] for name in step.reads}
            work = self._call(step, reads) if isinstance(step, CallingStep) else self._assign(step, reads)
            task = _started(work)
            self.waiting.append(task)
            for name in step.writes:
                env[name] = task
            if FINAL_ANSWER in step.writes:
                return
            i += 1

    def _may_start(self, step: CallingStep) -> bool:
        vm, name = self.owner.vm, step.tool_name
        if vm.allowed_tools is not None and name not in vm.allowed_tools:
            return False
        spec = vm.registry.get(name) if vm.registry is not None else None
        if spec is None or name in self.owner.approve_tools or getattr(spec, "side_effects", False):
            return False
        given = {k for k, _ in step.params.items}
        return spec.required_parameters <= given <= spec.parameter_names

    @staticmethod
    async def _values(reads: dict[str, asyncio.Task[Any]]) -> dict[str, Any]:
        return {name: (await task)[name] for name, task in reads.items()}

    async def _assign(self, step: AssignStep, reads: dict[str, asyncio.Task[Any]]) -> dict[str, Any]:
        view = await self._values(reads)
        return {name: value.evaluate(view) for name, value in step.values}

    async def _call(self, step: CallingStep, reads: dict[str, asyncio.Task[Any]]) -> dict[str, Any]:
        params = step.params.evaluate(await self._values(reads))
        vm, name = self.owner.vm, step.tool_name
        spec = vm.registry.get(name)
        bound = spec.bind(params)
        records: list[dict[str, Any]] = []
        ctx = CallContext(step.seq_no, name, step.output_vars, StepLLM(self.llm, f"tool '{name}'", records, seq_no=step.seq_no))
        task = _started(self._invoke(spec, bound, ctx))
        self.early.setdefault(_key(step.seq_no, name, params), []).append(_Early(task, records, ctx.notes))
        self.owner.started.add(step.seq_no)
        # Shielded: stopping the walk (the plan is whole) must not stop a call the run may take.
        return map_outputs(await asyncio.shield(task), step.output_vars, name)

    async def _invoke(self, spec: Any, bound: Any, ctx: CallContext) -> Any:
        async with self.calls:
            if spec.is_async:
                return await spec.call(bound, ctx)
            call = functools.partial(contextvars.copy_context().run, spec.call, bound, ctx)
            return await asyncio.get_running_loop().run_in_executor(self.owner.vm._threads(), call)

    def take(self, key: tuple[int, str, str]) -> _Early | None:
        """The early call the run's step ``key`` may take (each one taken once)."""
        waiting = self.early.get(key)
        return waiting.pop(0) if waiting else None


class StreamedPlanning:
    """One streamed planning: a :class:`~planner.stream.PlanListener` for the planner (called from
    its thread), the early calls of its latest attempt, and what the run records of it. Made on
    the event loop the run uses."""

    def __init__(self, vm: Any, approve_tools: Iterable[str] = ()) -> None:
        self.vm = vm
        self.approve_tools = frozenset(vm.approve_tools) | frozenset(approve_tools)
        self.loop = asyncio.get_running_loop()
        self.began = time.monotonic()
        self.current: Speculation | None = None
        self.arrivals: dict[str, float] = {}
        self.started: set[int] = set()

    # --- the planner's side (its thread) ----------------------------------------------------------

    def _post(self, callback: Any, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop is gone: nobody runs this plan any more

    def begin(self) -> None:
        self._post(self._begin)

    def instruction(self, data: Any) -> None:
        self._post(self._arrive, data, time.monotonic())

    def end(self) -> None:
        self._post(self._end)

    # --- on the loop ----------------------------------------------------------------------------

    def _begin(self) -> None:
        if self.current is not None:
            self.current.stop()  # a repair: what the last attempt started is not used
        self.current = Speculation(self)
        self.arrivals, self.started = {}, set()

    def _arrive(self, data: Any, at: float) -> None:
        seq = data.get("seq_no") if isinstance(data, dict) else None
        if isinstance(seq, int) and not isinstance(seq, bool):
            self.arrivals.setdefault(str(seq), round(at - self.began, 3))
        if self.current is not None:
            self.current.arrive(data)

    def _end(self) -> None:
        if self.current is not None:
            self.current.end()

    def finish(self) -> None:
        """Planning is over (the plan is whole, or planning failed): nothing more starts early."""
        if self.current is not None:
            self.current.stop()

    def annotate(self, record: dict[str, Any]) -> dict[str, Any]:
        """The planning record with when each instruction arrived and which calls started early."""
        if self.current is None:
            return record  # the planner did not stream (a plan from the library, the template planner)
        return {**record, "arrivals": dict(self.arrivals), "early_calls": sorted(self.started)}


def streamed_planning(on: bool, vm: Any, approve_tools: Iterable[str] = ()) -> StreamedPlanning | None:
    """A :class:`StreamedPlanning` for a run on ``vm`` when ``on`` (None when off)."""
    return StreamedPlanning(vm, approve_tools) if on else None


def served_by(vm: Any, streamed: StreamedPlanning | None) -> Any:
    """``vm``, or one like it whose tool calls take the calls ``streamed`` started early."""
    if streamed is None or streamed.current is None or not streamed.current.early:
        return vm
    served = copy.copy(vm)
    served.registry = _Catalog(vm.registry, streamed.current)
    return served


class _Catalog:
    """The VM's tools, each taking a call started early when one matches."""

    def __init__(self, registry: Any, speculation: Speculation) -> None:
        self._registry, self._speculation = registry, speculation

    def get(self, name: str) -> Any:
        spec = self._registry.get(name)
        return None if spec is None else _Served(spec, self._speculation)

    def names(self) -> list[str]:
        return self._registry.names()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)


class _Served:
    """A tool whose call takes the matching early call's result (else calls the tool)."""

    is_async = True

    def __init__(self, spec: Any, speculation: Speculation) -> None:
        self._spec, self._speculation = spec, speculation

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spec, name)

    def bind(self, params: dict[str, Any]) -> Any:
        return params, self._spec.bind(params)

    async def call(self, bound: Any, ctx: CallContext) -> Any:
        params, real = bound
        early = self._speculation.take(_key(ctx.seq_no, self._spec.name, params))
        if early is not None:
            try:
                result = await asyncio.shield(early.task)
            except Exception:  # noqa: BLE001 - it failed early: the run calls the tool itself, as plan-then-run would
                early = None
            except asyncio.CancelledError:
                if not early.task.cancelled():
                    raise  # this run is being stopped
                early = None
        if early is not None:
            ctx.llm.adopt(early.records)
            ctx.notes.extend(early.notes)
            return result
        spec = self._spec
        if spec.is_async:
            return await spec.call(real, ctx)
        call = functools.partial(contextvars.copy_context().run, spec.call, real, ctx)
        return await asyncio.get_running_loop().run_in_executor(self._speculation.owner.vm._threads(), call)

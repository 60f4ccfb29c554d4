"""A validated plan, compiled for execution: steps in ``seq_no`` order, values pre-parsed, jump
targets turned into positions. Built by :func:`vm.validate.compile_plan`; run by :class:`vm.VM`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from vm import bulk
from vm.plan import (
    AssignInstruction,
    CallingInstruction,
    JmpInstruction,
    ReasoningInstruction,
)
from vm.condition import DeterministicCondition
from vm.values import DictValue, Value, compile_value

__all__ = ["AssignStep", "CallingStep", "JmpStep", "Program", "ReasoningStep", "Step", "compile_instruction"]

FINAL_ANSWER = "final_answer"


@dataclass(slots=True)
class AssignStep:
    seq_no: int
    values: tuple[tuple[str, Value], ...]
    note: str | None = None
    type: str = "assign"

    @property
    def reads(self) -> frozenset[str]:
        return frozenset().union(*(v.refs for _, v in self.values))

    @property
    def writes(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.values)


@dataclass(slots=True)
class CallingStep:
    seq_no: int
    tool_name: str
    params: DictValue
    output_vars: tuple[str, ...]
    note: str | None = None
    type: str = "calling"

    @property
    def reads(self) -> frozenset[str]:
        return self.params.refs

    @property
    def writes(self) -> frozenset[str]:
        return frozenset(self.output_vars)


@dataclass(slots=True)
class JmpStep:
    seq_no: int
    condition: Value | None  # condition_prompt, asked to the LLM
    context: Value | None
    # seq_no targets as written; positions (pc) are filled in by Program.
    target_seq: int | None
    if_true_seq: int | None
    if_false_seq: int | None
    target: int = -1
    if_true: int = -1
    if_false: int = -1  # -1 with a condition: fall through
    note: str | None = None
    type: str = "jmp"
    expression: DeterministicCondition | None = None  # condition, evaluated without an LLM

    @property
    def conditional(self) -> bool:
        return self.condition is not None or self.expression is not None

    @property
    def reads(self) -> frozenset[str]:
        refs: frozenset[str] = frozenset()
        for value in (self.condition, self.context, self.expression):
            if value is not None:
                refs = refs | value.refs
        return refs

    @property
    def writes(self) -> frozenset[str]:
        return frozenset()


@dataclass(slots=True)
class ReasoningStep:
    seq_no: int
    parameters: dict[str, Any]
    note: str | None = None
    type: str = "reasoning"

    @property
    def reads(self) -> frozenset[str]:
        return frozenset()

    @property
    def writes(self) -> frozenset[str]:
        return frozenset()


Step = AssignStep | CallingStep | JmpStep | ReasoningStep


def _compile_assign(ins: AssignInstruction) -> AssignStep:
    return AssignStep(
        ins.seq_no, tuple((name, compile_value(v, arithmetic=True)) for name, v in ins.parameters.items()), ins.purpose
    )


def _compile_calling(ins: CallingInstruction) -> CallingStep:
    p = ins.parameters
    params = cast(DictValue, compile_value(p.tool_params))  # tool_params is a dict by the model
    return CallingStep(ins.seq_no, p.tool_name, params, p.output_names, ins.purpose)


def _compile_jmp(ins: JmpInstruction) -> JmpStep:
    p = ins.parameters
    condition = compile_value(p.condition_prompt) if p.condition_prompt is not None else None
    context = compile_value(p.context) if p.context is not None else None
    expression = DeterministicCondition(p.condition) if p.condition is not None else None
    return JmpStep(
        ins.seq_no, condition, context, p.target_seq, p.jump_if_true, p.jump_if_false, note=ins.purpose, expression=expression
    )


def _compile_reasoning(ins: ReasoningInstruction) -> ReasoningStep:
    return ReasoningStep(ins.seq_no, ins.parameters.model_dump(exclude_none=True), ins.purpose)


_COMPILERS = {
    AssignInstruction: _compile_assign,
    CallingInstruction: _compile_calling,
    JmpInstruction: _compile_jmp,
    ReasoningInstruction: _compile_reasoning,
}


def compile_instruction(ins: Any) -> Step:
    """Compile one validated instruction model (raises ``ValueSyntaxError`` for a bad reference)."""
    return _COMPILERS[type(ins)](ins)


class Program:
    """A plan ready to run: steps sorted by ``seq_no``, jump targets resolved to positions."""

    __slots__ = ("_data", "_release", "block_calls", "block_end", "instructions", "position", "steps")

    def __init__(self, instructions: list[Any], steps: list[Step]) -> None:
        self._release: Callable[[], None] | None = None
        order = sorted(range(len(steps)), key=lambda i: steps[i].seq_no)
        self.instructions = [instructions[i] for i in order]
        self._data: list[dict[str, Any]] | None = None
        self.steps = [steps[i] for i in order]
        self.position = {s.seq_no: pc for pc, s in enumerate(self.steps)}
        for step in self.steps:
            if isinstance(step, JmpStep):
                if step.target_seq is not None:
                    step.target = self.position[step.target_seq]
                if step.if_true_seq is not None:
                    step.if_true = self.position[step.if_true_seq]
                if step.if_false_seq is not None:
                    step.if_false = self.position[step.if_false_seq]
        self.block_end, self.block_calls = self._blocks()

    def _blocks(self) -> tuple[list[int], list[int]]:
        """For each position, the end (exclusive) of the straight-line run of steps starting there.

        A run stops after a ``jmp`` or a step that assigns ``final_answer``, and before a ``jmp``
        or a jump target: inside it, control cannot leave or enter, so independent steps may
        overlap (see ``VM(concurrency=...)``). Also, per position, how many ``calling`` steps that
        run holds (overlapping is only worth it for two or more).
        """
        n = len(self.steps)
        targets = {t for s in self.steps if isinstance(s, JmpStep) for t in (s.target, s.if_true, s.if_false) if t >= 0}
        ends = [0] * n
        calls = [0] * n
        for pc in range(n - 1, -1, -1):
            step = self.steps[pc]
            nxt = pc + 1
            own = 1 if isinstance(step, CallingStep) else 0
            stops_here = isinstance(step, JmpStep) or FINAL_ANSWER in step.writes
            if stops_here or nxt >= n or nxt in targets or isinstance(self.steps[nxt], JmpStep):
                ends[pc], calls[pc] = nxt, own
            else:
                ends[pc], calls[pc] = ends[nxt], calls[nxt] + own
        return ends, calls

    def __len__(self) -> int:
        return len(self.steps)

    def keep_apart(self) -> None:
        """For a large plan (made under :func:`vm.bulk.making`): its objects stay out of the
        garbage collector's passes while it lives, and when it goes they are freed a slice at a
        time in a background thread (:func:`vm.bulk.discard`), not all at once wherever its last
        reference is dropped (the end of a run: an event loop)."""
        if self._release is None:
            self._release = bulk.hold()

    def __del__(self) -> None:
        release = getattr(self, "_release", None)
        if release is not None:
            parts = [self.instructions, self.steps, self._data, self.position, self.block_end, self.block_calls]
            self.instructions = self.steps = self._data = self.position = self.block_end = self.block_calls = None  # type: ignore[assignment]
            bulk.discard(parts, then=release)

    def successors(self, pc: int) -> tuple[int, ...]:
        """Positions control may reach from ``pc`` (``len(self)`` stands for the end of the plan)."""
        step = self.steps[pc]
        if isinstance(step, JmpStep):
            if not step.conditional:
                return (step.target,)
            return (step.if_true, step.if_false if step.if_false >= 0 else pc + 1)
        return (pc + 1,)

    def to_data(self) -> list[dict[str, Any]]:
        """The plan as JSON-ready data, in ``seq_no`` order: made once (a large plan takes a while)
        and the same list each time after, to read, not to change."""
        if self._data is None:
            self._data = [ins.model_dump(mode="json", exclude_none=True, by_alias=False) for ins in self.instructions]
        return self._data

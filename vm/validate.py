"""Static validation: every problem in a plan, found before anything runs.

Checks, each reported with the ``seq_no`` it concerns:

* schema — each instruction against the models in :mod:`vm.plan` (unknown types, unknown keys
  in ``calling`` / ``jmp`` parameters, a non-integer ``seq_no``, a wrong ``output_vars``…);
* malformed ``${...}`` references;
* duplicate ``seq_no`` and jump targets that do not exist;
* tools — unknown names, names outside the run's allow-list, missing and unknown parameters;
* data flow — a variable read where no path from the start could have assigned it (the
  analysis follows jumps; a variable assigned on only some paths is checked at run time);
* ``final_answer`` — no reachable step assigns it.

Data-flow and ``final_answer`` checks need a well-formed plan, so they run only when the schema
and jump checks passed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from vm import bulk
from vm.errors import PlanValidationError, Problem
from vm.limits import Limits
from vm.plan import (
    INSTRUCTION_ADAPTER,
    AssignInstruction,
    CallingInstruction,
    load_plan_data,
)
from vm.program import FINAL_ANSWER, CallingStep, JmpStep, Program, compile_instruction
from vm.tooling import ToolCatalog
from vm.values import ValueSyntaxError

__all__ = ["LARGE_PLAN", "compile_plan", "large_plan", "validate_plan"]

_TYPES = "assign, calling, jmp, reasoning"
_SET = ord("1")


def _seq_of(raw: Any) -> int | None:
    if isinstance(raw, dict):
        seq = raw.get("seq_no")
        if isinstance(seq, int) and not isinstance(seq, bool):
            return seq
    return None


def _schema_problems(index: int, raw: Any, exc: ValidationError) -> list[Problem]:
    seq = _seq_of(raw)
    label = None if seq is not None else f"instruction #{index}: "
    problems = []
    for err in exc.errors(include_url=False):
        kind = err["type"]
        # loc is (tag, field, ...) inside a union member; drop the tag to name the field.
        loc = [str(p) for p in err["loc"] if p not in ("assign", "calling", "jmp", "reasoning")]
        where = ".".join(loc)
        if kind == "union_tag_invalid":
            msg = f"unknown instruction type {raw.get('type')!r}; use one of {_TYPES}"
        elif kind == "union_tag_not_found":
            msg = f"missing 'type'; use one of {_TYPES}"
        elif kind in ("model_type", "model_attributes_type") and not loc:
            msg = f"an instruction is a JSON object, got {type(raw).__name__}"
        elif kind == "extra_forbidden":
            msg = f"unknown key '{where}'; remove it (see `planvm schema`)"
        elif kind == "missing":
            msg = f"missing '{where}'"
        else:
            text = err["msg"].removeprefix("Value error, ")
            msg = f"{where}: {text}" if where else text
        problems.append(Problem(seq, "schema", (label or "") + msg))
    return problems


def _tool_problems(step: CallingStep, catalog: ToolCatalog | None, allowed: Collection[str] | None) -> list[Problem]:
    seq = step.seq_no
    name = step.tool_name
    if allowed is not None and name not in allowed:
        return [Problem(seq, "tool_not_allowed", f"tool '{name}' is not in this run's allow-list ({', '.join(sorted(allowed)) or 'none'})")]
    if catalog is None:
        return []
    spec = catalog.get(name)
    if spec is None:
        known = ", ".join(sorted(catalog.names())) or "none"
        return [Problem(seq, "unknown_tool", f"unknown tool '{name}' (registered: {known})")]
    given = {k for k, _ in step.params.items}
    problems = []
    for missing in sorted(spec.required_parameters - given):
        problems.append(Problem(seq, "missing_parameter", f"tool '{name}' needs parameter '{missing}' in tool_params"))
    for unknown in sorted(given - spec.parameter_names):
        accepted = ", ".join(sorted(spec.parameter_names)) or "none"
        problems.append(Problem(seq, "unknown_parameter", f"tool '{name}' has no parameter '{unknown}' (accepted: {accepted})"))
    return problems


@dataclass(slots=True)
class _Opaque:
    """A step that did not compile (a bad reference), kept for the data-flow check: it still
    assigns its names, so the steps after it are checked without false alarms."""

    seq_no: int
    type: str
    writes: frozenset[str]
    reads: frozenset[str] = frozenset()


def _opaque(ins: Any) -> _Opaque:
    if isinstance(ins, AssignInstruction):
        return _Opaque(ins.seq_no, ins.type, frozenset(ins.parameters))
    if isinstance(ins, CallingInstruction):
        return _Opaque(ins.seq_no, ins.type, frozenset(ins.parameters.output_names))
    return _Opaque(ins.seq_no, ins.type, frozenset())


def _flow_problems(program: Program, predefined: Collection[str]) -> list[Problem]:
    """May-assigned analysis: the variables some path from the start could have set at each step.

    The fixed point is computed over straight-line blocks (a block starts at the first step, a
    jump target, or after a jmp), with one bitmask per block over the variables that are read
    somewhere; inside a block one flag array is updated step by step. Memory is blocks x
    variables bits plus the plan itself: a 100,000-step chain is one block.
    """
    n = len(program)
    if n == 0:
        return [Problem(None, "empty", "the plan has no instructions")]
    steps = program.steps
    reads = [s.reads for s in steps]
    writes = [s.writes for s in steps]
    bit = {name: i for i, name in enumerate(sorted(set().union(*reads)))}
    width = len(bit)
    successors = [program.successors(pc) for pc in range(n)]
    leaders = {0}
    for pc, step in enumerate(steps):
        if isinstance(step, JmpStep):
            leaders.update(t for t in successors[pc] if t < n)
            if pc + 1 < n:
                leaders.add(pc + 1)
    starts = sorted(leaders)
    block_of = {start: b for b, start in enumerate(starts)}
    bounds = list(zip(starts, starts[1:] + [n], strict=True))

    # Inside a block, variables are flags in a bytearray of ASCII digits ("0" unset, "1" set), which
    # converts to and from the block-level integer bitmask in one call each way.
    def as_mask(flags: bytearray) -> int:
        return int(flags[::-1].decode() or "0", 2)

    def flags_of(mask: int) -> bytearray:
        flags = bytearray(b"0" * width)
        digits = bin(mask)[2:][::-1].encode()
        flags[: len(digits)] = digits
        return flags

    gen = []
    for first, last in bounds:
        flags = bytearray(b"0" * width)
        for pc in range(first, last):
            for name in writes[pc]:
                if name in bit:
                    flags[bit[name]] = _SET
        gen.append(as_mask(flags))
    entry = bytearray(b"0" * width)
    for name in predefined:
        if name in bit:
            entry[bit[name]] = _SET
    reach_in: list[int | None] = [None] * len(bounds)
    reach_in[0] = as_mask(entry)
    work = [0]
    while work:
        b = work.pop()
        out = reach_in[b] | gen[b]  # type: ignore[operator]
        for nxt in successors[bounds[b][1] - 1]:
            if nxt >= n:
                continue
            target = block_of[nxt]
            current = reach_in[target]
            if current is None or out & ~current:
                reach_in[target] = out if current is None else current | out
                work.append(target)
    problems = []
    assigns_final = False
    for b, (first, last) in enumerate(bounds):
        seen = reach_in[b]
        if seen is None:
            continue  # unreachable
        flags = flags_of(seen)
        for pc in range(first, last):
            for name in sorted(reads[pc]):
                if flags[bit[name]] != _SET:
                    problems.append(
                        Problem(
                            steps[pc].seq_no,
                            "undefined_variable",
                            f"variable '{name}' is read here, but no step before it on any path assigns it",
                        )
                    )
            for name in writes[pc]:
                if name in bit:
                    flags[bit[name]] = _SET
            assigns_final = assigns_final or FINAL_ANSWER in writes[pc]
    if not assigns_final:
        problems.append(
            Problem(None, "no_final_answer", "no reachable step assigns 'final_answer'; the last step should assign it")
        )
    if n > LARGE_PLAN:  # the working lists of a large plan: freed apart (vm.bulk), not all at once on returning
        parts = [reads, writes, successors]
        del reads, writes, successors
        bulk.discard(parts)
    return problems


def validate_plan(
    plan: str | Any,
    catalog: ToolCatalog | None = None,
    *,
    allowed_tools: Iterable[str] | None = None,
    predefined: Iterable[str] = (),
    limits: Limits | None = None,
) -> tuple[Program | None, list[Problem]]:
    """Check a plan; return the compiled program (None when there are problems) and every problem.

    ``plan`` is a path, a JSON string or parsed data (see :func:`vm.plan.load_plan_data`, which
    raises ``PlanLoadError`` for input that is not a plan at all). ``catalog`` enables the tool
    checks; ``predefined`` names variables the caller provides before the run; ``limits``
    bounds the plan's size and nesting (default :class:`vm.Limits`).
    """
    limits = limits or Limits()
    if not large_plan(plan):
        return _validate(plan, catalog, allowed_tools, predefined, limits)
    # A large plan's objects (its data, models and steps) are made with the collector paused,
    # then kept from its passes while the program lives, and freed apart after (see vm.bulk).
    with bulk.keeping(), bulk.making():
        program, problems = _validate(plan, catalog, allowed_tools, predefined, limits)
        if program is not None:
            program.keep_apart()
    return program, problems


#: Instructions in a plan large enough to be checked apart (off an event loop, the collector
#: paused): about 10 ms of checking (20 µs each); as JSON text, about 32 KB.
LARGE_PLAN = 500
_LARGE_PLAN_TEXT = 32 * 1024


def large_plan(plan: Any) -> bool:
    """Whether checking ``plan`` (data, or JSON text) takes long enough to keep apart."""
    if isinstance(plan, (list, str, bytes)):
        return len(plan) > (LARGE_PLAN if isinstance(plan, list) else _LARGE_PLAN_TEXT)
    return False


def _validate(
    plan: Any, catalog: ToolCatalog | None, allowed_tools: Iterable[str] | None, predefined: Iterable[str], limits: Limits
) -> tuple[Program | None, list[Problem]]:
    data = load_plan_data(plan, max_bytes=limits.max_plan_bytes, max_depth=limits.max_depth)
    allowed = frozenset(allowed_tools) if allowed_tools is not None else None
    problems: list[Problem] = []
    instructions: list[Any] = []
    steps: list[Any] = []
    seen_seq: dict[int, int] = {}
    compiled_ok = schema_ok = True
    kept: set[int] = set()
    # Parsed here from a file or text, the raw data is ours: each instruction's dicts are let go
    # once its model is built, so a large plan is not held twice.
    owned = not isinstance(plan, list) and data is not plan
    for index in range(len(data)):
        raw = data[index]
        if owned:
            data[index] = None
        seq = _seq_of(raw)
        if seq is not None:
            seen_seq[seq] = seen_seq.get(seq, 0) + 1
        try:
            ins = INSTRUCTION_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            problems.extend(_schema_problems(index, raw, exc))
            schema_ok = False
            continue
        try:
            step: Any = compile_instruction(ins)
        except ValueSyntaxError as exc:
            problems.append(Problem(ins.seq_no, exc.kind, str(exc)))
            compiled_ok = False
            step = _opaque(ins)
        if ins.seq_no in kept:
            continue  # a duplicate seq_no, reported below: the first one stands for the data-flow check
        kept.add(ins.seq_no)
        instructions.append(ins)
        steps.append(step)
    for seq in sorted(seq for seq, count in seen_seq.items() if count > 1):  # (only those sorted: one C call over them)
        compiled_ok = False
        problems.append(Problem(seq, "duplicate_seq_no", f"seq_no {seq} is used by {seen_seq[seq]} instructions; seq_no must be unique"))
    for step in steps:
        if isinstance(step, JmpStep):
            for target in (step.target_seq, step.if_true_seq, step.if_false_seq):
                if target is not None and target not in seen_seq:
                    schema_ok = False
                    problems.append(Problem(step.seq_no, "bad_jump_target", f"jumps to seq_no {target}, which does not exist"))
        elif isinstance(step, CallingStep):
            problems.extend(_tool_problems(step, catalog, allowed))
    program = None
    if schema_ok:  # every instruction is known and every jump lands: the data flow can be checked
        program = Program(instructions, steps)
        problems.extend(_flow_problems(program, frozenset(predefined)))
        if not compiled_ok:
            program = None
    problems.sort(key=lambda p: (p.seq_no is None, p.seq_no if p.seq_no is not None else 0))
    if len(steps) > LARGE_PLAN:  # what a large plan made: freed apart (vm.bulk), not all at once on returning
        if program is not None:
            program.keep_apart()
        parts = [instructions, steps]
        del instructions, steps
        bulk.discard(parts)
    return (program if not problems else None), problems


def compile_plan(
    plan: str | Any,
    catalog: ToolCatalog | None = None,
    *,
    allowed_tools: Iterable[str] | None = None,
    predefined: Iterable[str] = (),
    limits: Limits | None = None,
) -> Program:
    """Validate and compile a plan; raise :class:`PlanValidationError` listing every problem."""
    program, problems = validate_plan(plan, catalog, allowed_tools=allowed_tools, predefined=predefined, limits=limits)
    if problems or program is None:
        raise PlanValidationError(problems)
    return program

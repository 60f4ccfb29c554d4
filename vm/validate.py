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
from typing import Any

from pydantic import ValidationError

from vm.errors import PlanValidationError, Problem
from vm.plan import INSTRUCTION_ADAPTER, load_plan_data
from vm.program import FINAL_ANSWER, CallingStep, JmpStep, Program, Step, compile_instruction
from vm.tooling import ToolCatalog
from vm.values import ValueSyntaxError

__all__ = ["compile_plan", "validate_plan"]

_TYPES = "assign, calling, jmp, reasoning"


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


def _flow_problems(program: Program, predefined: Collection[str]) -> list[Problem]:
    """May-assigned analysis: the variables some path from the start could have set at each step.

    Variable sets are bitmasks (Python ints, one bit per variable name), so a step costs a few
    integer operations however many variables the plan has.
    """
    n = len(program)
    if n == 0:
        return [Problem(None, "empty", "the plan has no instructions")]
    steps = program.steps
    bit: dict[str, int] = {}

    def mask(names: Iterable[str]) -> int:
        m = 0
        for name in names:
            m |= bit.setdefault(name, 1 << len(bit))
        return m

    writes = [mask(s.writes) for s in steps]
    reads = [mask(s.reads) for s in steps]
    reach_in: list[int | None] = [None] * n
    reach_in[0] = mask(predefined)
    work = [0]
    while work:
        pc = work.pop()
        out = reach_in[pc] | writes[pc]  # type: ignore[operator]
        for nxt in program.successors(pc):
            if nxt >= n:
                continue
            current = reach_in[nxt]
            if current is None or out & ~current:
                reach_in[nxt] = out if current is None else current | out
                work.append(nxt)
    problems = []
    final_bit = bit.get(FINAL_ANSWER, 0)
    assigns_final = False
    for pc, step in enumerate(steps):
        seen = reach_in[pc]
        if seen is None:
            continue  # unreachable
        assigns_final = assigns_final or bool(writes[pc] & final_bit)
        if reads[pc] & ~seen:
            for name in sorted(n for n in step.reads if not bit[n] & seen):
                problems.append(
                    Problem(
                        step.seq_no,
                        "undefined_variable",
                        f"variable '{name}' is read here, but no step before it on any path assigns it",
                    )
                )
    if not assigns_final:
        problems.append(
            Problem(None, "no_final_answer", "no reachable step assigns 'final_answer'; the last step should assign it")
        )
    return problems


def validate_plan(
    plan: str | Any,
    catalog: ToolCatalog | None = None,
    *,
    allowed_tools: Iterable[str] | None = None,
    predefined: Iterable[str] = (),
) -> tuple[Program | None, list[Problem]]:
    """Check a plan; return the compiled program (None when there are problems) and every problem.

    ``plan`` is a path, a JSON string or parsed data (see :func:`vm.plan.load_plan_data`, which
    raises ``PlanLoadError`` for input that is not a plan at all). ``catalog`` enables the tool
    checks; ``predefined`` names variables the caller provides before the run.
    """
    data = load_plan_data(plan)
    allowed = frozenset(allowed_tools) if allowed_tools is not None else None
    problems: list[Problem] = []
    instructions: list[Any] = []
    steps: list[Step] = []
    seen_seq: dict[int, int] = {}
    for index, raw in enumerate(data):
        seq = _seq_of(raw)
        if seq is not None:
            seen_seq[seq] = seen_seq.get(seq, 0) + 1
        try:
            ins = INSTRUCTION_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            problems.extend(_schema_problems(index, raw, exc))
            continue
        try:
            step = compile_instruction(ins)
        except ValueSyntaxError as exc:
            problems.append(Problem(ins.seq_no, "bad_reference", str(exc)))
            continue
        instructions.append(ins)
        steps.append(step)
    structural_ok = not problems
    for seq, count in sorted(seen_seq.items()):
        if count > 1:
            structural_ok = False
            problems.append(Problem(seq, "duplicate_seq_no", f"seq_no {seq} is used by {count} instructions; seq_no must be unique"))
    for step in steps:
        if isinstance(step, JmpStep):
            for target in (step.target_seq, step.if_true_seq, step.if_false_seq):
                if target is not None and target not in seen_seq:
                    structural_ok = False
                    problems.append(Problem(step.seq_no, "bad_jump_target", f"jumps to seq_no {target}, which does not exist"))
        elif isinstance(step, CallingStep):
            problems.extend(_tool_problems(step, catalog, allowed))
    program = None
    if structural_ok:
        program = Program(instructions, steps)
        problems.extend(_flow_problems(program, frozenset(predefined)))
    problems.sort(key=lambda p: (p.seq_no is None, p.seq_no if p.seq_no is not None else 0))
    return (program if not problems else None), problems


def compile_plan(
    plan: str | Any,
    catalog: ToolCatalog | None = None,
    *,
    allowed_tools: Iterable[str] | None = None,
    predefined: Iterable[str] = (),
) -> Program:
    """Validate and compile a plan; raise :class:`PlanValidationError` listing every problem."""
    program, problems = validate_plan(plan, catalog, allowed_tools=allowed_tools, predefined=predefined)
    if problems or program is None:
        raise PlanValidationError(problems)
    return program

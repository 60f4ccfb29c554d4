"""The plan format: a JSON array of instructions, one Pydantic model per instruction type.

This module is the single source of truth for the format. The JSON Schema that the CLI prints,
the planner shows and constrained decoding compiles is generated from these models.

An instruction is ``{"seq_no": int, "type": str, "parameters": {...}}``. Types: ``assign``,
``calling``, ``jmp`` and ``reasoning`` (a no-op kept for plans that start with their reasoning).
Parameter objects of ``calling`` and ``jmp`` reject unknown keys; an instruction may carry a
free-text ``note`` (older planners wrote ``execution_objective``; it is accepted and kept).
"""

from __future__ import annotations

import json
import re
import stat
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from vm import bulk
from vm.errors import PlanLoadError

__all__ = [
    "AssignInstruction",
    "CallingInstruction",
    "CallingParameters",
    "Instruction",
    "JmpInstruction",
    "JmpParameters",
    "ReasoningInstruction",
    "ReasoningParameters",
    "VARIABLE_NAME",
    "canonical_instruction",
    "load_plan_data",
    "plan_json_schema",
]

#: What a variable name looks like: an identifier (``final_answer``, ``step2_result``).
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: seq_no and jump targets are 64-bit integers (as every database stores them).
SEQ_NO_BOUND = 2**63



def _check_variable_name(name: str) -> str:
    if not VARIABLE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid variable name (use letters, digits and _, not starting with a digit)")
    return name


class _Instruction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq_no: StrictInt = Field(description="Position of the instruction; unique within the plan. Jumps name it.")
    note: str | None = Field(default=None, description="Free text on the step's purpose; the VM ignores it.")
    execution_objective: str | None = Field(
        default=None, description="Older plans' name for a note; kept as written, ignored by the VM."
    )

    @field_validator("seq_no")
    @classmethod
    def _bounded(cls, value: int) -> int:
        # Checked here rather than in the schema, which constrained decoding compiles as it is.
        if not -SEQ_NO_BOUND <= value < SEQ_NO_BOUND:
            raise ValueError(f"seq_no {value} is out of range; use a number between 0 and {SEQ_NO_BOUND - 1}")
        return value

    @property
    def purpose(self) -> str | None:
        """The step's note, whichever key the plan used."""
        return self.note or self.execution_objective


class AssignInstruction(_Instruction):
    """Assign one or more variables. Every value sees the variables as they were before this step."""

    type: Literal["assign"]
    parameters: dict[str, Any] = Field(
        description=(
            "Variable name -> value. A value is a JSON literal, a reference \"${x}\", a template "
            "\"text ${x}\", or arithmetic over references such as \"${a} + ${b} / 3\"."
        ),
        min_length=1,
    )

    @field_validator("parameters")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            _check_variable_name(name)
        return value


class CallingParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool_name: str = Field(min_length=1, description="Name of a registered tool.")
    tool_params: dict[str, Any] = Field(
        default_factory=dict,
        description="Arguments for the tool; values may contain references, resolved before the call.",
    )
    output_vars: str | list[str] | None = Field(
        default=None,
        description=(
            "Where the result goes: one name (or a one-element list) stores the whole result; "
            "several names store the same-named keys of a JSON object result."
        ),
    )

    @field_validator("output_vars")
    @classmethod
    def _output_names(cls, value: str | list[str] | None) -> str | list[str] | None:
        names = [value] if isinstance(value, str) else (value or [])
        for name in names:
            _check_variable_name(name)
        if len(set(names)) != len(names):
            raise ValueError("output_vars names a variable more than once")
        return value

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.output_vars is None:
            return ()
        if isinstance(self.output_vars, str):
            return (self.output_vars,)
        return tuple(self.output_vars)


class CallingInstruction(_Instruction):
    """Call a registered tool and store its result."""

    type: Literal["calling"]
    parameters: CallingParameters


class JmpParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    condition_prompt: str | None = Field(
        default=None, description="A yes/no question for the LLM; may contain references."
    )
    condition: str | None = Field(
        default=None,
        description=(
            "A deterministic condition instead of condition_prompt: an expression over references, "
            "e.g. \"${count} < 3 and ${status} != 'done'\" (no LLM involved)."
        ),
    )
    context: Any = Field(default=None, description="Extra text given to the LLM with the condition.")
    jump_if_true: StrictInt | None = Field(default=None, description="seq_no to go to when the condition holds.")
    jump_if_false: StrictInt | None = Field(
        default=None, description="seq_no to go to when it does not; absent means the next instruction."
    )
    target_seq: StrictInt | None = Field(default=None, description="seq_no of an unconditional jump.")

    @model_validator(mode="after")
    def _one_form(self) -> JmpParameters:
        if self.condition_prompt is not None and self.condition is not None:
            raise ValueError("a jmp has either condition_prompt (asked to the LLM) or condition (an expression), not both")
        conditional = self.condition_prompt is not None or self.condition is not None
        if conditional and self.target_seq is not None:
            raise ValueError("a jmp has either a condition (condition_prompt or condition, with jump_if_true) or target_seq, not both")
        if conditional and self.jump_if_true is None:
            raise ValueError("a conditional jmp needs jump_if_true")
        if self.condition is not None and self.context is not None:
            raise ValueError("context belongs to condition_prompt (it is given to the LLM); a condition expression reads variables itself")
        if not conditional:
            if self.target_seq is None:
                raise ValueError("a jmp needs target_seq (unconditional), or condition_prompt or condition with jump_if_true")
            if self.jump_if_true is not None or self.jump_if_false is not None or self.context is not None:
                raise ValueError("jump_if_true, jump_if_false and context belong to a conditional jmp (condition_prompt or condition)")
        return self

    @property
    def targets(self) -> tuple[int, ...]:
        return tuple(t for t in (self.target_seq, self.jump_if_true, self.jump_if_false) if t is not None)


class JmpInstruction(_Instruction):
    """Jump: unconditionally to ``target_seq``, or where a condition says (asked to the LLM, or an expression)."""

    type: Literal["jmp"]
    parameters: JmpParameters


class ReasoningParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    chain_of_thoughts: Any = None
    dependency_analysis: Any = None


class ReasoningInstruction(_Instruction):
    """The planner's reasoning, kept for older plans; executes as a no-op recorded in the trace."""

    type: Literal["reasoning"]
    parameters: ReasoningParameters = Field(default_factory=ReasoningParameters)


Instruction = Annotated[
    Union[AssignInstruction, CallingInstruction, JmpInstruction, ReasoningInstruction],
    Field(discriminator="type"),
]

INSTRUCTION_ADAPTER: TypeAdapter[Any] = TypeAdapter(Instruction)
PLAN_ADAPTER: TypeAdapter[list[Any]] = TypeAdapter(list[Instruction])


@cache
def _schema() -> str:
    schema = PLAN_ADAPTER.json_schema()
    schema["title"] = "planvm plan"
    schema["description"] = "A plan: a JSON array of instructions executed in ascending seq_no."
    return json.dumps(schema)


def plan_json_schema() -> dict[str, Any]:
    """The plan's JSON Schema, generated from the models above (a fresh copy each call)."""
    return json.loads(_schema())


def canonical_instruction(instruction: Any) -> Any:
    """An instruction as the plan models dump it (keys in model order, absent fields left out),
    so two plans compare by meaning, not spelling; an invalid instruction is returned as given."""
    try:
        return INSTRUCTION_ADAPTER.validate_python(instruction).model_dump(mode="json", exclude_none=True)
    except ValidationError:
        return instruction


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (write a number or text instead)")


def _read_plan_file(path: Path, max_bytes: int) -> str:
    """The text of a plan file: a regular file (not a device or pipe), at most ``max_bytes``."""
    name = str(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise PlanLoadError(f"{path}: not a regular file; a plan is a JSON file", source=name)
        if info.st_size > max_bytes:
            raise PlanLoadError(
                f"{path}: {info.st_size:,} bytes is more than max_plan_bytes ({max_bytes:,}); raise "
                f"Limits.max_plan_bytes / --max-plan-bytes if the plan is really that large",
                source=name,
            )
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise PlanLoadError(f"{path}: no such file; check the path", source=name) from None
    except OSError as exc:
        raise PlanLoadError(f"{path}: cannot read the plan ({exc.strerror or exc})", source=name) from None
    if len(raw) > max_bytes:
        raise PlanLoadError(f"{path}: more than max_plan_bytes ({max_bytes:,}) bytes", source=name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanLoadError(f"{path}: not UTF-8 text (byte {exc.start}); save the plan as UTF-8", source=name) from None


def _parse_json(text: str, name: str) -> Any:
    try:
        return bulk.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise PlanLoadError(
            f"{name}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); a plan is a JSON array "
            f"of instructions",
            source=name,
        ) from None
    except RecursionError:
        raise PlanLoadError(f"{name}: JSON nested too deeply to read; a plan is at most a few levels deep", source=name) from None
    except ValueError as exc:  # NaN / Infinity, or an integer of over 4,300 digits
        raise PlanLoadError(f"{name}: {exc}", source=name) from None


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and not text.lstrip().startswith(("[", "{"))


def load_plan_data(
    source: str | Path | list[Any], *, max_bytes: int | None = None, max_depth: int | None = None
) -> list[Any]:
    """Read a plan as raw JSON data: from a path, a JSON string, or an already-parsed list.

    Raises :class:`PlanLoadError` for a missing or unreadable file, a file or text over
    ``max_bytes``, invalid JSON (``NaN`` and ``Infinity`` included), JSON that is not an array
    (an object with a ``plan`` / ``best_plan`` array is accepted and unwrapped), and data nested
    deeper than ``max_depth`` or holding values JSON cannot (bounds default to :class:`vm.Limits`).
    A string is read as a path when it looks like one and such a file exists; otherwise as JSON.
    """
    from vm.jsonsafe import ValueLimitError, storable
    from vm.limits import Limits

    defaults = Limits()
    max_bytes = max_bytes if max_bytes is not None else defaults.max_plan_bytes
    max_depth = max_depth if max_depth is not None else defaults.max_depth
    name = "plan"
    if isinstance(source, Path):
        name = str(source)
        data = _parse_json(_read_plan_file(source, max_bytes), name)
    elif isinstance(source, str):
        if len(source) > max_bytes:
            raise PlanLoadError(f"the plan text is more than max_plan_bytes ({max_bytes:,}) characters", source=name)
        if _looks_like_path(source):
            path = Path(source)
            try:
                exists = path.exists() or path.is_symlink()
            except OSError:
                exists = True  # a name too long, a loop...: reading it reports why
            if exists or not source.strip():
                name = source
                data = _parse_json(_read_plan_file(path, max_bytes), name)
            else:
                try:
                    data = bulk.loads(source, parse_constant=_reject_constant)
                except (ValueError, RecursionError):
                    raise PlanLoadError(
                        f"{source}: no such file, and not a JSON plan either; check the path", source=source
                    ) from None
        else:
            data = _parse_json(source, name)
    else:
        data = source
    if isinstance(data, dict):
        for key in ("plan", "best_plan"):
            inner = data.get(key)
            if isinstance(inner, str):
                try:
                    inner = bulk.loads(inner, parse_constant=_reject_constant)
                except (ValueError, RecursionError):
                    inner = None
            if isinstance(inner, list):
                data = inner
                break
        else:
            raise PlanLoadError(
                f"{name}: a plan is a JSON array of instructions, got an object (keys: "
                f"{', '.join(map(str, data)) or 'none'}); wrap the instructions in [...]",
                source=name,
            )
    if not isinstance(data, list):
        raise PlanLoadError(f"{name}: a plan is a JSON array of instructions, got {type(data).__name__}", source=name)
    try:
        return storable(data, max_depth=max_depth)
    except ValueLimitError as exc:
        if exc.limit == "max_depth":
            raise PlanLoadError(
                f"{name}: nested deeper than max_depth ({max_depth} levels); flatten the values, or raise "
                f"Limits.max_depth",
                source=name,
            ) from None
        raise PlanLoadError(f"{name}: {exc}", source=name) from None

"""Run budgets and input bounds, named in one object.

| limit | default | what it bounds | when it is broken |
|---|---|---|---|
| ``max_steps`` | 1,000 | executed instructions | ``StepLimitExceeded`` |
| ``max_seconds`` | 600 | wall clock of a run | ``TimeLimitExceeded`` |
| ``max_llm_calls`` | 200 | LLM calls of a run | ``LLMCallLimitExceeded`` |
| ``max_tokens`` | off | prompt + completion tokens of a run's LLM exchanges | ``TokenLimitExceeded`` |
| ``max_value_bytes`` | 4 MiB | one value, as JSON text | ``ValueTooLarge`` (the step fails) |
| ``max_depth`` | 100 | nesting, in a plan or a value | ``PlanLoadError`` / ``ValueTooLarge`` |
| ``max_plan_bytes`` | 32 MiB | a plan file or text | ``PlanLoadError`` |
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Limits", "continuing"]


class Limits(BaseModel):
    """Budgets every run is held to. ``None`` turns a budget off (the step budget is always on)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_steps: int = Field(default=1000, ge=1, description="Executed instructions per run (a loop counts each pass).")
    max_seconds: float | None = Field(default=600.0, gt=0, description="Wall-clock seconds per run.")
    max_llm_calls: int | None = Field(
        default=200, ge=0, description="LLM calls per run: jmp conditions and tools that use the run's LLM."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Prompt plus completion tokens of the run's LLM exchanges (off by default)."
    )
    max_value_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Size of one value (an assign value, a tool result, an LLM reply), as JSON text.",
    )
    max_depth: int = Field(
        default=100, ge=4, le=400, description="Nesting of lists and objects, in a plan and in any value."
    )
    max_plan_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, description="Size of a plan file or text.")


def continuing(kept: dict[str, Any] | None, given: Limits) -> tuple[Limits, dict[str, tuple[Any, Any]]]:
    """The limits a stored run goes on under (resumed, approved, taken by a worker, forked): the
    limits kept with it, each lowered, never raised, by one set explicitly on ``given`` now.

    Returns them and, by name, the given limits that asked for more than the run keeps
    (``(asked, kept)``): those were not applied. ``kept`` None (a run recorded before limits were
    kept): ``given`` as it is. ``None`` as a value means the budget is off, above any number."""
    if not kept:
        return given, {}
    names = Limits.model_fields
    values = {name: value for name, value in kept.items() if name in names}
    raised: dict[str, tuple[Any, Any]] = {}
    for name in given.model_fields_set:
        asked, mine = getattr(given, name), values.get(name, getattr(Limits(), name))
        if _above(asked, mine):
            if asked != mine:
                raised[name] = (asked, mine)
            continue
        values[name] = asked
    try:
        return Limits(**values), raised
    except ValueError:  # a stored value this version no longer accepts: the given limits, as they are
        return given, {}


def _above(asked: Any, kept: Any) -> bool:
    """Whether the limit ``asked`` is higher than ``kept`` (None: off, above every number)."""
    if asked is None:
        return kept is not None
    return kept is not None and asked > kept

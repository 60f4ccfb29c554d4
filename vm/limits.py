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

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Limits"]


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

"""Run budgets, named in one object."""

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

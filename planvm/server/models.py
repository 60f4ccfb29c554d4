"""The service's request and response models (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

_SEQ = Field(..., ge=-(2**63), lt=2**63)  # any seq_no a plan may use



class LimitsOverride(BaseModel):
    """Budgets for one run; each may only be lower than the server's own."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(None, ge=1)
    max_seconds: float | None = Field(None, gt=0)
    max_llm_calls: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    max_value_bytes: int | None = Field(None, ge=1024)


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    goal: str | None = Field(None, min_length=1, max_length=20_000, description="What the run should achieve (needed unless a plan is given).")
    metadata: dict[str, Any] | None = Field(None, description="Goal metadata: response_format, label_path, background...")
    plan: list[Any] | None = Field(None, description="A plan to run instead of planning one (a JSON array of instructions).")
    planner: Literal["auto", "llm", "template"] | None = Field(None, description="Who plans (default: the server's configured choice).")
    library: bool | None = Field(None, description="Reuse a best plan kept for this goal, and show similar ones to the planner (default: the server's setting).")
    limits: LimitsOverride | None = None
    approve_tools: list[str] = Field(default_factory=list, description="Tools whose calls wait for approval in this run.")
    stream_plan: StrictBool = Field(False, description="Start tool calls while the planner is still writing the plan (a planned "
                                    "goal run by this server; side-effecting tools wait for the whole, valid plan).")

    @model_validator(mode="after")
    def _goal_or_plan(self) -> RunRequest:
        if self.goal is None and self.plan is None:
            raise ValueError("give a goal to plan, or a plan to run (or both)")
        return self


class ForkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_seq: int = Field(..., ge=-(2**63), lt=2**63, description="The seq_no the new run continues from.")
    plan: list[Any] | None = Field(None, description="The new plan (instructions before from_seq unchanged).")
    suggestion: str | None = Field(None, min_length=1, max_length=20_000, description="Or: ask the planner to change the plan.")


class ApproveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq_no: int = _SEQ
    approved: StrictBool = Field(..., description="true runs the call, false rejects it (JSON booleans only).")
    tool_params: dict[str, Any] | None = Field(None, description="Run the call with these parameters instead.")
    reason: str | None = Field(None, max_length=2_000)


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    goal: str = Field(..., min_length=1, max_length=20_000)
    metadata: dict[str, Any] | None = None
    planner: Literal["auto", "llm", "template"] | None = Field(None, description="Who plans (default: the server's configured choice).")
    library: bool | None = Field(None, description="Reuse a best plan kept for this goal, and show similar ones to the planner (default: the server's setting).")


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: list[Any]


class Started(BaseModel):
    run_id: str
    status: str


class ErrorBody(BaseModel):
    type: str
    message: str
    problems: list[str] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


_ERRORS = {
    404: {"model": ErrorResponse, "description": "No such run."},
    409: {"model": ErrorResponse, "description": "The run is busy, finished, or not in the state the request needs."},
    422: {"model": ErrorResponse, "description": "The request or the plan is not valid."},
}

"""One shape per thing: a run's outcome, a run (detail and summary), a step, a plan result.

``--json``, the HTTP responses (their ``response_model``), MCP structured output and the page
all use these, so the same run reads the same on every surface.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PlanView", "RunDetail", "RunOutcome", "RunSummary", "StepView"]


def _extraction(llm_calls: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``model_used``, ``answer_found`` and ``notice`` for a run answered by the extractive baseline."""
    from tools.llm_extractive import NO_MODEL_NOTICE

    extracted = [call for call in llm_calls if call.get("reasoning") == NO_MODEL_NOTICE]
    if not extracted:
        return {}
    return {"model_used": False, "answer_found": all(call.get("found", True) for call in extracted), "notice": NO_MODEL_NOTICE}


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def dump(self) -> dict[str, Any]:
        """The JSON object every surface sends (optional fields left out when they do not apply)."""
        data = self.model_dump(mode="json")
        for name in self._optional:
            if data.get(name) is None:
                data.pop(name, None)
        return data

    _optional: tuple[str, ...] = ()


class RunOutcome(_Shape):
    """How a run ended (or stopped): what ``planvm exec --json`` prints, ``POST /v1/runs?wait=true``
    answers, MCP ``exec_plan`` / ``run_goal`` return, and a stream's ``done`` event carries."""

    run_id: str | None = Field(description="The run's id (None when it was not recorded).")
    status: str = Field(description="completed, failed, waiting, interrupted, cancelled, queued…")
    final_answer: Any = Field(None, description="The value of final_answer, once assigned.")
    variables: dict[str, Any] = Field(default_factory=dict, description="Every variable at the end.")
    steps: int = Field(0, description="Executed steps.")
    error: str | None = Field(None, description="Why the run failed or stopped.")
    pending: dict[str, Any] | None = Field(None, description="The tool call a waiting run waits to have approved.")
    model_used: bool | None = Field(None, description="false: answered by the offline extractive baseline, without a model.")
    answer_found: bool | None = Field(None, description="With model_used false: whether the knowledge base held an answer.")
    notice: str | None = Field(None, description="With model_used false: what that means.")

    _optional = ("pending", "model_used", "answer_found", "notice")

    @classmethod
    def of(cls, run_id: str | None, status: str, final_answer: Any, variables: dict[str, Any], steps: int, error: str | None,
           llm_calls: Iterable[dict[str, Any]], pending: dict[str, Any] | None = None) -> RunOutcome:
        return cls(run_id=run_id, status=status, final_answer=final_answer, variables=variables, steps=steps, error=error,
                   pending=pending, **_extraction(llm_calls))

    @classmethod
    def from_result(cls, result: Any) -> RunOutcome:
        """From a :class:`vm.RunResult` (the run just executed here)."""
        return cls.of(result.run_id, result.status, result.final_answer, result.variables, result.steps,
                      str(result.error) if result.error else None, (c for r in result.trace for c in r.llm_calls), result.pending)

    @classmethod
    def from_stored(cls, run: Any) -> RunOutcome:
        """From a :class:`vm.StoredRun` read with its steps."""
        return cls.of(run.id, run.status, run.final_answer, run.variables_at(), len(run.steps), run.error,
                      (c for s in run.steps for c in s.llm_calls), run.pending)


class StepView(_Shape):
    """One executed step as stored: position, instruction, inputs, outputs, the tool's raw reply,
    LLM exchanges, where it went next, its duration, error and notes."""

    index: int
    seq_no: int
    type: str
    tool: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    llm_calls: list[dict[str, Any]] = Field(default_factory=list)
    next_seq: int | None = None
    duration_s: float = 0.0
    error: str | None = None
    notes: list[str] = Field(default_factory=list)
    started_at: float | None = Field(None, description="When it started, seconds since the epoch (steps that ran at once overlap).")

    @classmethod
    def of(cls, step: Any) -> StepView:
        return cls(**step.to_dict())


class RunDetail(_Shape):
    """One recorded run: ``planvm runs show --json``, ``GET /v1/runs/{id}`` and MCP ``get_run``
    (``trace``: its steps, when asked for)."""

    id: str
    status: str
    goal: str | None = None
    metadata: dict[str, Any] | None = None
    plan: list[Any] | None = None
    planning: dict[str, Any] = Field(default_factory=dict, description="planner, reasoning, model, tokens, attempts (a count), suggestion…")
    final_answer: Any = None
    variables: dict[str, Any] = Field(default_factory=dict, description="The variables after its last step.")
    error: str | None = None
    steps: int = Field(0, description="Recorded steps.")
    pending: dict[str, Any] | None = None
    parent_id: str | None = None
    fork_seq: int | None = None
    lineage: list[str] = Field(default_factory=list, description="Its ancestors, oldest first, then the run itself.")
    children: list[dict[str, Any]] = Field(default_factory=list, description="Runs forked from it.")
    tokens: dict[str, dict[str, int]] = Field(default_factory=dict, description="Prompt and completion tokens per model role.")
    judgement: dict[str, Any] | None = None
    best_of: str | None = None
    limits: dict[str, Any] | None = None
    approve_tools: list[str] | None = None
    created_at: float
    updated_at: float
    executor: str | None = Field(None, description="The process executing it (while one holds its lease).")
    lease_expires_at: float | None = None
    model_used: bool | None = None
    answer_found: bool | None = None
    variables_at_step: dict[str, Any] | None = Field(None, description="{step, variables}, when asked for one step.")
    trace: list[StepView] | None = Field(None, description="Its steps, when asked for.")

    _optional = ("model_used", "answer_found", "variables_at_step", "trace")

    @classmethod
    def of(cls, run: Any, *, lineage: list[str], children: list[dict[str, Any]], trace: bool = False,
           step: int | None = None) -> RunDetail:
        planning = dict(run.planning or {})
        attempts = planning.pop("attempts", None)
        planning["attempts"] = len(attempts) if isinstance(attempts, list) else 0
        extraction = _extraction(c for s in run.steps for c in s.llm_calls)
        extraction.pop("notice", None)
        running = run.status == "running"
        return cls(
            id=run.id, status=run.status, goal=run.goal, metadata=run.metadata, plan=run.plan, planning=planning,
            final_answer=run.final_answer, variables=run.variables_at(), error=run.error, steps=len(run.steps), pending=run.pending,
            parent_id=run.parent_id, fork_seq=run.fork_seq, lineage=lineage, children=children, tokens=run.token_totals(),
            judgement=run.judgement, best_of=run.best_of, limits=run.limits, approve_tools=run.approve_tools,
            created_at=run.created_at, updated_at=run.updated_at, executor=run.owner if running else None,
            lease_expires_at=run.lease_expires_at if running else None,
            variables_at_step={"step": step, "variables": run.variables_at(step + 1)} if step is not None else None,
            trace=[StepView.of(s) for s in run.steps] if trace else None, **extraction,
        )


class RunSummary(_Shape):
    """A run in a list: ``planvm runs list --json``, ``GET /v1/runs``."""

    id: str
    status: str
    created_at: float
    updated_at: float | None = Field(None, description="Its last change (for a finished run: when it ended).")
    steps: int
    goal: str | None = None
    parent_id: str | None = None
    fork_seq: int | None = None
    plan_file: str | None = None
    owner: str | None = None
    lease_expires_at: float | None = None
    score: float | None = None
    accept: bool | None = None
    best_of: str | None = None


class RunPage(_Shape):
    """A page of runs, newest first; ``next_cursor`` asks for the next one."""

    runs: list[RunSummary]
    next_cursor: str | None = None


class PlanView(_Shape):
    """A plan for a goal, not run: ``planvm plan --json``, ``POST /v1/plans``, MCP ``plan_goal``."""

    planner: str = Field(description="llm, template, or library (a kept best plan reused).")
    reasoning: str | None = None
    plan: list[Any]
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int = Field(0, description="Planner attempts (1 when the first plan was valid).")
    library: dict[str, Any] | None = Field(None, description="The library entry reused, and how it matched.")

    @classmethod
    def of(cls, result: Any) -> PlanView:
        record = result.record()
        attempts = record.get("attempts")
        return cls(planner=result.planner, reasoning=result.reasoning, plan=result.plan, model=record.get("model"),
                   prompt_tokens=record.get("prompt_tokens"), completion_tokens=record.get("completion_tokens"),
                   attempts=len(attempts) if isinstance(attempts, list) else int(attempts or 0), library=result.library)

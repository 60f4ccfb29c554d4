"""Replaying a recorded run, and checking that every step reproduces its record.

* **Offline** (:func:`replay`): the plan runs again in the VM, but every tool call is answered
  with the reply recorded for that step and every jump condition with the LLM reply recorded for
  it. No tool, network or model is touched. A deterministic VM then reproduces each step's
  outputs exactly; a difference means the plan or the VM changed since the run.
* **Live** (:func:`replay_live`): the plan runs again against real tools and LLM; the report
  shows, step by step, what changed.

Either way the result is a :class:`ReplayReport`: one :class:`StepCheck` per step (recorded or
replayed), each naming its step and listing its differences.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from vm.errors import ReplayError, ToolFailed
from vm.limits import Limits
from vm.llm import Completion
from vm.plan import load_plan_data
from vm.store import StoredRun, StoredStep
from vm.tooling import CallContext
from vm.trace import RunResult, StepRecord

__all__ = ["ReplayReport", "StepCheck", "replay", "replay_live"]


def _plain(value: Any) -> Any:
    """A value as it reads back from the store (JSON), so live and recorded values compare."""
    return json.loads(json.dumps(value, default=to_jsonable_python))


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(slots=True)
class StepCheck:
    index: int
    seq_no: int | None
    type: str | None
    differences: list[str] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        return not self.differences


@dataclass(slots=True)
class ReplayReport:
    run_id: str
    mode: str  # "offline" or "live"
    checks: list[StepCheck]
    result: RunResult
    recorded_final_answer: Any

    @property
    def ok(self) -> bool:
        return all(c.matched for c in self.checks) and self.final_answer_matches

    @property
    def final_answer_matches(self) -> bool:
        return _plain(self.result.final_answer) == _plain(self.recorded_final_answer)

    @property
    def mismatches(self) -> list[StepCheck]:
        return [c for c in self.checks if not c.matched]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "ok": self.ok,
            "final_answer": self.result.final_answer,
            "recorded_final_answer": self.recorded_final_answer,
            "error": str(self.result.error) if self.result.error else None,
            "steps": [
                {"index": c.index, "seq_no": c.seq_no, "type": c.type, "matched": c.matched, "differences": c.differences}
                for c in self.checks
            ],
        }


def compare(recorded: list[StoredStep], replayed: list[StepRecord]) -> list[StepCheck]:
    """Step-by-step differences between a record and a new trace."""
    checks = []
    for i in range(max(len(recorded), len(replayed))):
        old = recorded[i] if i < len(recorded) else None
        new = replayed[i] if i < len(replayed) else None
        if old is None:
            checks.append(StepCheck(i, new.seq_no, new.type, ["the record ends before this step"]))  # type: ignore[union-attr]
            continue
        if new is None:
            checks.append(StepCheck(i, old.seq_no, old.type, ["the replay ended before this recorded step"]))
            continue
        diffs: list[str] = []
        if (old.seq_no, old.type) != (new.seq_no, new.type):
            diffs.append(f"recorded seq_no {old.seq_no} ({old.type}), replay ran seq_no {new.seq_no} ({new.type})")
        else:
            new_out = _plain(dict(new.outputs))
            for name in sorted(set(old.outputs) | set(new_out)):
                before, after = old.outputs.get(name, "<unset>"), new_out.get(name, "<unset>")
                if before != after:
                    diffs.append(f"{name}: {_short(before)} -> {_short(after)}")
            if old.type == "calling" and old.inputs != _plain(dict(new.inputs)):
                diffs.append(f"tool_params: {_short(old.inputs)} -> {_short(_plain(dict(new.inputs)))}")
            if old.next_seq != new.next_seq:
                diffs.append(f"jumped to seq_no {new.next_seq}, recorded {old.next_seq}")
            if (old.error is None) != (new.error is None):
                diffs.append(f"error: {old.error or 'none'} -> {new.error or 'none'}")
        checks.append(StepCheck(i, old.seq_no, old.type, diffs))
    return checks


# --- offline: tools and LLM answer from the record ---------------------------------------------


class _RecordedTool:
    """A tool that answers each call with the reply recorded for its step, in order."""

    is_async = True

    def __init__(self, name: str, parameter_names: frozenset[str], replies: dict[int, deque[StoredStep]]) -> None:
        self.name = name
        self.description = f"recorded replies of {name}"
        self._parameter_names = parameter_names
        self._replies = replies

    @property
    def parameter_names(self) -> frozenset[str]:
        return self._parameter_names

    @property
    def required_parameters(self) -> frozenset[str]:
        return frozenset()

    def bind(self, params: dict[str, Any]) -> dict[str, Any]:
        return params

    async def call(self, bound: dict[str, Any], ctx: CallContext) -> Any:
        queue = self._replies.get(ctx.seq_no)
        if not queue:
            raise ReplayError(
                f"seq_no {ctx.seq_no} calls '{self.name}' one more time than the record holds; the plan no longer "
                f"matches the run (replay with --live to run it against the real tools)",
                seq_no=ctx.seq_no,
            )
        step = queue.popleft()
        if step.tool != self.name:
            raise ReplayError(
                f"seq_no {ctx.seq_no} calls '{self.name}', but the record has '{step.tool}' there; the plan no longer "
                f"matches the run",
                seq_no=ctx.seq_no,
            )
        if step.error is not None:
            raise RuntimeError(f"(recorded failure) {step.error}")
        return step.result


class _RecordedCatalog:
    def __init__(self, run: StoredRun) -> None:
        replies: dict[int, deque[StoredStep]] = defaultdict(deque)
        for step in run.steps:
            if step.type == "calling":
                replies[step.seq_no].append(step)
        params: dict[str, set[str]] = defaultdict(set)
        for ins in load_plan_data(run.plan):
            if isinstance(ins, dict) and ins.get("type") == "calling":
                p = ins.get("parameters") or {}
                if isinstance(p, dict) and isinstance(p.get("tool_name"), str):
                    params[p["tool_name"]].update((p.get("tool_params") or {}).keys())
        self._tools = {name: _RecordedTool(name, frozenset(names), replies) for name, names in params.items()}

    def get(self, name: str) -> _RecordedTool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)


class _RecordedLLM:
    """Answers jump conditions with the LLM replies recorded for them, in order.

    A jump that failed in the record (its LLM unreachable, the run's LLM budget spent) fails
    again at the same call, so the replay reproduces the failure instead of asking for more.
    """

    def __init__(self, run: StoredRun) -> None:
        self._replies: deque[Completion | str] = deque()
        for step in run.steps:
            if step.type != "jmp":
                continue
            for call in step.llm_calls:
                self._replies.append(Completion(str(call.get("text") or ""), call.get("reasoning")))
            if step.error is not None:
                self._replies.append(step.error)

    async def acomplete(self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None) -> Completion:
        if not self._replies:
            raise ReplayError("a jump condition asks the LLM more often than the record holds; the plan no longer matches the run")
        reply = self._replies.popleft()
        if isinstance(reply, str):
            raise RuntimeError(f"(recorded failure) {reply}")
        return reply

    def complete(self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None) -> Completion:
        raise ReplayError("offline replay answers jump conditions only")  # pragma: no cover - acomplete is preferred


def _report(run: StoredRun, result: RunResult, mode: str) -> ReplayReport:
    error = result.error
    cause = error.__cause__ if isinstance(error, ToolFailed) else getattr(error, "__cause__", None)
    checks = compare(run.steps, result.trace)
    if isinstance(cause, ReplayError) and result.trace:
        # Name the step that diverged even when its outputs could not be compared.
        checks[len(result.trace) - 1].differences.append(str(cause))
    return ReplayReport(run.id, mode, checks, result, run.final_answer)


async def areplay(run: StoredRun, *, limits: Limits | None = None) -> ReplayReport:
    """Re-execute ``run`` offline, serving every tool and LLM reply from its record."""
    from vm.machine import VM  # the VM imports this module's neighbours; import it late

    if limits is None:
        # The replay re-executes exactly the recorded steps, with the run's own bounds on values: a
        # run its budget stopped stops at the same step, and replies come from the record, so no
        # time or LLM budget applies.
        try:
            recorded = Limits.model_validate(run.limits) if isinstance(run.limits, dict) else Limits()
        except ValidationError as exc:
            raise ReplayError(f"the record's limits are not valid ({exc.errors()[0]['msg']}); export the run again") from None
        limits = recorded.model_copy(update={"max_steps": max(1, len(run.steps)), "max_seconds": None, "max_llm_calls": None})
    vm = VM(_RecordedCatalog(run), llm=_RecordedLLM(run), limits=limits, concurrency=1)
    result = await vm.arun(run.plan, variables=dict(run.variables))
    return _report(run, result, "offline")


def replay(run: StoredRun, *, limits: Limits | None = None) -> ReplayReport:
    return asyncio.run(areplay(run, limits=limits))


async def areplay_live(run: StoredRun, vm: Any) -> ReplayReport:
    """Re-execute ``run``'s plan with ``vm``'s real tools and LLM and compare it with the record,
    under the run's own limits (lowered, never raised, by limits ``vm`` was given)."""
    result = await vm.for_run(run.limits).arun(run.plan, variables=dict(run.variables), goal=run.goal, metadata=run.metadata)
    return _report(run, result, "live")


def replay_live(run: StoredRun, vm: Any) -> ReplayReport:
    return asyncio.run(areplay_live(run, vm))

"""The judge: a model grades a run's final answer against its goal and the evidence it retrieved.

The judge model (the ``judge`` role) is asked with a rubric (``prompts/judge.md.j2``) and the
reply's JSON schema (structured output, where the backend supports it). A reply that cannot be
read as a :class:`Judgement` is asked for once more, with what was wrong; a second bad reply is a
:class:`JudgeError`, never a crash.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from planner.prompt import render
from tools.backends import RETRIEVAL_TOOLS
from vm import telemetry
from vm.errors import LLMError, PlanVMError
from vm.jsontext import extract_json
from vm.llm import as_completion

__all__ = ["JUDGE_SYSTEM", "Judge", "JudgeError", "Judgement", "NothingToJudge", "StepNote"]

JUDGE_SYSTEM = "You are a strict, fair grader of answers. You reply with JSON only."
_EVIDENCE_CHARS = 8000
_STEP_CHARS = 300


class StepNote(BaseModel):
    seq_no: int = Field(description="The seq_no of the step the note is about.")
    note: str = Field(description="What went wrong at that step.")


class Judgement(BaseModel):
    score: float = Field(ge=0, le=10, description="The grade, 0 (no answer) to 10 (complete, supported, as asked).")
    accept: bool = Field(description="Whether the answer is good enough to keep.")
    suggestion: str = Field("", description="How the plan should change; empty when accepted.")
    step_notes: list[StepNote] = Field(default_factory=list, description="Notes on the steps that went wrong.")


class JudgeError(PlanVMError):
    """A run that cannot be judged, or a judge whose replies could not be read."""


class NothingToJudge(JudgeError):
    """The run has no final answer to grade."""


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _render_steps(run: Any) -> str:
    lines = []
    for step in run.steps:
        what = f"calls {step.tool}" if step.tool else step.type
        outcome = f"error: {step.error}" if step.error else (_text(step.outputs, _STEP_CHARS) if step.outputs else
                                                             (f"jumps to {step.next_seq}" if step.next_seq is not None else ""))
        inputs = _text(step.inputs, _STEP_CHARS) if step.inputs else ""
        lines.append(f"- seq_no {step.seq_no}: {what} {inputs} -> {outcome}".rstrip())
    return "\n".join(lines) or "(no step ran)"


def _render_evidence(run: Any) -> str:
    parts: list[str] = []
    left = _EVIDENCE_CHARS
    for step in run.steps:
        if step.tool not in RETRIEVAL_TOOLS or step.error or left <= 0:
            continue
        piece = f"## seq_no {step.seq_no} ({step.tool})\n{_text(step.result if step.result is not None else step.outputs, left)}"
        parts.append(piece)
        left -= len(piece)
    return "\n\n".join(parts) or "(the plan retrieved nothing)"


def judge_prompt(run: Any) -> str:
    """The judge's prompt for a stored run."""
    return render(
        "judge.md.j2",
        goal=run.goal or "(the run has no goal; judge whether the answer is a sound result of its steps)",
        steps=_render_steps(run),
        evidence=_render_evidence(run),
        answer=_text(run.final_answer, 6000),
    )


def _read(text: str) -> Judgement:
    try:
        data = extract_json(text, (dict,))
    except ValueError:
        raise ValueError("the reply holds no JSON object") from None
    try:
        return Judgement.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'reply'}: {e['msg']}" for e in exc.errors()[:4])
        raise ValueError(problems) from None


class Judge:
    """Grades stored runs with ``llm`` (a ``vm.LLM``, the judge role's client)."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def judge(self, run: Any) -> dict[str, Any]:
        """The run's judgement as it is stored: the :class:`Judgement` fields plus model, tokens,
        tries and time. Raises :class:`JudgeError` for a run without an answer or unreadable replies."""
        if run.status != "completed" or run.final_answer is None:
            why = f"it is {run.status}" + (f" ({run.error})" if run.error else "")
            raise NothingToJudge(f"run '{run.id}' has no final answer to judge: {why}; judge completed runs (see `planvm runs list`)")
        prompt = judge_prompt(run)
        schema = Judgement.model_json_schema()
        ask = prompt
        tokens = [0, 0]
        model = None
        problem = ""
        for attempt in (1, 2):
            try:
                with telemetry.llm_span("judge", getattr(self.llm, "model", None)) as current:
                    reply = as_completion(self.llm.complete(ask, system=JUDGE_SYSTEM, json_schema=schema))
                    telemetry.record_reply(current, reply)
            except LLMError as exc:
                raise JudgeError(f"the judge model failed on run '{run.id}': {exc}") from None
            tokens[0] += reply.prompt_tokens or 0
            tokens[1] += reply.completion_tokens or 0
            model = reply.model or getattr(self.llm, "model", None)
            try:
                verdict = _read(reply.text)
            except ValueError as exc:
                problem = f"{exc} (reply: {_text(reply.text, 200)!r})"
                ask = f"{prompt}\nYour previous reply could not be read: {exc}. Reply with only the JSON object described above.\n"
                continue
            return {
                **verdict.model_dump(),
                "model": model if isinstance(model, str) else None,
                "prompt_tokens": tokens[0],
                "completion_tokens": tokens[1],
                "tries": attempt,
                "judged_at": time.time(),
            }
        raise JudgeError(f"the judge's replies for run '{run.id}' could not be read twice: {problem}; check the judge model "
                         f"(PLANVM_JUDGE_MODEL) or try again")

"""From a goal to a validated plan: generation, tolerant parsing, bounded repair, re-planning.

:class:`Planner` asks an LLM (``vm.LLM``) with the prompt from :mod:`planner.prompt`, reads the
reply (``<think>`` reasoning, then a JSON array in a fence, an ``<answer>`` block or bare), and
checks the plan with the VM's static validator against the registry it will run with. A plan
with problems is sent back with the problems listed, up to ``max_attempts`` tries in all; every
try is kept in :attr:`PlanResult.attempts`. When the LLM can constrain its output to a JSON
schema (``plan_schema`` argument of a backend, see :mod:`planner.constrained`), the plan schema is
given so the JSON is well-formed by construction.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from planner.prompt import build_prompt, render
from tools import abandon
from vm.errors import BadInput, PlanError, PlanningError
from vm.jsontext import extract_json
from vm.llm import as_completion
from vm.plan import canonical_instruction, load_plan_data
from vm.program import Program
from vm.validate import validate_plan

__all__ = ["Attempt", "PlanResult", "Planner", "parse_reply", "plan_schema_for"]


@dataclass(slots=True)
class Attempt:
    """One try: what was asked, what came back, and what was wrong with it."""

    prompt: str
    reply: str
    reasoning: str | None = None
    plan: list[Any] | None = None
    problems: list[str] = field(default_factory=list)
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The attempt as a run keeps it: a huge reply as a bounded excerpt (its head and tail)."""
        return {
            "prompt": self.prompt, "reply": _excerpt(self.reply, KEPT_REPLY_CHARS), "reasoning": self.reasoning, "plan": self.plan,
            "problems": self.problems,
            "model": self.model, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
        }


@dataclass(slots=True)
class PlanResult:
    plan: list[Any]
    program: Program
    reasoning: str
    attempts: list[Attempt] = field(default_factory=list)
    planner: str = "llm"
    adapter: str | None = None  # the LoRA adapter of a local planner model
    library: dict[str, Any] | None = None  # a plan reused from the plan library: which, and how it matched
    examples: list[str] = field(default_factory=list)  # ids of library plans shown to the planner as examples

    def record(self) -> dict[str, Any]:
        """How the plan was made, as a run keeps it: planner, prompt version, reasoning, model and
        adapter, tokens, every attempt, and the plan library's part (a reuse, or examples)."""
        from planner.prompt import prompt_version

        models = [a.model for a in self.attempts if a.model]
        record: dict[str, Any] = {
            "planner": self.planner,
            "prompt_version": prompt_version(),
            "reasoning": self.reasoning,
            "model": models[-1] if models else None,
            "adapter": self.adapter,
            "prompt_tokens": sum(a.prompt_tokens or 0 for a in self.attempts),
            "completion_tokens": sum(a.completion_tokens or 0 for a in self.attempts),
            "attempts": [a.to_dict() for a in self.attempts],
        }
        if self.library is not None:
            record["library"] = self.library
        if self.examples:
            record["examples"] = self.examples
        return record


_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)


def parse_reply(text: str) -> tuple[str, list[Any]]:
    """(reasoning, plan data) from a planner's reply; raises ``ValueError`` when there is no plan.

    Reasoning is the ``<think>`` block (also when it is never closed: then it runs up to the
    plan). The plan is the first JSON array in a fenced block, an ``<answer>`` block, or the text.
    """
    close = _THINK_CLOSE.search(text)
    opened = _THINK_OPEN.search(text)
    start = opened.end() if opened else 0
    if close is not None:
        reasoning, rest = text[start : close.start()], text[close.end() :]
    else:
        reasoning, rest = (text[start:], text[start:]) if opened else ("", text)
    answer = _ANSWER.search(rest)
    if answer:
        rest = answer.group(1)
    try:
        data = extract_json(rest, (list, dict))
    except ValueError:
        raise ValueError("the reply holds no JSON plan (a JSON array of instructions)") from None
    plan = load_plan_data(data) if isinstance(data, dict) else data
    if close is None and opened:
        # Unclosed <think>: the reasoning is what precedes the plan.
        fence = rest.find("```")
        bracket = rest.find("[")
        cut = min(i for i in (fence, bracket, len(rest)) if i >= 0)
        reasoning = rest[:cut]
    return reasoning.strip(), plan


class Planner:
    """Plans with an LLM. ``registry`` is the catalog the plan will run against."""

    name = "llm"

    def __init__(
        self,
        llm: Any,
        registry: Any,
        *,
        examples: list[dict[str, Any]] | None = None,
        max_attempts: int = 3,
        constrained: bool = True,
    ) -> None:
        if max_attempts < 1:
            raise BadInput("max_attempts must be at least 1")
        self.llm = llm
        self.registry = registry
        self.examples = examples
        self.max_attempts = max_attempts
        self.constrained = constrained
        # Hears each attempt's instructions while the model writes them (planner.stream), when
        # the LLM can stream; None: the reply is read whole.
        self.streamed: Any = None

    def _ask(self, prompt: str) -> tuple[str, Any]:
        if getattr(self.llm, "extract", None) is not None:
            from tools.llm_extractive import NO_MODEL_NOTICE

            raise PlanningError(f"planning needs a language model: {NO_MODEL_NOTICE} (or use the template planner)")
        kwargs: dict[str, Any] = {}
        if self.constrained and getattr(self.llm, "supports_plan_schema", False):
            kwargs["plan_schema"] = plan_schema_for(self.registry)
        from vm import telemetry

        with telemetry.llm_span("planner", getattr(self.llm, "model", None)) as current:
            if self.streamed is not None and hasattr(self.llm, "stream"):
                reply = as_completion(self._stream(prompt, kwargs))
            else:
                reply = as_completion(self.llm.complete(prompt, **kwargs))
            telemetry.record_reply(current, reply)
        # A backend that already split off the reasoning gives it separately; put it back for parsing.
        text = f"<think>{reply.reasoning}</think>\n{reply.text}" if reply.reasoning else reply.text
        return text, reply

    def _stream(self, prompt: str, kwargs: dict[str, Any]) -> Any:
        """Ask with a streamed reply, telling :attr:`streamed` each instruction as its JSON object
        closes (planner.stream)."""
        from planner.stream import PlanStream

        listener, reader = self.streamed, PlanStream()
        listener.begin()

        def on_delta(piece: str) -> None:
            for data in reader.feed(piece):
                listener.instruction(data)

        try:
            return self.llm.stream(prompt, on_delta=on_delta, **kwargs)
        finally:
            listener.end()

    def _attempts(self, prompt: str, predefined: tuple[str, ...] = (), check: Any = None) -> PlanResult:
        attempts: list[Attempt] = []
        ask = prompt
        for _ in range(self.max_attempts):
            abandon.check()  # a planning nobody waits for any more asks no more (tools.abandon)
            text, reply = self._ask(ask)
            model = reply.model or getattr(self.llm, "model", None)
            attempt = Attempt(
                prompt=ask, reply=text, model=model if isinstance(model, str) else None,
                prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
            )
            attempts.append(attempt)
            try:
                reasoning, plan = parse_reply(text)
            except (ValueError, PlanError) as exc:
                attempt.problems = [str(exc)]
            else:
                attempt.reasoning, attempt.plan = reasoning, plan
                program, problems = validate_plan(plan, self.registry, predefined=predefined)
                attempt.problems = [str(p) for p in problems]
                if program is not None and check is not None:
                    attempt.problems = check(plan)
                if program is not None and not attempt.problems:
                    return PlanResult(plan=program.to_data(), program=program, reasoning=reasoning, attempts=attempts, planner=self.name,
                                      adapter=_adapter_of(self.llm), examples=[str(e["id"]) for e in self.examples or () if "id" in e])
            ask = render("repair.md.j2", prompt=prompt, reply=_excerpt(text), problems=attempt.problems)
        last = "; ".join(attempts[-1].problems[:5]) or "unknown"
        raise PlanningError(
            f"the planner produced no valid plan in {len(attempts)} attempt(s); the last problems: {last}. "
            f"The attempts are kept on this error (.attempts) for inspection",
            attempts=attempts,
        )

    def plan(self, goal: str, metadata: Any = None) -> PlanResult:
        """A validated plan for ``goal``; raises :class:`~vm.errors.PlanningError` after the attempts."""
        return self._attempts(build_prompt(goal, metadata, self.registry, self.examples))

    def update(self, plan: Any, run: Any, from_seq: int, suggestion: str | None = None, *, goal: str | None = None, metadata: Any = None) -> PlanResult:
        """A new plan that keeps every instruction before ``from_seq`` unchanged.

        ``run`` is the run so far (a stored run, a ``RunResult``, or None): its variables before
        ``from_seq`` are shown to the model, and its goal is used when ``goal`` is not given. A
        reply that changes the kept instructions is sent back for repair like any other problem.
        """
        goal = goal or getattr(run, "goal", None)
        if not goal:
            raise BadInput("re-planning needs the goal: pass goal=... (or a stored run that recorded it)")
        metadata = metadata if metadata is not None else getattr(run, "metadata", None)
        old = [ins for ins in load_plan_data(plan) if isinstance(ins, dict)]
        kept = {_key(ins) for ins in old if _seq(ins) is not None and _seq(ins) < from_seq}
        prompt = render(
            "update.md.j2",
            prompt=build_prompt(goal, metadata, self.registry, self.examples),
            plan=json.dumps(old, ensure_ascii=False, indent=2),
            from_seq=from_seq,
            variables=json.dumps(_variables_before(run, from_seq), ensure_ascii=False, default=str)[:4000],
            suggestion=suggestion or "",
        )

        def keeps_prefix(new_plan: list[Any]) -> list[str]:
            new = {_key(ins) for ins in new_plan if isinstance(ins, dict) and _seq(ins) is not None and _seq(ins) < from_seq}
            changed = sorted({json.loads(k)["seq_no"] for k in kept ^ new})
            return [f"seq_no {s}: must stay exactly as in the started plan (it ran before seq_no {from_seq})" for s in changed]

        return self._attempts(prompt, check=keeps_prefix)


def plan_schema_for(registry: Any) -> dict[str, Any]:
    """The plan's JSON Schema with ``tool_name`` limited to the registry's tools."""
    from vm.plan import plan_json_schema

    schema = plan_json_schema()
    names = sorted(registry.names()) if registry is not None else []
    calling = schema.get("$defs", {}).get("CallingParameters", {}).get("properties", {})
    if names and "tool_name" in calling:
        calling["tool_name"] = {"type": "string", "enum": names, "description": "Name of a registered tool."}
    return schema


def _adapter_of(llm: Any) -> str | None:
    """The adapter folder of a local model (also behind the schema-constraining wrapper)."""
    for candidate in (llm, getattr(llm, "local", None)):
        adapter = getattr(candidate, "adapter", None)
        if isinstance(adapter, str):
            return adapter
    return None


def _seq(ins: dict[str, Any]) -> int | None:
    seq = ins.get("seq_no")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _key(ins: dict[str, Any]) -> str:
    """An instruction as a comparable string (canonical form, keys sorted)."""
    return json.dumps(canonical_instruction(ins), sort_keys=True, ensure_ascii=False)


def _variables_before(run: Any, from_seq: int) -> dict[str, Any]:
    if run is None:
        return {}
    steps = getattr(run, "steps", None)
    if isinstance(steps, list) and hasattr(run, "variables_at"):  # a stored run
        index = next((i for i, s in enumerate(steps) if s.seq_no == from_seq), len(steps))
        return run.variables_at(index)
    trace = getattr(run, "trace", None)
    if isinstance(trace, list):  # a RunResult: replay the outputs before from_seq
        state: dict[str, Any] = {}
        for record in trace:
            if record.seq_no == from_seq:
                break
            state.update(record.outputs)
        return state
    return {}


REPAIR_QUOTE_CHARS = 12_000  # of a reply sent back for repair: its head and its tail
KEPT_REPLY_CHARS = 64_000  # of a reply kept in a run's planning record


def _excerpt(text: str, limit: int = REPAIR_QUOTE_CHARS) -> str:
    """A reply as a repair prompt quotes it: whole when short, else its start and end (a 20 MB
    reply is not sent back to the model)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[… {len(text) - limit:,} characters left out …]\n{text[-half:]}"

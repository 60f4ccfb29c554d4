"""Judging a planner on held-out goals.

For each goal the planner writes one plan (no repair rounds: the model's own quality is measured)
and the plan is scored:

* ``parsed`` — a JSON plan could be read from the reply;
* ``schema_valid`` — it matches the plan's JSON Schema;
* ``statically_valid`` — the VM's validator accepts it against the tools;
* ``executable`` — it runs to ``final_answer`` in the VM, with scripted tool replies and a jump
  condition that always says yes (so no service is needed and every run is reproducible);
* ``tool_sequence_match`` — its sequence of tool calls equals the gold plan's;
* ``dataflow_similarity`` — Jaccard similarity of its data-flow edges (which kind of step feeds
  which) with the gold plan's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from planner.planner import parse_reply
from planner.prompt import build_prompt
from tools.registry import Tool, ToolRegistry
from vm.errors import LLMError, PlanError, PlanVMError
from vm.limits import Limits
from vm.llm import Completion, as_completion
from vm.machine import VM
from vm.plan import plan_json_schema
from vm.tooling import CallContext
from vm.validate import validate_plan

__all__ = ["EvalReport", "dataflow_edges", "evaluate", "scripted_registry", "tool_sequence"]

METRICS = ("parsed", "schema_valid", "statically_valid", "executable", "tool_sequence_match", "dataflow_similarity")


def tool_sequence(plan: list[dict[str, Any]]) -> list[str]:
    steps = sorted((s for s in plan if isinstance(s, dict) and isinstance(s.get("seq_no"), int)), key=lambda s: s["seq_no"])
    return [s["parameters"]["tool_name"] for s in steps if s.get("type") == "calling" and isinstance(s.get("parameters"), dict) and "tool_name" in s["parameters"]]


def dataflow_edges(plan: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(kind of writer, kind of reader) for every variable a step reads from an earlier step."""
    program, _problems = validate_plan(plan)
    if program is None:
        return set()
    edges = set()
    last_writer: dict[str, str] = {}
    for step in program.steps:
        kind = step.tool_name if step.type == "calling" else step.type  # type: ignore[union-attr]
        for name in step.reads:
            if name in last_writer:
                edges.add((last_writer[name], kind))
        for name in step.writes:
            last_writer[name] = kind
    return edges


def _jaccard(a: set[Any], b: set[Any]) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def scripted_registry() -> ToolRegistry:
    """The built-in tool names with fixed replies (fakes at the edge, for executability only)."""

    def vector_search(query: str, top_k: int = 10) -> list[dict[str, Any]]:
        return [{"content": f"A passage about {query}.", "source_uri": "eval://doc", "score": 1.0}][:top_k]

    def retrieve_knowledge_graph(query: str) -> dict[str, Any]:
        return {"entities": [{"name": query, "description": ""}], "relationships": []}

    def llm_generate(prompt: str, ctx: CallContext, context: Any = None) -> Any:
        if len(ctx.output_vars) > 1:
            return {name: f"{name} text" for name in ctx.output_vars}
        return f"An answer to: {prompt[:60]}"

    return ToolRegistry([Tool(vector_search), Tool(retrieve_knowledge_graph), Tool(llm_generate)])


class _AlwaysYes:
    def complete(self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None) -> Completion:
        return Completion('{"result": true, "explanation": "scripted for evaluation"}')


@dataclass
class EvalReport:
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        n = len(self.rows) or 1
        return {m: round(sum(float(r[m]) for r in self.rows) / n, 4) for m in METRICS}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary(), "rows": self.rows}


def score(plan: list[Any] | None, gold: list[dict[str, Any]], registry: Any) -> dict[str, Any]:
    result = {m: 0.0 for m in METRICS}
    if plan is None:
        return result
    result["parsed"] = 1.0
    try:
        jsonschema.validate(plan, plan_json_schema())
        result["schema_valid"] = 1.0
    except jsonschema.ValidationError:
        pass
    program, problems = validate_plan(plan, registry)
    if program is not None:
        result["statically_valid"] = 1.0
        run = VM(scripted_registry(), llm=_AlwaysYes(), limits=Limits(max_steps=100, max_seconds=10)).run(program)
        result["executable"] = 1.0 if run.ok else 0.0
    if all(isinstance(s, dict) for s in plan):
        result["tool_sequence_match"] = 1.0 if tool_sequence(plan) == tool_sequence(gold) else 0.0
        result["dataflow_similarity"] = round(_jaccard(dataflow_edges(plan), dataflow_edges(gold)), 4)
    return result


def evaluate(planner: Any, rows: list[Any], registry: Any, *, name: str, progress: Any = None) -> EvalReport:
    """Score ``planner`` (an LLM to prompt, or an object with ``plan(goal, metadata)``) on ``rows``."""
    from planner.planner import plan_schema_for

    report = EvalReport(name)
    for i, row in enumerate(rows):
        plan = reply = None
        if hasattr(planner, "plan"):
            try:
                plan = planner.plan(row.goal, row.metadata).plan
            except PlanVMError as exc:  # a planner that gives up counts as no plan
                reply = str(exc)
        else:
            kwargs = {"plan_schema": plan_schema_for(registry)} if getattr(planner, "supports_plan_schema", False) else {}
            try:
                completion = as_completion(planner.complete(build_prompt(row.goal, row.metadata, registry), **kwargs))
            except LLMError as exc:  # e.g. a token budget too small for the plan: no plan for this goal
                reply = str(exc)
            else:
                reply = (f"<think>{completion.reasoning}</think>" if completion.reasoning else "") + completion.text
                try:
                    _reasoning, plan = parse_reply(reply)
                except (ValueError, PlanError):
                    plan = None
        scores = score(plan, row.plan, registry)
        report.rows.append({"task_id": row.task_id, "goal": row.goal, **scores, "plan": plan, "reply": reply if plan is None else None})
        if progress:
            progress(i + 1, len(rows))
    return report


def write_report(reports: list[EvalReport], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump({r.name: r.to_dict() for r in reports}, f, indent=2, ensure_ascii=False, default=str)

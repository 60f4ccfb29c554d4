"""Training rows: loading, checking, normalising, and formatting with the planner's prompt builder.

A row is ``{task_id, goal, metadata, reasoning, best_plan, final_answer?}``; ``metadata`` and
``best_plan`` may be JSON strings (as in the original dataset), and ``plan`` is accepted for
``best_plan``. Rows come from a JSON file (an array), a JSONL file, or a ``datasets`` name or
folder. Every plan is checked by the VM's validator; a leading ``reasoning`` step is dropped
(the reasoning lives in the row's own field) and ``seq_no`` is renumbered from 0, jump targets
rewritten to match.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.prompt import build_prompt, format_completion, parse_metadata
from vm.errors import PlanError
from vm.plan import load_plan_data
from vm.validate import validate_plan

__all__ = ["DatasetError", "LoadReport", "Row", "load_rows", "normalise_plan", "to_sft_records"]

log = logging.getLogger("planvm.training")
REQUIRED = ("goal", "reasoning", "best_plan")


class DatasetError(ValueError):
    """A dataset that cannot be used (missing file, no usable rows, bad rows with --strict)."""


@dataclass(slots=True)
class Row:
    task_id: str
    goal: str
    metadata: dict[str, Any]
    reasoning: str
    plan: list[dict[str, Any]]
    final_answer: Any = None


@dataclass
class LoadReport:
    rows: list[Row] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (task_id, why)


def normalise_plan(plan: list[Any]) -> list[dict[str, Any]]:
    """Drop a leading ``reasoning`` step and renumber ``seq_no`` from 0, rewriting jump targets."""
    steps = sorted((dict(s) for s in plan), key=lambda s: s["seq_no"])
    if steps and steps[0].get("type") == "reasoning":
        steps = steps[1:]
    mapping = {s["seq_no"]: i for i, s in enumerate(steps)}
    out = []
    for i, step in enumerate(steps):
        step = {**step, "seq_no": i}
        if step.get("type") == "jmp":
            params = dict(step.get("parameters") or {})
            for key in ("target_seq", "jump_if_true", "jump_if_false"):
                if isinstance(params.get(key), int):
                    params[key] = mapping[params[key]]
            step["parameters"] = params
        out.append(step)
    return out


def _raw_rows(source: str | Path) -> list[dict[str, Any]]:
    path = Path(source)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            rows = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DatasetError(f"{path}, line {number}: not JSON ({exc.msg})") from None
            return rows
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not JSON ({exc.msg}, line {exc.lineno}); use a JSON array or JSONL") from None
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON array of rows")
        return data
    try:
        import datasets
    except ImportError as exc:
        raise DatasetError(f"{source}: no such file, and the datasets library is not installed to load it by name") from exc
    try:
        loaded = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.load_dataset(str(source))
    except Exception as exc:  # datasets raises many kinds; all mean "cannot load this"
        raise DatasetError(f"{source}: cannot load it as a file or a datasets name/folder ({exc})") from exc
    if isinstance(loaded, datasets.DatasetDict):
        loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
    return [dict(r) for r in loaded]


def _row(raw: Any, index: int, registry: Any) -> Row:
    if not isinstance(raw, dict):
        raise ValueError("a row must be a JSON object")
    if "best_plan" not in raw and "plan" in raw:
        raw = {**raw, "best_plan": raw["plan"]}
    missing = [k for k in REQUIRED if raw.get(k) in (None, "")]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    try:
        plan = load_plan_data(raw["best_plan"] if not isinstance(raw["best_plan"], str) else raw["best_plan"].strip())
    except PlanError as exc:
        raise ValueError(f"best_plan is not a plan ({exc})") from None
    if not all(isinstance(s, dict) and isinstance(s.get("seq_no"), int) for s in plan):
        raise ValueError("best_plan has instructions without an integer seq_no")
    plan = normalise_plan(plan)
    _program, problems = validate_plan(plan, registry)
    if problems:
        raise ValueError("invalid plan: " + "; ".join(str(p) for p in problems[:3]))
    return Row(
        task_id=str(raw.get("task_id") or f"row-{index}"),
        goal=str(raw["goal"]),
        metadata=parse_metadata(raw.get("metadata")),
        reasoning=str(raw["reasoning"]),
        plan=plan,
        final_answer=raw.get("final_answer"),
    )


def load_rows(source: str | Path, registry: Any = None, *, strict: bool = False) -> LoadReport:
    """Load and check rows; invalid ones are dropped and reported (``strict``: an error instead)."""
    if registry is None:
        from tools import default_registry

        registry = default_registry()
    report = LoadReport()
    raws = _raw_rows(source)
    for index, raw in enumerate(raws):
        try:
            report.rows.append(_row(raw, index, registry))
        except ValueError as exc:
            task = str(raw.get("task_id") if isinstance(raw, dict) and raw.get("task_id") else f"row-{index}")
            if strict:
                raise DatasetError(f"{source}: {task}: {exc}") from None
            report.dropped.append((task, str(exc)))
            log.warning("dropped %s: %s", task, exc)
    if not report.rows:
        raise DatasetError(f"{source}: no usable rows ({len(raws)} read, {len(report.dropped)} dropped)")
    return report


def to_sft_records(rows: list[Row], registry: Any) -> list[dict[str, Any]]:
    """Conversational prompt-completion records (the prompt the planner sends, the reply it should write)."""
    return [
        {
            "prompt": [{"role": "user", "content": build_prompt(r.goal, r.metadata, registry)}],
            "completion": [{"role": "assistant", "content": format_completion(r.reasoning, r.plan)}],
        }
        for r in rows
    ]

"""Making training rows from a knowledge base with a teacher model.

    planvm datagen --kb PATH --out rows.jsonl --max-rows 200

For each chunk of the knowledge base, the teacher LLM writes questions the chunk can answer; the
teacher planner writes a plan for each question; the plan runs in the VM with the real tools; a
row is kept only when the plan validates and the run completes. Rows are appended to ``out`` as
they are made (one JSON line each, flushed), finished chunks are listed in ``out`` + ``.done``,
and a rerun skips them, so a stopped run resumes where it left off.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vm.errors import PlanVMError
from vm.jsontext import extract_json
from vm.llm import as_completion

__all__ = ["DatagenReport", "generate_rows"]

log = logging.getLogger("planvm.training")

QUESTIONS_PROMPT = (
    "Here is a passage from a knowledge base.\n\n{passage}\n\n"
    "Write {n} different questions a user could ask that this passage answers. Each question must make "
    'sense on its own, without the passage. Reply with one JSON object: {{"questions": ["...", "..."]}}.'
)
QUESTIONS_SCHEMA = {
    "type": "object",
    "properties": {"questions": {"type": "array", "items": {"type": "string"}}},
    "required": ["questions"],
}


@dataclass
class DatagenReport:
    chunks_seen: int = 0
    chunks_skipped: int = 0
    questions: int = 0
    kept: int = 0
    rejected: int = 0


def _done_chunks(marker: Path) -> set[int]:
    if not marker.exists():
        return set()
    return {int(line) for line in marker.read_text(encoding="utf-8").split() if line.isdigit()}


def generate_rows(
    chunks: list[dict[str, Any]],
    teacher: Any,
    planner: Any,
    vm: Any,
    out: str | Path,
    *,
    questions_per_chunk: int = 2,
    max_rows: int = 100,
    progress: Callable[[int, int], None] | None = None,
) -> DatagenReport:
    """Append kept rows to ``out``; see the module docstring for the steps."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    marker = out.with_name(out.name + ".done")
    done = _done_chunks(marker)
    report = DatagenReport()
    kept_before = sum(1 for line in out.open(encoding="utf-8") if line.strip()) if out.exists() else 0
    with out.open("a", encoding="utf-8") as sink, marker.open("a", encoding="utf-8") as finished:
        for index, chunk in enumerate(chunks):
            if kept_before + report.kept >= max_rows:
                break
            if progress:
                progress(index + 1, len(chunks))
            if index in done:
                report.chunks_skipped += 1
                continue
            report.chunks_seen += 1
            try:
                reply = as_completion(teacher.complete(QUESTIONS_PROMPT.format(passage=chunk["content"], n=questions_per_chunk), json_schema=QUESTIONS_SCHEMA))
                questions = [q for q in extract_json(reply.text, (dict,)).get("questions", []) if isinstance(q, str) and q.strip()]
            except (ValueError, PlanVMError) as exc:
                log.warning("chunk %d: no questions (%s)", index, exc)
                questions = []
            for q_index, question in enumerate(questions[:questions_per_chunk]):
                report.questions += 1
                try:
                    planned = planner.plan(question)
                except PlanVMError as exc:
                    log.warning("chunk %d: no valid plan for %r (%s)", index, question, str(exc)[:100])
                    report.rejected += 1
                    continue
                result = vm.run(planned.program, goal=question)
                if not result.ok:
                    report.rejected += 1
                    continue
                row = {
                    "task_id": f"gen-{index:05d}-{q_index}",
                    "goal": question,
                    "metadata": {"source_uri": chunk.get("source_uri")},
                    "reasoning": planned.reasoning,
                    "best_plan": planned.plan,
                    "final_answer": result.final_answer,
                }
                sink.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                sink.flush()
                report.kept += 1
                if kept_before + report.kept >= max_rows:
                    break
            finished.write(f"{index}\n")
            finished.flush()
    return report

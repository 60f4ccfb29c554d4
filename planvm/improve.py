"""Turning runs into better plans and into training rows: plan search and the training export.

``optimize`` is a bounded best-first search over forks of a run: the most promising judged run is
expanded by re-planning it from the step the judge's notes point at (or its first retrieval step)
with the judge's suggestion, ``width`` branches a round, each branch run and judged; the search
stops when a run is accepted or ``rounds`` are spent, and marks the best run it saw.

``training_rows`` picks, per goal, the best-scoring completed run and writes it in the format
``planvm train`` reads, each row checked by the training loader itself.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vm.errors import BadInput, PlanVMError

__all__ = ["Branch", "SearchReport", "fork_point", "optimize", "training_rows", "write_rows"]


@dataclass(slots=True)
class Branch:
    run_id: str | None
    parent_id: str | None
    round: int
    from_seq: int | None
    status: str
    score: float | None = None
    accept: bool = False
    suggestion: str | None = None
    error: str | None = None


@dataclass
class SearchReport:
    root: str
    best: str
    best_score: float | None
    accepted: bool
    rounds: int
    branches: list[Branch] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root, "best": self.best, "best_score": self.best_score, "accepted": self.accepted, "rounds": self.rounds,
            "branches": [asdict(b) for b in self.branches], "tokens": self.tokens,
        }


def _failed_judgement(run: Any) -> dict[str, Any]:
    """What a run without an answer is worth to the search: nothing, and the error to fix."""
    failing = next((s for s in reversed(run.steps) if s.error), None)
    notes = [{"seq_no": failing.seq_no, "note": failing.error}] if failing is not None else []
    return {
        "score": 0.0, "accept": False, "step_notes": notes,
        "suggestion": f"The run did not reach a final answer ({run.error or run.status}); change the plan so that it does.",
    }


def fork_point(run: Any, judgement: dict[str, Any]) -> int:
    """Where to re-plan a run from: the earliest executed step the judge's notes name, else the
    first retrieval step, else the first step."""
    from tools.backends import RETRIEVAL_TOOLS

    executed = [s.seq_no for s in run.steps]
    if not executed:
        raise PlanVMError(f"run '{run.id}' executed no step, so there is nothing to fork from; run it again instead")
    noted = [n.get("seq_no") for n in judgement.get("step_notes") or () if isinstance(n, dict)]
    noted = [seq for seq in noted if seq in executed]
    if noted:
        return min(noted, key=executed.index)
    retrieval = [s.seq_no for s in run.steps if s.tool in RETRIEVAL_TOOLS]
    return retrieval[0] if retrieval else executed[0]


def _suggestion(judgement: dict[str, Any], branch: int, width: int) -> str:
    text = (judgement.get("suggestion") or "").strip() or "Improve the answer: make it complete and supported by what the plan retrieves."
    notes = [f"seq_no {n['seq_no']}: {n['note']}" for n in judgement.get("step_notes") or () if isinstance(n, dict) and "seq_no" in n]
    if notes:
        text += "\nThe grader's notes on the steps: " + "; ".join(notes)
    if width > 1:
        text += f"\n(This is alternative {branch + 1} of {width}; take a different approach from the other alternatives.)"
    return text


def _add_tokens(total: dict[str, int], prompt: Any, completion: Any) -> None:
    total["prompt_tokens"] += prompt if isinstance(prompt, int) else 0
    total["completion_tokens"] += completion if isinstance(completion, int) else 0


def optimize(engine: Any, run_id: str, *, rounds: int = 3, width: int = 2, progress: Any = None) -> SearchReport:
    """Search forks of ``run_id`` for an accepted answer (see the module's description)."""
    from planner.judge import JudgeError
    from vm.errors import PlanningError

    if rounds < 1:
        raise BadInput("--rounds must be at least 1 (each round re-plans, runs and judges --width branches)")
    if width < 1:
        raise BadInput("--width must be at least 1 (branches tried per round)")
    if not engine.has_model("planner") or not engine.has_model("judge"):
        raise BadInput("optimize needs a planner and a judge model: set PLANVM_LLM_BASE_URL and PLANVM_LLM_MODEL "
                         "(or the PLANVM_PLANNER_* and PLANVM_JUDGE_* settings)")
    store = engine._store()
    root = store.get(run_id)
    report = SearchReport(root=root.id, best=root.id, best_score=None, accepted=False, rounds=0)
    note = progress or (lambda _text: None)

    def grade(run: Any) -> dict[str, Any]:
        if run.status != "completed":
            return _failed_judgement(run)
        if run.judgement is not None:
            return run.judgement
        try:
            judgement = engine.judge(run.id)
        except JudgeError as exc:
            note(f"run {run.id}: {exc}")
            return {**_failed_judgement(run), "score": 0.0, "suggestion": "", "error": str(exc)}
        _add_tokens(report.tokens, judgement.get("prompt_tokens"), judgement.get("completion_tokens"))
        return judgement

    judgements = {root.id: grade(root)}
    report.best_score = judgements[root.id]["score"]
    report.accepted = bool(judgements[root.id]["accept"])
    frontier: list[tuple[float, int, str]] = [(-report.best_score, 0, root.id)]
    order = 1
    while report.rounds < rounds and not report.accepted and frontier:
        _neg, _order, node_id = heapq.heappop(frontier)
        report.rounds += 1
        node, judgement = store.get(node_id), judgements[node_id]
        from_seq = fork_point(node, judgement)
        note(f"round {report.rounds}: re-planning run {node_id} (score {judgement['score']}) from seq_no {from_seq}")
        for i in range(width):
            suggestion = _suggestion(judgement, i, width)
            branch = Branch(None, node_id, report.rounds, from_seq, "planning failed", suggestion=suggestion)
            report.branches.append(branch)
            try:
                replanned = engine.replan(node_id, from_seq, suggestion)
            except PlanningError as exc:
                branch.error = str(exc)
                for attempt in exc.attempts or ():
                    _add_tokens(report.tokens, attempt.prompt_tokens, attempt.completion_tokens)
                continue
            planning = {**replanned.record(), "suggestion": suggestion, "search_root": root.id}
            _add_tokens(report.tokens, planning["prompt_tokens"], planning["completion_tokens"])
            try:
                result = asyncio.run(engine.fork(node_id, from_seq, plan=replanned.plan, planning=planning))
            except PlanVMError as exc:  # e.g. a plan that changes a step the fork reuses: this branch only
                branch.status, branch.error = "fork failed", str(exc)
                continue
            child = store.get(result.run_id)
            inherited = next((k for k, s in enumerate(node.steps) if s.seq_no == from_seq), 0)
            for step in child.steps[inherited:]:
                for call in step.llm_calls:
                    _add_tokens(report.tokens, call.get("prompt_tokens"), call.get("completion_tokens"))
            verdict = grade(child)
            judgements[child.id] = verdict
            branch.run_id, branch.status, branch.error = child.id, child.status, child.error
            branch.score, branch.accept = verdict["score"], bool(verdict["accept"])
            note(f"  branch {child.id}: {child.status}, score {branch.score}{' (accepted)' if branch.accept else ''}")
            heapq.heappush(frontier, (-branch.score, order, child.id))
            order += 1
            if not report.accepted and (branch.accept or branch.score > (report.best_score or 0.0)):
                report.best, report.best_score, report.accepted = child.id, branch.score, branch.accept
            if report.accepted:
                break
    store.mark_best(report.best, root.id)
    return report


# --- the training export ---------------------------------------------------------------------------


def training_rows(
    store: Any, registry: Any, *, min_score: float | None = None, best_only: bool = False, since: float | None = None,
    include_unjudged: bool = False,
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """(rows, skipped): one row per goal — its best-scoring completed run — in the format the
    training loader reads, and the runs left out with why. Only runs that found their answer
    (an extractive answer that found nothing in the knowledge base teaches nothing), and only
    judged ones unless ``include_unjudged``. ``best_only``: only runs kept in the plan library or
    chosen by a plan search."""
    from planner.library import normalise_goal
    from planner.template import goal_language
    from planvm.engine.shapes import RunOutcome
    from training.data import _row

    runs = store.completed_runs(since)
    kept = {e.get("run_id") for e in store.library_entries(light=True)}
    skipped: list[tuple[str, str]] = []
    chosen = []
    for r in runs:
        if r["score"] is None and not include_unjudged and r["id"] not in kept and r["best_of"] is None:
            skipped.append((r["id"], "not judged (judge it with `planvm judge`, or pass --include-unjudged)"))
            continue
        if not ((min_score is None or (r["score"] is not None and r["score"] >= min_score))
                and (not best_only or r["id"] in kept or r["best_of"] is not None)):
            continue
        if RunOutcome.from_stored(store.get(r["id"])).answer_found is False:
            skipped.append((r["id"], "its answer was not found in the knowledge base (an extractive answer, no model)"))
            continue
        chosen.append(r)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in chosen:
        groups.setdefault((normalise_goal(run["goal"]), goal_language(run["goal"], run["metadata"])), []).append(run)
    rows: list[dict[str, Any]] = []
    for candidates in groups.values():
        candidates.sort(key=lambda r: (r["score"] if r["score"] is not None else -1.0, r["created_at"]), reverse=True)
        for run in candidates:
            row = {
                "task_id": run["id"],
                "goal": run["goal"],
                "metadata": run["metadata"] or {},
                "reasoning": (run["planning"] or {}).get("reasoning") or "",
                "best_plan": run["plan"],
                "final_answer": run["final_answer"],
            }
            try:
                _row(row, len(rows), registry)
            except ValueError as exc:
                skipped.append((run["id"], str(exc)))
                continue
            if run["score"] is not None:
                row["score"] = run["score"]
            rows.append(row)
            break
    return rows, skipped


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write JSONL rows whole or not at all (a temporary file renamed into place)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise

"""The plan library: best plans kept for their goals, reused outright or shown as examples.

``planvm runs best RUN_ID`` keeps a run's plan for its goal (in the run store, so every worker
and the service share it). When planning:

* **reuse** — a goal that matches a kept one *exactly* (same text once normalised: Unicode NFKC,
  case folded, runs of white space made one, trailing ``.?!`` and spaces dropped) or *nearly*
  (cosine similarity of the goals' embeddings at least :data:`NEAR_MATCH`, 0.95 by default),
  with the same response language and every tool the plan calls available, gets the kept plan
  without asking the planner; the run records it as a library hit;
* **examples** — otherwise the ``k`` most similar kept plans (by goal embedding, those under the
  same label path first) go into the planner's prompt as example plans.

Embeddings come from the knowledge base's embedding model (its ONNX export when there is one).
Without one (no model installed), only exact matches are reused and examples are chosen by the
words goals share.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vm.plan import load_plan_data

__all__ = ["NEAR_MATCH", "LibraryMatch", "PlanLibrary", "label_of", "normalise_goal", "plan_tools"]

#: Goals at least this similar (cosine of their embeddings) share a best plan. Measured with the
#: default embedding model against "What does the assign instruction do?": rewordings that keep its
#: content ("Explain what the assign instruction does.", "What does an assign instruction do?",
#: "what is the assign instruction for?") 0.97–0.99; narrower or other questions ("… do in a
#: plan?", "What does the assign step do?") 0.84–0.86; another instruction 0.54–0.63.
NEAR_MATCH = 0.95

_SPACE = re.compile(r"\s+")


def normalise_goal(goal: str) -> str:
    """The goal as exact matching compares it."""
    text = _SPACE.sub(" ", unicodedata.normalize("NFKC", goal).casefold()).strip()
    return text.rstrip(" .?!。？！").strip()


def plan_tools(plan: list[Any]) -> list[str]:
    """The tools a plan calls, sorted."""
    names = set()
    for ins in load_plan_data(plan):
        params = ins.get("parameters") if isinstance(ins, dict) else None
        if isinstance(ins, dict) and ins.get("type") == "calling" and isinstance(params, dict) and isinstance(params.get("tool_name"), str):
            names.add(params["tool_name"])
    return sorted(names)


def label_of(metadata: Any) -> str | None:
    """The label path a goal's metadata gives (``label_path``), as ``"A > B"``."""
    from planner.prompt import _get, _label_path, parse_metadata

    try:
        meta = parse_metadata(metadata)
    except ValueError:
        return None
    path = _get(meta, "label_path")
    if isinstance(path, str):
        return path.strip() or None
    return _label_path(path)


def _language(goal: str, metadata: Any) -> str:
    from planner.template import goal_language

    return goal_language(goal, metadata)


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", normalise_goal(text)))


@dataclass(slots=True)
class LibraryMatch:
    entry: dict[str, Any]
    match: str  # "exact" or "near"
    similarity: float

    def describe(self) -> dict[str, Any]:
        return {"entry": self.entry["id"], "run_id": self.entry.get("run_id"), "match": self.match, "similarity": round(self.similarity, 4)}


class PlanLibrary:
    """The best plans of a run store. ``embedder`` (called once, when first needed) gives an object
    with ``encode(texts)``; None (or a factory that fails) means text matching only."""

    def __init__(self, store: Any, embedder: Callable[[], Any] | None = None, *, near_match: float = NEAR_MATCH, examples: int = 3) -> None:
        self.store = store
        self._embedder_factory = embedder
        self._embedder: Any = None
        self.near_match = near_match
        self.k = examples

    def _embed(self, text: str) -> list[float] | None:
        if self._embedder is None and self._embedder_factory is not None:
            try:
                self._embedder = self._embedder_factory()
            except Exception:  # no embedding model here: exact matches and word overlap still work
                self._embedder_factory = None
        if self._embedder is None:
            return None
        vector = self._embedder.encode([text])[0]
        return [round(float(x), 6) for x in vector]

    # --- keeping --------------------------------------------------------------------------------

    def keep(self, run: Any, *, label: str | None = None) -> tuple[str, list[str]]:
        """Keep a stored run's plan as the best plan for its goal; returns (entry id, replaced ids).
        Raises ``ValueError`` for a run that has no goal or did not complete."""
        if not run.goal:
            raise ValueError(f"run '{run.id}' has no goal (it ran a plan file); only runs of a goal can be kept as best plans")
        if run.status != "completed":
            raise ValueError(f"run '{run.id}' is {run.status}; only a completed run's plan can be kept as a best plan")
        planning = run.planning or {}
        return self.store.library_put({
            "run_id": run.id,
            "goal": run.goal,
            "goal_key": normalise_goal(run.goal),
            "metadata": run.metadata,
            "language": _language(run.goal, run.metadata),
            "label": label or label_of(run.metadata),
            "tools": plan_tools(run.plan),
            "plan": run.plan,
            "reasoning": planning.get("reasoning"),
            "final_answer": run.final_answer,
            "score": run.score,
            "embedding": self._embed(run.goal),
        })

    # --- using ----------------------------------------------------------------------------------

    def _candidates(self, goal: str, metadata: Any, tools: set[str] | None) -> list[dict[str, Any]]:
        language = _language(goal, metadata)
        return [
            e for e in self.store.library_entries()
            if (e.get("language") or "English") == language and (tools is None or set(e.get("tools") or ()) <= tools)
        ]

    def lookup(self, goal: str, metadata: Any = None, tools: set[str] | None = None) -> LibraryMatch | None:
        """A kept plan to reuse for ``goal``: an exact match first, else the nearest at or above
        the near-match threshold. ``tools``: the tools available (None: any)."""
        candidates = self._candidates(goal, metadata, tools)
        if not candidates:
            return None
        key = normalise_goal(goal)
        exact = [e for e in candidates if e["goal_key"] == key]
        if exact:
            return LibraryMatch(exact[-1], "exact", 1.0)
        vector = self._embed(goal)
        if vector is None:
            return None
        scored = [(_cosine(vector, e["embedding"]), e) for e in candidates if e.get("embedding")]
        if not scored:
            return None
        similarity, best = max(scored, key=lambda pair: pair[0])
        return LibraryMatch(best, "near", similarity) if similarity >= self.near_match else None

    def examples(self, goal: str, metadata: Any = None, tools: set[str] | None = None) -> list[dict[str, Any]]:
        """The ``k`` kept plans most similar to ``goal`` (same label path first), as the
        planner's examples: ``{id, goal, plan, similarity}``."""
        candidates = [e for e in self.store.library_entries() if tools is None or set(e.get("tools") or ()) <= tools]
        if not candidates or self.k <= 0:
            return []
        label = label_of(metadata)
        vector = self._embed(goal)
        words = _words(goal)

        def similarity(entry: dict[str, Any]) -> float:
            if vector is not None and entry.get("embedding"):
                return _cosine(vector, entry["embedding"])
            other = _words(entry["goal"])
            return len(words & other) / len(words | other) if words | other else 0.0

        ranked = sorted(
            ((similarity(e), e) for e in candidates),
            key=lambda pair: (label is not None and pair[1].get("label") == label, pair[0]),
            reverse=True,
        )
        return [{"id": e["id"], "goal": e["goal"], "plan": e["plan"], "similarity": round(s, 4)} for s, e in ranked[: self.k]]

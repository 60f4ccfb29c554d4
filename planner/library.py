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

import logging
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vm.errors import BackendUnavailable, BadInput
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


def _overlap(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


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
        self._cache: tuple[Any, list[dict[str, Any]], Any] | None = None  # (signature, entries, embedding matrix)
        self._last: tuple[str, list[float] | None] | None = None  # the last goal embedded (lookup, then examples)

    @classmethod
    def for_settings(cls, store: Any, settings: Any) -> PlanLibrary:
        """The library of ``store``, embedding goals with the knowledge base's model (``settings``)."""
        from tools.backends import query_embedder

        return cls(store, lambda: query_embedder(settings))

    def _full(self, light: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The whole entries (plans included) of entries read light, in the same order."""
        by_id = {e["id"]: e for e in self.store.library_entries(ids=[e["id"] for e in light])}
        return [by_id[e["id"]] for e in light if e["id"] in by_id]

    def _loaded(self) -> tuple[list[dict[str, Any]], Any]:
        signature = self.store.library_signature()
        if self._cache is None or self._cache[0] != signature:
            entries = self.store.library_entries(light=True) if signature[0] else []
            matrix = None
            try:
                import numpy as np
            except ImportError:  # no numpy: similarities are computed one by one
                pass
            else:
                dims = {len(e["embedding"]) for e in entries if e.get("embedding")}
                if len(dims) == 1:
                    (dim,) = dims
                    matrix = np.zeros((len(entries), dim), dtype=np.float32)
                    for i, e in enumerate(entries):
                        if e.get("embedding"):
                            v = np.asarray(e["embedding"], dtype=np.float32)
                            matrix[i] = v / (np.linalg.norm(v) or 1.0)
            self._cache = (signature, entries, matrix)
        return self._cache[1], self._cache[2]

    def _similarities(self, vector: list[float] | None, entries: list[dict[str, Any]], matrix: Any, goal: str) -> list[float]:
        """Cosine similarity of ``vector`` to each entry's goal (0 where an entry has no
        embedding); word overlap of the goals when there is no vector."""
        if vector is None:
            words = _words(goal)
            return [_overlap(words, _words(e["goal"])) for e in entries]
        if matrix is not None and len(vector) == matrix.shape[1]:
            import numpy as np

            v = np.asarray(vector, dtype=np.float32)
            return [float(x) for x in matrix @ (v / (np.linalg.norm(v) or 1.0))]
        return [_cosine(vector, e["embedding"]) if e.get("embedding") else 0.0 for e in entries]

    def _embed(self, text: str) -> list[float] | None:
        if self._last is not None and self._last[0] == text:
            return self._last[1]
        if self._embedder is None and self._embedder_factory is not None:
            try:
                self._embedder = self._embedder_factory()
            except (ImportError, OSError, BackendUnavailable) as exc:
                # No embedding model here: exact matches and word overlap still work.
                logging.getLogger("planvm.library").info("plan library: no embedding model (%s); matching goals by words", exc)
                self._embedder_factory = None
            except Exception:
                logging.getLogger("planvm.library").exception("plan library: the embedding model failed to load; matching goals by words")
                self._embedder_factory = None
        if self._embedder is None:
            return None
        vector = [float(x) for x in self._embedder.encode([text])[0]]
        self._last = (text, vector)
        return vector

    # --- keeping --------------------------------------------------------------------------------

    def keep(self, run: Any, *, label: str | None = None) -> tuple[str, list[str]]:
        """Keep a stored run's plan as the best plan for its goal; returns (entry id, replaced ids).
        Raises ``ValueError`` for a run that has no goal or did not complete."""
        if not run.goal:
            raise BadInput(f"run '{run.id}' has no goal (it ran a plan file); only runs of a goal can be kept as best plans")
        if run.status != "completed":
            raise BadInput(f"run '{run.id}' is {run.status}; only a completed run's plan can be kept as a best plan")
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

    def _usable(self, entry: dict[str, Any], tools: set[str] | None) -> bool:
        return tools is None or set(entry.get("tools") or ()) <= tools

    def lookup(self, goal: str, metadata: Any = None, tools: set[str] | None = None) -> LibraryMatch | None:
        """A kept plan to reuse for ``goal``: an exact match first, else the nearest at or above
        the near-match threshold, in the same response language, calling only ``tools`` (None: any)."""
        language = _language(goal, metadata)

        def fits(entry: dict[str, Any]) -> bool:
            return (entry.get("language") or "English") == language and self._usable(entry, tools)

        # An exact match needs only the rows of that goal, not the whole library.
        exact = [e for e in self.store.library_entries(goal_key=normalise_goal(goal)) if fits(e)]
        if exact:
            return LibraryMatch(exact[-1], "exact", 1.0)
        entries, matrix = self._loaded()
        usable = [i for i, e in enumerate(entries) if fits(e)]
        if not usable:
            return None
        vector = self._embed(goal)
        if vector is None:
            return None
        similarities = self._similarities(vector, entries, matrix, goal)
        best = max(usable, key=lambda i: similarities[i])
        if similarities[best] < self.near_match:
            return None
        full = self._full([entries[best]])
        return LibraryMatch(full[0], "near", similarities[best]) if full else None

    def examples(self, goal: str, metadata: Any = None, tools: set[str] | None = None) -> list[dict[str, Any]]:
        """The ``k`` kept plans most similar to ``goal`` (same label path first), as the
        planner's examples: ``{id, goal, plan, similarity}``."""
        entries, matrix = self._loaded()
        usable = [i for i, e in enumerate(entries) if self._usable(e, tools)]
        if not usable or self.k <= 0:
            return []
        label = label_of(metadata)
        similarities = self._similarities(self._embed(goal), entries, matrix, goal)
        ranked = sorted(usable, key=lambda i: (label is not None and entries[i].get("label") == label, similarities[i]), reverse=True)
        chosen = ranked[: self.k]
        plans = {e["id"]: e["plan"] for e in self._full([entries[i] for i in chosen])}
        return [
            {"id": entries[i]["id"], "goal": entries[i]["goal"], "plan": plans[entries[i]["id"]], "similarity": round(similarities[i], 4)}
            for i in chosen if entries[i]["id"] in plans
        ]

"""The ``extractive`` backend: the honest offline baseline used when no LLM is configured.

It is not a model. ``llm_generate`` answers with the sentences of its context that are most
similar to the prompt (by the knowledge base's embeddings), each followed by its source. Anything
that needs judgement — a ``jmp`` condition, a structured reply, planning — fails with a message
naming the settings to configure a real LLM.
"""

from __future__ import annotations

import json
import re
from typing import Any

from vm.errors import LLMError
from vm.llm import Completion

__all__ = ["NO_MODEL_NOTICE", "ExtractiveBackend"]

NO_MODEL_NOTICE = (
    "no LLM is configured, so answers are extracted from the retrieved text (the extractive baseline); "
    "set PLANVM_LLM_BASE_URL and PLANVM_LLM_MODEL for an OpenAI-compatible endpoint, or PLANVM_LOCAL_MODEL "
    "for a local model"
)
_SENTENCE = re.compile(r"[^\n]+?(?:[.!?](?=\s|$)|$)", re.MULTILINE)  # "PLAN.json" is not a sentence end


def _passages(context: Any, source: str = "") -> list[tuple[str, str, float]]:
    """(text, source, retrieval score) from a context: retrieved chunks keep their source and score."""
    if context is None:
        return []
    if isinstance(context, str):
        stripped = context.strip()
        if stripped[:1] in "[{":
            try:
                return _passages(json.loads(stripped), source)
            except json.JSONDecodeError:
                pass
        return [(context, source, 0.0)]
    if isinstance(context, dict):
        if isinstance(context.get("content"), str):
            score = context.get("score")
            return [(context["content"], str(context.get("source_uri") or source), float(score) if isinstance(score, (int, float)) else 0.0)]
        if isinstance(context.get("relationship"), str):
            return [(context["relationship"], source or "knowledge graph", 0.0)]
        out: list[tuple[str, str, float]] = []
        for key, value in context.items():
            if key not in ("name", "score", "source_uri", "source_entity", "target_entity"):
                out.extend(_passages(value, source))
        return out
    if isinstance(context, list):
        return [p for item in context for p in _passages(item, source)]
    return []


class ExtractiveBackend:
    """Extracts answers from context; ``embedder`` ranks the sentences (a ``tools.kb.Embedder``)."""

    name = "extractive"

    def __init__(self, embedder: Any = None, *, sentences: int = 3) -> None:
        self.embedder = embedder
        self.sentences = sentences

    def complete(self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None) -> Completion:
        raise LLMError(f"this step needs a language model: {NO_MODEL_NOTICE}")

    def extract(self, prompt: str, context: Any, keys: tuple[str, ...] = ()) -> Any:
        """The answer to ``prompt`` from ``context``: text, or one entry per key of ``keys``."""
        candidates: list[tuple[str, str, float]] = []
        seen: set[str] = set()
        for text, source, score in _passages(context):
            text = re.sub(r"(?<!\n)\n(?!\n)", " ", text)  # a line break inside a paragraph ends no sentence
            for sentence in _SENTENCE.findall(text):
                sentence = " ".join(sentence.split()).strip("#*- ")
                if len(sentence) > 15 and sentence not in seen:
                    seen.add(sentence)
                    candidates.append((sentence, source, score))
        if not candidates:
            raise LLMError(f"llm_generate got no context to extract an answer from; {NO_MODEL_NOTICE}")
        if len(keys) > 1:
            return {key: self._best(f"{prompt} {key.replace('_', ' ')}", candidates) for key in keys}
        return self._best(prompt, candidates)

    def _best(self, query: str, candidates: list[tuple[str, str, float]]) -> str:
        import numpy as np

        from tools.kb.embedding import Embedder

        embedder = self.embedder or Embedder()
        vectors = embedder.encode([c[0] for c in candidates])
        # Similarity to the closest line of the prompt (an instruction line and the question line
        # are judged apart), plus half the retrieval score of the chunk the sentence came from.
        lines = [ln.strip() for ln in query.splitlines() if ln.strip()][:6] or [query]
        queries = embedder.encode(lines)
        scores = (vectors @ queries.T).max(axis=1) + 0.5 * np.array([c[2] for c in candidates], dtype=np.float32)
        order = sorted(range(len(candidates)), key=lambda i: -float(scores[i]))[: self.sentences]
        order.sort()  # keep the context's own order for readability
        return " ".join(f"{candidates[i][0]} [{candidates[i][1]}]" if candidates[i][1] else candidates[i][0] for i in order)

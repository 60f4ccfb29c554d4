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

from vm.errors import LLMError, LLMNotConfigured
from vm.llm import Completion

__all__ = ["NOT_FOUND", "NO_MODEL_NOTICE", "RELEVANCE_THRESHOLD", "ExtractiveBackend"]

#: The answer when no sentence of the context is close enough to the question.
NOT_FOUND = "The knowledge base does not contain an answer to this question."
#: Cosine similarity (all-MiniLM-L6-v2) a sentence must reach with a line of the prompt to be
#: an answer; below it, for every sentence, the answer is NOT_FOUND. Measured on examples/kb:
#: questions it answers score 0.43-0.72, unrelated ones (capitals, sports, recipes) 0.09-0.17.
#: Sentences more than RELEVANCE_MARGIN below the best one are left out as well.
RELEVANCE_THRESHOLD = 0.3
RELEVANCE_MARGIN = 0.2
_HEADING_LINE = re.compile(r"^\s{0,3}#{1,6}\s.*$|^\s*(?:=+|-+)\s*$", re.MULTILINE)

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


def _question_lines(prompt: str) -> list[str]:
    """The lines of a prompt that ask something: its ``Goal:`` lines (as planvm's planners write
    them), else its lines with a question mark, else its first lines. Instruction lines such as
    "answer from the context" would match any document, so they do not count."""
    lines = [ln.strip() for ln in prompt.splitlines() if ln.strip()] or [prompt]
    goals = [ln[5:].strip() for ln in lines if ln.lower().startswith("goal:") and ln[5:].strip()]
    if goals:
        return goals[:6]
    questions = [ln for ln in lines if "?" in ln or "？" in ln]
    return (questions or lines)[:6]


class ExtractiveBackend:
    """Extracts answers from context; ``embedder`` ranks the sentences (a ``tools.kb.Embedder``)."""

    name = "extractive"

    def __init__(self, embedder: Any = None, *, sentences: int = 3) -> None:
        self.embedder = embedder
        self.sentences = sentences

    def complete(self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None) -> Completion:
        raise LLMNotConfigured(
            "no LLM is configured (answers are only extracted from text); set PLANVM_LLM_BASE_URL and "
            "PLANVM_LLM_MODEL for an OpenAI-compatible endpoint, or PLANVM_LOCAL_MODEL for a local model"
        )

    def extract(self, prompt: str, context: Any, keys: tuple[str, ...] = ()) -> Any:
        """The answer to ``prompt`` from ``context``: text, or one entry per key of ``keys``.

        Only sentences similar enough to the prompt (``RELEVANCE_THRESHOLD``) can answer; when
        none is, the answer is :data:`NOT_FOUND`. With several keys, each key is answered by the
        sentences closest to its own name (read as words) and the prompt, each sentence used once.
        """
        answer, _found = self.extract_found(prompt, context, keys)
        return answer

    def extract_found(self, prompt: str, context: Any, keys: tuple[str, ...] = ()) -> tuple[Any, bool]:
        """:meth:`extract`, and whether the context held an answer."""
        import numpy as np

        from tools.kb.embedding import Embedder

        candidates: list[tuple[str, str, float]] = []
        seen: set[str] = set()
        for text, source, score in _passages(context):
            text = _HEADING_LINE.sub("", text)  # headings name a section; they answer nothing
            text = re.sub(r"(?<!\n)\n(?!\n)", " ", text)  # a line break inside a paragraph ends no sentence
            for sentence in _SENTENCE.findall(text):
                sentence = " ".join(sentence.split()).strip("*- ")
                if len(sentence) > 15 and " " in sentence and sentence not in seen:
                    seen.add(sentence)
                    candidates.append((sentence, source, score))
        if not candidates:
            raise LLMError(f"llm_generate got no context to extract an answer from; {NO_MODEL_NOTICE}")
        embedder = self.embedder or Embedder()
        vectors = embedder.encode([c[0] for c in candidates])
        # Similarity to the closest line of the prompt (an instruction line and the question line
        # are judged apart); the retrieval score of the sentence's chunk breaks near-ties.
        lines = _question_lines(prompt)
        # With several keys, each key's name is part of the question too.
        key_phrases = [key.replace("_", " ") for key in keys] if len(keys) > 1 else []
        asked = embedder.encode(lines + key_phrases)
        relevance = (vectors @ asked.T).max(axis=1)
        retrieval = np.array([c[2] for c in candidates], dtype=np.float32)
        relevant = relevance >= max(RELEVANCE_THRESHOLD, float(relevance.max()) - RELEVANCE_MARGIN)
        if float(relevance.max()) < RELEVANCE_THRESHOLD:
            return ({key: NOT_FOUND for key in keys} if len(keys) > 1 else NOT_FOUND), False
        if len(keys) <= 1:
            return self._pick(candidates, relevance + 0.25 * retrieval, relevant, self.sentences), True
        key_vectors = asked[len(lines) :]
        answers: dict[str, str] = {}
        used = np.zeros(len(candidates), dtype=bool)
        for key, key_vector in zip(keys, key_vectors, strict=True):
            own = vectors @ key_vector
            usable = relevant & ~used
            if not usable.any():
                usable = relevant
            scores = own + 0.5 * relevance + 0.25 * retrieval
            answers[key] = self._pick(candidates, scores, usable, 1)
            used[int(np.argmax(np.where(usable, scores, -np.inf)))] = True
        return answers, True

    @staticmethod
    def _pick(candidates: list[tuple[str, str, float]], scores: Any, usable: Any, count: int) -> str:
        order = [i for i in sorted(range(len(candidates)), key=lambda i: -float(scores[i])) if usable[i]][:count]
        order.sort()  # keep the context's own order for readability
        return " ".join(f"{candidates[i][0]} [{candidates[i][1]}]" if candidates[i][1] else candidates[i][0] for i in order)

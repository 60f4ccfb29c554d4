"""The ``extractive`` backend: the honest offline baseline used when no LLM is configured.

It is not a model that writes. ``llm_generate`` answers with the evidence: the passage of the
retrieved documents that answers the question (a paragraph, list item, note or table, with the
code block its sentence introduces), followed by its source page and heading, or
:data:`NOT_FOUND` when no passage answers. Whether a passage answers is decided by a learnt model
(:mod:`tools.kb.evidence`, trained by ``python -m training.answer_model`` on questions generated
from documents no evaluation uses). The embedding model reads English (the bundled
all-MiniLM-L6-v2); other languages need a multilingual ``embedding_model``. Anything that needs
judgement — a ``jmp`` condition, a structured reply, planning — fails with a message naming the
settings to configure a real LLM.
"""

from __future__ import annotations

import json
from typing import Any

from vm.errors import LLMError, LLMNotConfigured
from vm.llm import Completion

__all__ = ["NOT_FOUND", "NO_MODEL_NOTICE", "ExtractiveBackend"]

#: The answer when no passage of the context answers the question.
NOT_FOUND = "The knowledge base does not contain an answer to this question."
#: The answer is the best passage and the other retrieved passages of its section (same page and
#: heading), in the order they were retrieved, up to this many in all: a section often states a
#: problem in one passage and solves it in the next.
SECTION_PASSAGES = 4
#: ... and up to about this many characters (the best passage is always whole).
SECTION_CHARS = 2400

NO_MODEL_NOTICE = (
    "no LLM is configured, so answers are extracted from the retrieved text (the extractive baseline); "
    "set PLANVM_LLM_BASE_URL and PLANVM_LLM_MODEL for an OpenAI-compatible endpoint, or PLANVM_LOCAL_MODEL "
    "for a local model"
)
def _hits(context: Any, found: list[dict[str, Any]], graph: list[dict[str, Any]]) -> None:
    """Retrieved chunks (``{content, source_uri, heading?, score?}``) into ``found``, knowledge-graph
    relationships into ``graph``, text as a chunk with no source."""
    if context is None:
        return
    if isinstance(context, str):
        stripped = context.strip()
        if stripped[:1] in "[{":
            try:
                _hits(json.loads(stripped), found, graph)
                return
            except json.JSONDecodeError:
                pass
        if stripped:
            found.append({"content": context, "source_uri": "", "score": 0.0})
        return
    if isinstance(context, dict):
        if isinstance(context.get("content"), str):
            found.append(context)
        elif isinstance(context.get("relationship"), str):
            graph.append({"content": context["relationship"], "source_uri": "knowledge graph", "score": 0.0})
        elif isinstance(context.get("name"), str) and isinstance(context.get("description"), str):
            graph.append({"content": context["description"], "source_uri": "knowledge graph", "score": 0.0})  # an entity
        else:
            for key, value in context.items():
                if key not in ("name", "score", "source_uri", "source_entity", "target_entity"):
                    _hits(value, found, graph)
        return
    if isinstance(context, list):
        for item in context:
            _hits(item, found, graph)


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


def _asks(prompt: str) -> bool:
    """Whether a prompt asks a question: it has a ``Goal:`` line (as planvm's planners write) or a question mark."""
    return any(line.strip().lower().startswith("goal:") for line in prompt.splitlines()) or "?" in prompt or "？" in prompt


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
        from tools.kb.evidence import AnswerModel, absent_of, answer_probabilities, passages_of

        hits: list[dict[str, Any]] = []
        graph: list[dict[str, Any]] = []
        _hits(context, hits, graph)
        passages = passages_of(hits or graph)  # the graph's sentences only when no document was retrieved
        if not passages:
            raise LLMError(f"llm_generate got no context to extract an answer from; {NO_MODEL_NOTICE}")
        embedder = self.embedder or Embedder()
        model = AnswerModel()
        question = " ".join(_question_lines(prompt))
        absent = absent_of(hits)
        if len(keys) > 1:
            return self._per_key(question, keys, passages, embedder, model, asks=_asks(prompt), absent=absent)
        p, threshold = answer_probabilities(question, passages, embedder, model, absent)
        best = int(np.argmax(p))
        if p[best] < threshold and _asks(prompt):  # an instruction is answered with its closest passage
            return NOT_FOUND, False
        return _cite([passages[i] for i in _section(passages, best)], passages[best]), True

    def _per_key(self, question: str, keys: tuple[str, ...], passages: list[Any], embedder: Any, model: Any,
                 asks: bool = True, absent: list[str] | None = None) -> tuple[Any, bool]:
        """Each key answered by the passage that best answers its own name (read as words) with the
        question, each passage used once; nothing when no passage answers a question for any of
        them (an instruction, ``asks`` False, is answered with the closest passages, as one key's is)."""
        import numpy as np

        from tools.kb.evidence import answer_probabilities

        scored = [answer_probabilities(f"{key.replace('_', ' ')} {question}", passages, embedder, model, absent) for key in keys]
        scores = [s for s, _ in scored]
        if max(float(s.max()) for s in scores) < scored[0][1] and asks:
            return {key: NOT_FOUND for key in keys}, False
        used: set[int] = set()
        answers: dict[str, str] = {}
        for key, p in zip(keys, scores, strict=True):
            order = [int(i) for i in np.argsort(-p) if int(i) not in used] or [int(np.argmax(p))]
            used.add(order[0])
            answers[key] = _cite([passages[order[0]]])
        return answers, True


def _section(passages: list[Any], best: int) -> list[int]:
    """``best`` and the other passages of its page and section (its subsections included: a
    problem stated in a section, its fix under a heading of its own below), in retrieval order,
    within :data:`SECTION_PASSAGES` and :data:`SECTION_CHARS`."""
    chosen = [best]
    size = len(passages[best].text)
    heading = passages[best].heading
    for i, passage in enumerate(passages):
        if len(chosen) >= SECTION_PASSAGES:
            break
        within = passage.heading == heading or (heading and passage.heading.startswith(f"{heading} > "))
        if i == best or passage.source != passages[best].source or not within:
            continue
        if size + len(passage.text) > SECTION_CHARS:
            continue
        chosen.append(i)
        size += len(passage.text)
    return sorted(chosen)


def _cite(passages: list[Any], best: Any = None) -> str:
    """The passages (of one page and section, or its subsections), then ``[source > section]``:
    the section of ``best``, the passage that answers (the first one when not given)."""
    named = best if best is not None else passages[0]
    section = named.heading.split(" > ")[-1] if named.heading else ""
    where = " > ".join(part for part in (named.source, section) if part)
    text = "\n\n".join(passage.text for passage in passages)
    return f"{text} [{where}]" if where else text

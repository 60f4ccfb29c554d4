"""Which retrieved passage answers a question: passages, their features, and a learned model.

A retrieved chunk is cut into *passages* with :func:`tools.kb.markdown.units` (a paragraph, a
list item or note, a table, a code block with the sentence that introduces it). Each passage is
described by the features of :data:`FEATURES` (embedding similarity to the question, how much of
the question's content words it and its heading hold, whether the question's words are in the
retrieved text at all, its retrieval rank, whether it has the code or number the question asks
for, ...) and scored by a logistic regression whose weights are in ``answer_model.json``, learnt
by ``python -m training.answer_model`` from questions generated from documents that are not used
to measure it (see that module). A passage answers when its probability reaches the model's
threshold.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.kb.markdown import plain_inline, units

__all__ = ["FEATURES", "MODEL_FILE", "AnswerModel", "Passage", "absent_of", "answer_probabilities", "featurize", "passages_of",
           "terms", "words"]

MODEL_FILE = Path(__file__).with_name("answer_model.json")
FEATURES = (
    "cosine", "cosine_gap", "heading_cosine", "coverage", "coverage_gap", "heading_coverage", "missing", "coverage_with_heading",
    "bigrams", "retrieval", "first_chunk", "rank", "code_asked", "code", "number_asked", "short", "long", "note",
    "absent", "absent_name",
)
_WORD = re.compile(r"[A-Za-z0-9][\w$]*(?:[-_./:][\w$]+)*")
_SUFFIXES = ("ings", "ing", "ies", "ied", "ed", "es", "s", "ly")
_HEADING_LINE = re.compile(r" {0,3}#{1,6}\s+(.+?)\s*#*\s*(?:\n|$)")
_NUMBER = re.compile(r"\b\d[\d,.]*\s*(?:%|[a-zA-Z]{1,7}\b)?")
_HOW_TO = re.compile(r"^\s*(how (do|can|should|to)|which (command|flag|option|field|annotation|file|setting)|what command)\b", re.I)
_HOW_MUCH = re.compile(r"\b(how (many|much|long|often)|what (is the )?(default|version|size|port|limit|timeout|maximum|minimum)|when)\b", re.I)


@dataclass(slots=True)
class Passage:
    text: str  # Markdown, as in the document
    source: str
    heading: str
    chunk_rank: int  # 0 for the best retrieved chunk
    retrieval: float  # the chunk's retrieval score


def passages_of(hits: list[dict[str, Any]]) -> list[Passage]:
    """The passages of retrieved chunks (``{content, source_uri, heading?, score?}``), in order,
    each once; a heading line alone is no passage."""
    out: list[Passage] = []
    seen: set[str] = set()
    for rank, hit in enumerate(hits):
        text = str(hit.get("content") or "")
        score = hit.get("score")
        for unit in units(text):
            body = text[unit.start : unit.end].strip()
            heading = str(hit.get("heading") or "")
            while (line := _HEADING_LINE.match(body)) is not None:  # a heading names the passage, it is not its text
                name = plain_inline(line.group(1))  # as the index writes section headings
                heading = heading if heading.endswith(name) else (f"{heading} > {name}" if heading else name)
                body = body[line.end() :].strip()
            if unit.kind == "heading" or len(body) < 12:
                continue
            key = " ".join(body.split())
            if key in seen:
                continue
            seen.add(key)
            out.append(Passage(body, str(hit.get("source_uri") or ""), heading, rank,
                               float(score) if isinstance(score, (int, float)) else 0.0))
    return out


def _stem(word: str) -> str:
    """A crude stem: "continues", "continued" and "continue" are all "continu"."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 4 else word


@functools.lru_cache(maxsize=1)
def _model_data() -> dict[str, Any]:
    return json.loads(MODEL_FILE.read_text(encoding="utf-8"))


def stop_words() -> frozenset[str]:
    """English function words (from the model file; the trainer takes scikit-learn's list)."""
    return frozenset(_model_data()["stop_words"])


def terms(text: str, stop: frozenset[str] | None = None) -> list[str]:
    """Content words, lower case and stemmed; an identifier counts as itself and as its parts."""
    stop = stop_words() if stop is None else stop
    found = []
    for match in _WORD.finditer(text):
        word = match.group(0).lower().strip("./:-")
        parts = [word, *re.split(r"[-_./:]", word)] if re.search(r"[-_./:]", word) else [word]
        found.extend(_stem(p) for p in parts if p and p not in stop and len(p) > 1)
    return found


def words(text: str) -> list[str]:
    """The words of a text as written (identifiers whole)."""
    return [m.group(0).strip("./:-") for m in _WORD.finditer(text)]


def _is_name(word: str, question: str) -> bool:
    """Whether a word reads as a name: capitalised inside the question, mixed case, or with a digit."""
    if any(c.isdigit() for c in word) or any(c.isupper() for c in word[1:]):
        return True
    return word[:1].isupper() and not question.lstrip().startswith(word)


def absent_of(hits: list[dict[str, Any]]) -> list[str]:
    """The query words that the knowledge base searched holds nowhere (its hits' ``absent``)."""
    for hit in hits:
        if isinstance(hit, dict) and isinstance(hit.get("absent"), list):
            return [str(w) for w in hit["absent"]]
    return []


def _plain(text: str) -> str:
    return re.sub(r"[`*_>#|]", " ", text)


def featurize(question: str, passages: list[Passage], embedder: Any, stop: frozenset[str] | None = None,
              absent: list[str] | None = None) -> Any:
    """float32 array ``[len(passages), len(FEATURES)]``; ``absent``: the question's words that the
    whole knowledge base holds nowhere (from the search, :func:`absent_of`)."""
    import numpy as np

    stop = stop_words() if stop is None else stop
    n = len(passages)
    if n == 0:
        return np.zeros((0, len(FEATURES)), dtype=np.float32)
    headings = sorted({p.heading for p in passages if p.heading})
    texts = [f"{p.heading}\n\n{p.text}" if p.heading else p.text for p in passages]
    vectors = embedder.encode([question, *texts, *headings])
    q = vectors[0]
    cos = vectors[1 : n + 1] @ q
    heading_cos = dict(zip(headings, (vectors[n + 1 :] @ q).tolist(), strict=True))
    asked = list(dict.fromkeys(terms(question, stop)))
    held = [set(terms(_plain(p.text), stop)) for p in passages]
    in_heading = [set(terms(p.heading, stop)) for p in passages]
    df = [sum(t in h or t in g for h, g in zip(held, in_heading, strict=True)) for t in asked]
    weights = [math.log((n + 1) / (d + 0.5)) + 0.1 for d in df]
    total = sum(weights) or 1.0
    bigrams = list(zip(asked, asked[1:], strict=False))
    code_asked = 1.0 if _HOW_TO.search(question) else 0.0
    number_asked = 1.0 if _HOW_MUCH.search(question) else 0.0
    rows = []
    for i, p in enumerate(passages):
        covered = sum(w for t, w in zip(asked, weights, strict=True) if t in held[i])
        with_heading = sum(w for t, w in zip(asked, weights, strict=True) if t in held[i] or t in in_heading[i])
        heading_only = sum(w for t, w in zip(asked, weights, strict=True) if t in in_heading[i])
        words = _plain(p.text).lower()
        stems = terms(words, stop)
        pairs = set(zip(stems, stems[1:], strict=False))
        rows.append([
            float(cos[i]), 0.0, heading_cos.get(p.heading, 0.0), covered / total, 0.0, heading_only / total,
            0.0, with_heading / total, (sum(b in pairs for b in bigrams) / len(bigrams)) if bigrams else 0.0, p.retrieval,
            1.0 if p.chunk_rank == 0 else 0.0, 1.0 / (1 + p.chunk_rank),
            code_asked * (1.0 if "```" in p.text or "`" in p.text else 0.0), 1.0 if "```" in p.text else 0.0,
            number_asked * (1.0 if _NUMBER.search(p.text) else 0.0), 1.0 if len(stems) < 6 else 0.0,
            min(len(stems), 200) / 200.0, 1.0 if p.text.lstrip().startswith(">") else 0.0, 0.0, 0.0,
        ])
    x = np.asarray(rows, dtype=np.float32)
    gone = [w for w in (absent or []) if terms(w, stop)]
    x[:, FEATURES.index("absent")] = min(len(gone), 3) / 3.0
    x[:, FEATURES.index("absent_name")] = 1.0 if any(_is_name(w, question) for w in gone) else 0.0
    missing = sum(w for t, w, d in zip(asked, weights, df, strict=True) if d == 0) / total if asked else 0.0
    x[:, FEATURES.index("missing")] = missing
    x[:, FEATURES.index("cosine_gap")] = x[:, 0] - x[:, 0].max()
    whole = x[:, FEATURES.index("coverage_with_heading")]
    x[:, FEATURES.index("coverage_gap")] = whole - whole.max()
    return x


class AnswerModel:
    """The learnt logistic regression (standardised features, weights, bias, threshold)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        import numpy as np

        data = data or _model_data()
        if list(data["features"]) != list(FEATURES):
            raise ValueError(f"{MODEL_FILE.name} was trained on other features; retrain it with python -m training.answer_model")
        self.mean = np.asarray(data["mean"], dtype=np.float32)
        self.scale = np.asarray(data["scale"], dtype=np.float32)
        self.weights = np.asarray(data["weights"], dtype=np.float32)
        self.bias = float(data["bias"])
        self.threshold = float(data["threshold"])  # on the model's probability alone
        self.reader_threshold = float(data.get("reader_threshold", self.threshold))  # on its mean with the reader's
        self.reader_weight = float(data.get("reader_weight", 0.5))  # the reader's share of that (geometric) mean

    def probability(self, x: Any) -> Any:
        import numpy as np

        z = ((x - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-z))


def answer_probabilities(question: str, passages: list[Passage], embedder: Any, model: AnswerModel | None = None,
                         absent: list[str] | None = None, reader: Any = "load") -> tuple[Any, float]:
    """For each passage, the probability that it answers ``question``, and the threshold an answer
    must reach. With the reader (:mod:`tools.kb.reader`, a cross-encoder; ``reader="load"`` loads
    it, None goes without) the probability is a weighted geometric mean of the answer model's and
    the reader's (the reader's weight, ``reader_weight``, chosen on the calibration sets); without
    it, the answer model's alone. Each has its own calibrated threshold."""

    model = model or AnswerModel()
    p = model.probability(featurize(question, passages, embedder, absent=absent))
    if reader == "load":
        from tools.kb.reader import load_reader

        reader = load_reader()
    if reader is None or len(passages) == 0:
        return p, model.threshold
    from tools.kb.reader import passage_text

    read = reader.scores(question, [passage_text(x.heading, x.text) for x in passages])
    w = model.reader_weight
    return p ** (1.0 - w) * read**w, model.reader_threshold

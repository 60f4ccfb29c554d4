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

__all__ = ["NOT_FOUND", "NO_MODEL_NOTICE", "RELEVANCE_THRESHOLD", "ExtractiveBackend", "relevance"]

#: The answer when no sentence of the context answers the question.
NOT_FOUND = "The knowledge base does not contain an answer to this question."
#: How a sentence is judged to answer a question (see :func:`relevance`): its cosine similarity
#: to the question (all-MiniLM-L6-v2) plus COVERAGE_WEIGHT times the share of the question's
#: terms it contains, each term weighted by how rare it is in the retrieved text. A sentence
#: answers when that reaches RELEVANCE_THRESHOLD; sentences within RELEVANCE_MARGIN of the best
#: one are kept too. An English question whose own terms are missing from the whole retrieved
#: text (weighted, MISSING_LIMIT or more of them: "enterprise license cost") is not answered.
#: Calibrated on bench/answers/examples_kb.jsonl (python bench/answers.py).
RELEVANCE_THRESHOLD = 0.55
RELEVANCE_MARGIN = 0.08
COVERAGE_WEIGHT = 0.6
MISSING_LIMIT = 0.4
_HEADING_LINE = re.compile(r"^\s{0,3}#{1,6}\s.*$|^\s*(?:=+|-+)\s*$", re.MULTILINE)

# Words that carry no topic: English, German, Spanish and French function and question words.
_FUNCTION_WORDS = {
    "en": set("""a an the and or but if of to in on at by for with from into onto about as is are was were be been being am do does did
        doing done have has had having can could may might must shall should will would not no nor so than then that this these those
        there here what which who whom whose when where why how i me my we our you your he she it its they them their what's
        it's i'm isn't aren't don't doesn't didn't can't won't up down out over under again further once all any both each few more
        most other some such only own same too very just also using use used one get got make makes much many""".split()),
    "de": set("""der die das den dem des ein eine einen einem einer eines und oder aber wenn von zu im in am an auf bei mit nach für
        aus als ist sind war waren sein wird werden wurde kann können muss soll nicht kein keine so wie was wer wen wem wessen wann wo
        warum welche welcher welches ich mich mir wir uns du dich dir er sie es ihr ihnen man sich auch nur noch schon sehr viel viele
        mehr macht machen""".split()),
    "es": set("""el la los las un una unos unas y o pero si de del al a en con por para sin sobre como es son era fue ser está
        están hay puede pueden no ni que qué quién quiénes cuál cuáles cuándo dónde cómo cuánto cuántos cuántas por qué yo me mi
        nosotros tú te tu él ella ello ellos ellas su sus se lo le les también solo muy más menos hace hacer""".split()),
    "fr": set("""le la les l un une des du de d et ou mais si à au aux en dans sur sous avec par pour sans comme est sont était être
        a ont avoir peut peuvent ne pas plus que qu quoi qui quel quelle quels quelles quand où comment combien pourquoi je me moi
        nous tu te toi il elle ils elles on se son sa ses leur leurs ce cette ces aussi seulement très fait faire faut""".split()),
}
# Words that frame a question rather than name its topic ("what happens when…", "which command…").
_FRAMING_WORDS = set("""happen happens happened command commands kind kinds field fields order decide decides again way ways thing
    things work works mean means check checks find type types explain describe summary summarise summarize give write answer
    document documents english sentence short brief using""".split())
_ALL_FUNCTION_WORDS = set().union(*_FUNCTION_WORDS.values()) | _FRAMING_WORDS
_WORD = re.compile(r"[^\W_][\w$]*(?:[-_.][\w$]+)*", re.UNICODE)
_SUFFIXES = ("ings", "ing", "edly", "ies", "ied", "ed", "es", "s", "ly")

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


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading, text) of each section of a passage; headings name a section and answer nothing,
    so they are not candidate sentences, but they say what the section's sentences are about."""
    found: list[tuple[str, str]] = []
    heading, lines = "", []
    for line in text.splitlines():
        if _HEADING_LINE.fullmatch(line):
            if lines:
                found.append((heading, "\n".join(lines)))
            heading, lines = (line.strip("# ").strip() if line.strip().startswith("#") else heading), []
        else:
            lines.append(line)
    if lines:
        found.append((heading, "\n".join(lines)))
    return found


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _terms(text: str) -> list[str]:
    """The topic words of a text, lower case and stemmed (function words of four languages left
    out); an identifier counts as itself and as its parts (``jump_if_false``: also jump, false)."""
    found = []
    for match in _WORD.finditer(text):
        word = match.group(0).lower().strip(".-")
        parts = [word, *re.split(r"[-_.]", word)] if re.search(r"[-_.]", word) else [word]
        found.extend(_stem(p) for p in parts if p and p not in _ALL_FUNCTION_WORDS and len(p) > 1)
    return found


def _same(a: str, b: str) -> bool:
    """Whether two stems are one word's ("embed" and "embedd", "gpu" and "gpu")."""
    if a == b:
        return True
    short, long_ = sorted((a, b), key=len)
    return len(short) >= 4 and long_.startswith(short)


def _language(text: str) -> str:
    words = [w.lower() for w in _WORD.findall(text)]
    shared = {w for w in words if sum(w in vocabulary for vocabulary in _FUNCTION_WORDS.values()) > 1}  # "was", "die", "a"…
    hits = {lang: sum(w in vocabulary and w not in shared for w in words) for lang, vocabulary in _FUNCTION_WORDS.items()}
    best = max(hits, key=lambda lang: hits[lang])
    # English questions nearly always hold an English function word of their own ("what", "does", "the").
    return "en" if hits["en"] >= 1 and hits["en"] >= hits[best] else (best if hits[best] else "unknown")


def relevance(question: str, sentences: list[str], cosine: Any, *, context: str = "") -> tuple[Any, float, bool]:
    """How well each sentence answers ``question``: (scores, missing, english).

    A score is the sentence's cosine similarity to the question (``cosine``, one per sentence)
    plus ``COVERAGE_WEIGHT`` times the weighted share of the question's terms it holds, a term
    weighing more the rarer it is among ``sentences`` (a term none of them holds weighs most).
    ``missing`` is the weighted share of the question's terms that neither a sentence nor
    ``context`` (the retrieved text whole, headings included) holds; it only
    means something for an English question (``english``), the language of the knowledge base's
    embedding model (in another language most words are missing from English text anyway)."""
    import math

    import numpy as np

    asked = list(dict.fromkeys(_terms(question)))
    held = [set(_terms(s)) for s in sentences]
    n = len(sentences)
    weights, found = [], []
    for term in asked:
        holds = [any(_same(term, w) for w in words) for words in held]
        found.append(holds)
        weights.append(math.log((n + 1) / (sum(holds) + 0.5)))
    english = _language(question) == "en"
    total = sum(weights)
    if not asked or total <= 0:
        return np.asarray(cosine, dtype=np.float32), 0.0, english
    coverage = np.array([sum(w for w, f in zip(weights, found, strict=True) if f[i]) / total for i in range(n)], dtype=np.float32)
    around = set(_terms(context))
    missing = sum(w for term, w, f in zip(asked, weights, found, strict=True)
                  if not any(f) and not any(_same(term, word) for word in around)) / total
    return np.asarray(cosine, dtype=np.float32) + COVERAGE_WEIGHT * coverage, missing, english


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

        candidates: list[tuple[str, str, float]] = []
        headings: list[str] = []  # the section heading each candidate sentence is under (it names the topic)
        seen: set[str] = set()
        whole: list[str] = []
        for text, source, score in _passages(context):
            whole.append(text)
            for heading, block in _sections(text):
                block = re.sub(r"(?<!\n)\n(?!\n)", " ", block)  # a line break inside a paragraph ends no sentence
                for sentence in _SENTENCE.findall(block):
                    sentence = " ".join(sentence.split()).strip("*- ")
                    if len(sentence) > 15 and " " in sentence and sentence not in seen:
                        seen.add(sentence)
                        candidates.append((sentence, source, score))
                        headings.append(heading)
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
        cosine = (vectors @ asked.T).max(axis=1)
        scores, missing, english = relevance(" ".join(lines + key_phrases),
                                             [f"{h} {c[0]}" for h, c in zip(headings, candidates, strict=True)],
                                             cosine, context="\n".join(whole))
        best = float(scores.max())
        # The missing-terms test is for a question (a goal, or a line asking something); an
        # instruction ("summarise the documents") or several keys say what to write, not what to find.
        asking = len(keys) <= 1 and _asks(prompt)
        if best < RELEVANCE_THRESHOLD or (asking and english and missing >= MISSING_LIMIT):
            return ({key: NOT_FOUND for key in keys} if len(keys) > 1 else NOT_FOUND), False
        relevant = scores >= max(RELEVANCE_THRESHOLD, best - RELEVANCE_MARGIN)
        retrieval = np.array([c[2] for c in candidates], dtype=np.float32)
        if len(keys) <= 1:
            # Ranked with the retrieval score of the sentence's chunk too (it breaks near-ties).
            return self._pick(candidates, scores + 0.25 * retrieval, relevant, self.sentences), True
        relevance_ = scores
        # Each key wants a sentence of its own: every sentence that clears the threshold may serve,
        # and at least as many as there are keys (the best ones).
        relevant = scores >= RELEVANCE_THRESHOLD
        if int(relevant.sum()) < len(keys):
            relevant = np.zeros(len(candidates), dtype=bool)
            relevant[np.argsort(-scores)[: len(keys)]] = True
        key_vectors = asked[len(lines) :]
        answers: dict[str, str] = {}
        used = np.zeros(len(candidates), dtype=bool)
        for key, key_vector in zip(keys, key_vectors, strict=True):
            own = vectors @ key_vector
            usable = relevant & ~used
            if not usable.any():
                usable = relevant
            ranked = own + 0.5 * relevance_ + 0.25 * retrieval
            answers[key] = self._pick(candidates, ranked, usable, 1)
            used[int(np.argmax(np.where(usable, ranked, -np.inf)))] = True
        return answers, True

    @staticmethod
    def _pick(candidates: list[tuple[str, str, float]], scores: Any, usable: Any, count: int) -> str:
        order = [i for i in sorted(range(len(candidates)), key=lambda i: -float(scores[i])) if usable[i]][:count]
        order.sort()  # keep the context's own order for readability
        return " ".join(f"{candidates[i][0]} [{candidates[i][1]}]" if candidates[i][1] else candidates[i][0] for i in order)

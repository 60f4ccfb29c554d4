"""Learn when a retrieved passage answers a question: the weights in tools/kb/answer_model.json.

    python -m training.answer_model               # regenerate the questions, train, calibrate, write the weights
    python -m training.answer_model --calibrate   # only set the threshold on the calibration questions
    python -m training.answer_model --calibrate --set CORPUS QUESTIONS   # ... and on another calibration set

Questions are generated (no model, seeded) from documents that no evaluation uses: examples/kb,
this project's docs/, and the Markdown descriptions of the Python packages installed next to it
(their ``METADATA``). Each folder is indexed; for a passage, questions are made from its heading
("How do I restart a cluster?") and from one of its sentences (some of its content words, in a
question's frame). Every question is asked twice:

* answerable: retrieval over the whole folder; the passage it came from is the positive, every
  other retrieved passage a negative;
* unanswerable: retrieval with the source document left out (the near misses), or the question
  given a term that no document of the folder holds ("... on Nomad"); every passage a negative.

The features are those of :func:`tools.kb.evidence.featurize`; the model is a logistic
regression (numpy, L2, class-balanced). The threshold is the one that gets most synthetic
questions right (right passage first, or nothing for an unanswerable one).
"""

from __future__ import annotations

import json
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SEED = 7
TOP_K = 5


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def _package_docs(target: Path, limit: int = 45) -> int:
    """The Markdown long descriptions of installed packages, one file each."""
    import importlib.metadata as md

    count = 0
    for dist in sorted(md.distributions(), key=lambda d: d.metadata.get("Name", "").lower()):
        body = dist.metadata.get("Description") or (dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else None)
        kind = dist.metadata.get("Description-Content-Type", "") or ""
        if not body or "markdown" not in kind or len(body) < 6000 or body.count("\n#") < 6:
            continue
        name = re.sub(r"[^a-z0-9]+", "-", dist.metadata["Name"].lower())
        (target / f"{name}.md").write_text(body, encoding="utf-8")
        count += 1
        if count >= limit:
            break
    return count


class CachedEmbedder:
    """Encodes each distinct text once."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.cache: dict[str, Any] = {}

    def encode(self, texts: list[str]) -> Any:
        import numpy as np

        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        for start in range(0, len(todo), 64):
            batch = todo[start : start + 64]
            for text, vector in zip(batch, self.inner.encode(batch), strict=True):
                self.cache[text] = vector
        return np.stack([self.cache[t] for t in texts])


_FRAMES_CODE = ("How do I {}?", "Which command {}?", "How can I {}?", "What is the command to {}?")
_FRAMES_NUMBER = ("How many {}?", "What is the default {}?", "How long {}?", "What value {}?")
_FRAMES_ANY = ("What is {}?", "What does {} mean?", "Why {}?", "Can I {}?", "Does {}?", "Where {}?", "Tell me about {}.", "{}?")


def _question_from_sentence(sentence: str, passage: str, stop: frozenset[str], rng: random.Random) -> str | None:
    words = [w for w in re.findall(r"[A-Za-z0-9][\w.\-/$]*", sentence) if w.lower() not in stop and len(w) > 2]
    if len(words) < 4:
        return None
    keep = max(2, round(len(words) * rng.uniform(0.3, 0.75)))
    chosen = sorted(rng.sample(range(len(words)), min(keep, len(words), 7)))
    phrase = " ".join(words[i] for i in chosen).rstrip(".")
    if rng.random() < 0.65:
        frames = _FRAMES_CODE if "```" in passage else _FRAMES_NUMBER if re.search(r"\d", sentence) else _FRAMES_ANY
    else:
        frames = rng.choice((_FRAMES_CODE, _FRAMES_NUMBER, _FRAMES_ANY))
    return rng.choice(frames).format(phrase[0].lower() + phrase[1:])


def _question_from_heading(heading: str, rng: random.Random) -> str | None:
    last = re.sub(r"[`*_]", "", heading.split(" > ")[-1]).strip().rstrip("?")
    if len(last.split()) < 2 or len(last) > 80:
        return None
    low = last[0].lower() + last[1:]
    return rng.choice(("How do I {}?", "What about {}?", "{}?", "How does {} work?", "Explain {}.")).format(low)


def generate(kb: Any, stop: frozenset[str], rng: random.Random, per_folder: int) -> list[dict[str, Any]]:
    """Questions from the chunks of an indexed folder: {q, source, sentence or heading}."""
    from tools.kb.evidence import passages_of
    from tools.kb.markdown import sentence_spans

    chunks = list(kb._version.chunks)
    rng.shuffle(chunks)
    out: list[dict[str, Any]] = []
    for chunk in chunks:
        for passage in passages_of([chunk]):
            if "```" in passage.text and passage.text.strip().startswith("```"):
                continue
            plain = re.sub(r"```.*?```", " ", passage.text, flags=re.S)
            plain = re.sub(r"[`*_>#|\[\]]", " ", plain)
            if rng.random() < 0.25 and chunk.get("heading"):
                q = _question_from_heading(chunk["heading"], rng)
                if q:
                    out.append({"q": q, "source": chunk["source_uri"], "heading": chunk["heading"]})
            sentences = [plain[a:b] for a, b in sentence_spans(plain) if 6 <= len(plain[a:b].split()) <= 45]
            if sentences:
                sentence = rng.choice(sentences)
                q = _question_from_sentence(sentence, passage.text, stop, rng)
                if q:
                    out.append({"q": q, "source": chunk["source_uri"], "sentence": " ".join(sentence.split())})
        if len(out) >= per_folder:
            break
    return out[:per_folder]


def _positive(row: dict[str, Any], passage: Any) -> bool:
    if passage.source != row["source"]:
        return False
    if "sentence" in row:
        plain = " ".join(re.sub(r"[`*_>#|\[\]]", " ", passage.text).split())
        return row["sentence"][:80] in plain
    return passage.heading == row["heading"]


def _reworded(question: str, common: list[str], stop: frozenset[str], rng: random.Random) -> str:
    """The question with one of its content words replaced by a common word the folder does not
    hold: a reader's own wording, which the documents do not use."""
    tokens = question.split(" ")
    content = [i for i, t in enumerate(tokens) if re.fullmatch(r"[a-z]{4,}", t.strip("?.,")) and t.strip("?.,") not in stop]
    if not content or not common:
        return question
    i = rng.choice(content)
    tail = tokens[i][len(tokens[i].rstrip("?.,")):]
    tokens[i] = rng.choice(common) + tail
    return " ".join(tokens)


def examples(kb: Any, rows: list[dict[str, Any]], embedder: Any, stop: frozenset[str], foreign: list[str],
             rng: random.Random, common: list[str] | None = None) -> list[tuple[Any, Any, int]]:
    """(features, labels, question id) per question variant. ``foreign``: names other folders hold
    (a question about one is unanswerable here); ``common``: lower-case words other folders hold (a
    question worded with one may still be answerable)."""
    import numpy as np

    from tools.kb.evidence import absent_of, featurize, passages_of

    vocabulary = {w.lower() for c in kb._version.chunks for w in re.findall(r"[A-Za-z][\w-]+", c["content"])}
    common = [w for w in (common or []) if w not in vocabulary]
    out = []
    for row in rows:
        question = _reworded(row["q"], common, stop, rng) if rng.random() < 0.35 else row["q"]
        hits = kb.search(question, top_k=TOP_K * 4)
        answerable = hits[:TOP_K]
        passages = passages_of(answerable)
        labels = np.array([_positive(row, p) for p in passages], dtype=np.float32)
        if labels.any():
            out.append((featurize(question, passages, embedder, stop, absent_of(hits)), labels, 1))
        if rng.random() < 0.6:  # near misses: the page that answers is gone
            others = [h for h in hits if h["source_uri"] != row["source"]][:TOP_K]
            passages = passages_of(others)
            if passages:
                out.append((featurize(question, passages, embedder, stop, absent_of(hits)),
                            np.zeros(len(passages), dtype=np.float32), 0))
        else:  # the question asks about something no document holds
            term = next((t for t in rng.sample(foreign, min(40, len(foreign))) if t.lower() not in vocabulary), None)
            if term:
                question = row["q"].rstrip("?.") + rng.choice((" on {}?", " with {}?", " for {}?", " in {}?")).format(term)
                hits = kb.search(question, top_k=TOP_K)
                passages = passages_of(hits)
                if passages:
                    out.append((featurize(question, passages, embedder, stop, absent_of(hits)),
                                np.zeros(len(passages), dtype=np.float32), 0))
    return out


def fit(x: Any, y: Any, *, l2: float = 1e-3, steps: int = 3000, rate: float = 0.5) -> tuple[Any, Any, Any, float]:
    """Logistic regression by gradient descent on standardised features, classes weighted equally."""
    import numpy as np

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = (x - mean) / scale
    weight = np.where(y > 0, 0.5 / max(y.mean(), 1e-6), 0.5 / max(1 - y.mean(), 1e-6))
    w = np.zeros(x.shape[1])
    b = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        g = (p - y) * weight
        w -= rate * ((z.T @ g) / len(y) + l2 * w)
        b -= rate * g.mean()
    return mean, scale, w, b


def generation_kbs(folder: Path, embedder: Any) -> dict[str, Any]:
    """The folders questions are generated from (examples/kb, docs/, installed packages'
    descriptions), each indexed under ``folder``: ``{name: LocalKnowledgeBase}``."""
    from tools.kb import LocalKnowledgeBase, index_folder

    packages = folder / "packages"
    packages.mkdir()
    print(f"package descriptions: {_package_docs(packages)}", flush=True)
    kbs = {}
    for name, source in {"examples-kb": ROOT / "examples" / "kb", "docs": ROOT / "docs", "packages": packages}.items():
        index_folder(source, folder / f"kb-{name}", embedder=embedder, extractor=None)
        kbs[name] = LocalKnowledgeBase(folder / f"kb-{name}", embedder=embedder)
    return kbs


def capitalised_names(kbs: dict[str, Any]) -> dict[str, set[str]]:
    """Each knowledge base's capitalised words (a question about another's is unanswerable in it)."""
    return {name: {w for c in kb._version.chunks for w in re.findall(r"\b[A-Z][a-z]{3,}[A-Za-z]*\b", c["content"])}
            for name, kb in kbs.items()}


def main() -> None:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from tools.kb import Embedder
    from tools.kb.evidence import FEATURES, MODEL_FILE

    rng = random.Random(SEED)
    stop = _stop_words()
    embedder = Embedder()
    cached = CachedEmbedder(embedder)
    data: list[tuple[Any, Any, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        kbs = generation_kbs(Path(tmp), embedder)
        capitalised = {name: sorted(names) for name, names in capitalised_names(kbs).items()}
        lower = {name: sorted({w for c in kb._version.chunks for w in re.findall(r"\b[a-z]{5,12}\b", c["content"])} - stop)
                 for name, kb in kbs.items()}
        for name, kb in kbs.items():
            foreign = sorted({w for other, words in capitalised.items() if other != name for w in words})
            common = sorted({w for other, words in lower.items() if other != name for w in words})
            rows = generate(kb, stop, rng, {"examples-kb": 250, "docs": 700, "packages": 900}[name])
            made = examples(kb, rows, cached, stop, foreign, rng, common)
            print(f"{name}: {len(rows)} questions, {len(made)} variants "
                  f"({sum(m[2] for m in made)} answerable)", flush=True)
            data.extend(made)
    x = np.concatenate([d[0] for d in data])
    y = np.concatenate([d[1] for d in data])
    mean, scale, w, b = fit(x, y)

    def outcome(threshold: float) -> float:
        right = 0
        for features, labels, answerable in data:
            p = 1 / (1 + np.exp(-(((features - mean) / scale) @ w + b)))
            best = int(np.argmax(p))
            if answerable:
                right += bool(p[best] >= threshold and labels[best] > 0)
            else:
                right += bool(p[best] < threshold)
        return right / len(data)

    grid = [round(t, 2) for t in np.arange(0.3, 0.96, 0.02)]
    scores = {t: outcome(t) for t in grid}
    threshold = max(grid, key=lambda t: (scores[t], -abs(t - 0.5)))
    answerable = sum(d[2] for d in data)
    print(f"{len(data)} question variants ({answerable} answerable), {len(y)} passages; threshold {threshold}: "
          f"{scores[threshold]:.1%} of synthetic questions right")
    for name, weight in sorted(zip(FEATURES, w, strict=True), key=lambda kv: -abs(kv[1])):
        print(f"  {name:22s} {weight:+.3f}")
    model = {
        "about": "Logistic regression deciding whether a retrieved passage answers a question; "
                 "written by python -m training.answer_model (questions generated from examples/kb, docs/ "
                 "and installed packages' descriptions; no evaluation corpus).",
        "features": list(FEATURES),
        "mean": [round(float(v), 6) for v in mean],
        "scale": [round(float(v), 6) for v in scale],
        "weights": [round(float(v), 6) for v in w],
        "bias": round(float(b), 6),
        "threshold": threshold,
        "training": {"question_variants": len(data), "answerable": answerable, "passages": int(len(y)),
                     "synthetic_right": round(scores[threshold], 4), "seed": SEED},
        "stop_words": sorted(stop),  # scikit-learn's English stop words
    }
    write_model(model, MODEL_FILE)
    print(f"wrote {MODEL_FILE}")


def write_model(model: dict[str, Any], path: Path) -> None:
    """Write the trained model to ``path``, keeping the reader's weight already there: that is
    chosen on the calibration sets (see ``reader_weight_from``), not by training, and a retrained
    model without it would fall back to an even mean."""
    if path.is_file():
        kept = json.loads(path.read_text(encoding="utf-8"))
        model = {**model, **{k: kept[k] for k in ("reader_weight", "reader_weight_from") if k in kept}}
    path.write_text(json.dumps(model, indent=1) + "\n", encoding="utf-8")


#: The calibration sets: (folder of documents, its questions). Never an evaluation (frozen) set.
CALIBRATION = [(ROOT / "examples" / "kb", ROOT / "bench" / "answers" / "examples_kb.jsonl"),
               (ROOT / "examples" / "kb", ROOT / "bench" / "answers" / "examples_kb_held_out.jsonl")]


def calibrate(extra: list[tuple[Path, Path]] = (), kb_cache: Path | None = None) -> None:
    """Set the thresholds on the calibration questions (:data:`CALIBRATION` and ``extra`` sets of
    (corpus folder, questions); never an evaluation set): for the answer model alone and for its
    mean with the reader (:func:`tools.kb.evidence.answer_probabilities`), each the one that gets
    most of them right (the key phrase in the answer, the best passage and its section's, or
    nothing for an unanswerable question). With ``kb_cache``, each corpus's index is kept there
    and reused."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from tools.kb import LocalKnowledgeBase, index_folder
    from tools.kb.evidence import MODEL_FILE, AnswerModel, absent_of, answer_probabilities, passages_of
    from tools.kb.reader import load_reader
    from tools.llm_extractive import _section

    model = AnswerModel(json.loads(MODEL_FILE.read_text(encoding="utf-8")))  # the weights just written, not those read first
    reader = load_reader()
    variants = [("threshold", None)] + ([("reader_threshold", reader)] if reader is not None else [])
    outcomes: dict[str, list[tuple[float, bool, bool]]] = {name: [] for name, _ in variants}
    if reader is None:
        print("reader_threshold: not set (the reader could not be loaded)")
    names = []
    with tempfile.TemporaryDirectory() as tmp:
        for corpus, questions in [*CALIBRATION, *extra]:
            rows = [json.loads(line) for line in questions.read_text(encoding="utf-8").splitlines() if line.strip()]
            kb_path = (kb_cache or Path(tmp)) / f"kb-{questions.stem}"
            if not (kb_path / "CURRENT").is_file():
                index_folder(corpus, kb_path, extractor=None)
            kb = LocalKnowledgeBase(kb_path)
            names.append(f"{questions.name} ({len(rows)})")
            for row in rows:
                hits = kb.search(row["q"], top_k=TOP_K)
                passages = passages_of(hits)
                key = " ".join(str(row.get("answer") or "").lower().split())
                for name, with_reader in variants:
                    p, _ = answer_probabilities(row["q"], passages, kb.embedder, model, absent_of(hits), reader=with_reader)
                    best = int(np.argmax(p))
                    answer = " ".join(passages[i].text for i in _section(passages, best))  # what the answerer returns
                    outcomes[name].append((float(p[best]), row.get("answer") is not None,
                                           bool(key) and key in " ".join(answer.lower().split())))
    grid = [round(t, 2) for t in np.arange(0.3, 0.96, 0.01)]
    data = json.loads(MODEL_FILE.read_text(encoding="utf-8"))
    for name, found in outcomes.items():

        def right(t: float, found: list[tuple[float, bool, bool]] = found) -> int:
            return sum((ok and p >= t) if answerable else p < t for p, answerable, ok in found)

        threshold = max(grid, key=lambda t: (right(t), -abs(t - 0.5)))
        data[name] = threshold
        data[f"{name}_from"] = f"calibration: {', '.join(names)}; {right(threshold)}/{len(found)} right"
        curve = ", ".join(f"{t}: {right(t)}" for t in grid[::5])
        print(f"{name} {threshold}: {right(threshold)}/{len(found)} calibration questions right ({curve})")
    MODEL_FILE.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _arguments() -> Any:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true", help="only set the threshold")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("CORPUS", "QUESTIONS"),
                        help="another calibration set: a folder of documents and its questions (repeatable)")
    parser.add_argument("--kb-cache", type=Path, help="keep the calibration corpora's indexes here and reuse them")
    args = parser.parse_args()
    for corpus, questions in args.set:
        if not Path(corpus).is_dir():
            parser.error(f"{corpus} is not a folder of documents")
        if not Path(questions).is_file():
            parser.error(f"{questions}: no such question file")
    return args


if __name__ == "__main__":
    arguments = _arguments()
    if not arguments.calibrate:
        main()
    calibrate([(Path(c), Path(q)) for c, q in arguments.set], arguments.kb_cache)

"""Honest offline answers: does the extractive path answer with the passage that holds the
answer, cite the page it came from, and say "not found" when the documents hold no answer?

    python bench/answers.py                      # calibration: examples/kb and its labelled questions
    python bench/answers.py --held-out           # examples/kb, questions written after calibrating
    python bench/answers.py --corpus DIR --questions FILE [--include GLOB]... [--kb KB] [--show-misses]

Frozen evaluation sets (never used to tune anything) are under bench/answers/frozen/, one per
public documentation corpus; the corpus is not part of this repository. For example:

    git clone https://github.com/pingcap/docs-tidb-operator   # a checkout of the public repository
    python bench/answers.py --corpus docs-tidb-operator/en --questions bench/answers/frozen/tidb-operator.jsonl
    git clone https://github.com/helm/helm-www                # a checkout of the public repository
    python bench/answers.py --corpus helm-www/versioned_docs/version-3 --include '*.md' --include '*.mdx' \\
        --questions bench/answers/frozen/helm.jsonl

(bench/answers/frozen/README.md names the commits the questions were written against.)

A question file holds one JSON object a line: ``q``, ``answer`` (a key phrase the right answer
contains, or null when the corpus holds no answer), optionally ``source`` (the file that
answers, relative to the corpus folder) and ``lang``. Each question goes through what
`planvm run` does offline: the template plan (knowledge-graph lookup, vector search,
`llm_generate` with no model configured). Printed, per file:

* right: answerable questions whose answer contains the key phrase (case and spacing ignored);
* honest: unanswerable questions answered "not found";
* source right: answerable questions whose answer cites the expected file;
* precision: of the answers given, the share that are right (an answer to an answerable question
  without the key phrase is wrong).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LABELLED = ROOT / "bench" / "answers" / "examples_kb.jsonl"
#: Calibration questions written after the first calibration on LABELLED.
HELD_OUT = ROOT / "bench" / "answers" / "examples_kb_held_out.jsonl"


def _normal(text: str) -> str:
    return " ".join(text.lower().replace("\\", "").split())


def _index(corpus: Path, kb: Path, include: list[str]) -> None:
    command = [sys.executable, "-m", "planvm", "index", str(corpus), "--kb", str(kb), "--graph", "cooccurrence"]
    for pattern in include:
        command += ["--include", pattern]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"indexing {corpus} failed:\n{done.stderr[-2000:]}")


def ask(kb: Path, rows: list[dict]) -> tuple[list[tuple[dict, bool, str]], float]:
    from planvm.engine import Engine

    outcomes = []
    started = time.perf_counter()
    with Engine({"kb_path": str(kb), "no_library": True}) as engine:
        for row in rows:
            result = asyncio.run(engine.run_goal(row["q"]))
            outcome = engine.outcome(result.run_id)
            outcomes.append((row, bool(outcome.answer_found), str(outcome.final_answer or "")))
    return outcomes, time.perf_counter() - started


def score(outcomes: list[tuple[dict, bool, str]]) -> dict:
    """The figures of one run; each outcome is (row, answered, answer text)."""
    answerable = [o for o in outcomes if o[0].get("answer") is not None]
    unanswerable = [o for o in outcomes if o[0].get("answer") is None]
    right = [o for o in answerable if o[1] and _normal(o[0]["answer"]) in _normal(o[2])]
    with_source = [o for o in answerable if o[0].get("source")]
    cited = [o for o in with_source if o[1] and _cites(o[2], o[0]["source"])]
    honest = [o for o in unanswerable if not o[1]]
    answered = [o for o in outcomes if o[1]]
    return {"answerable": len(answerable), "right": len(right), "unanswerable": len(unanswerable), "honest": len(honest),
            "with_source": len(with_source), "source_right": len(cited), "answered": len(answered),
            "answered_right": len(right)}


def _cites(answer: str, source: str) -> bool:
    """Whether the answer cites ``source`` (in its ``[source ...]`` references)."""
    cited = re.findall(r"\[([^\[\]]+)\]", answer)
    return any(ref.split(" > ", 1)[0].strip() == source for ref in cited)


def share(part: int, whole: int) -> str:
    return f"{part}/{whole} = {part / whole:.0%}" if whole else "-"


def report(name: str, outcomes: list[tuple[dict, bool, str]], seconds: float, show_misses: bool) -> None:
    s = score(outcomes)
    print(f"{name}: {len(outcomes)} questions ({s['answerable']} answerable, {s['unanswerable']} not) in {seconds:.1f} s")
    print(f"  answerable, right content      {share(s['right'], s['answerable'])}")
    print(f"  unanswerable, said not found   {share(s['honest'], s['unanswerable'])}")
    print(f"  answerable, right source cited {share(s['source_right'], s['with_source'])}")
    print(f"  precision of 'answered'        {share(s['answered_right'], s['answered'])}")
    languages = sorted({o[0].get("lang", "en") for o in outcomes})
    if len(languages) > 1:
        for lang in languages:
            part = score([o for o in outcomes if o[0].get("lang", "en") == lang])
            print(f"  [{lang}] right {share(part['right'], part['answerable'])}, "
                  f"not found {share(part['honest'], part['unanswerable'])}")
    if show_misses:
        for row, found, answer in outcomes:
            expected = row.get("answer")
            wrong = (expected is not None and not (found and _normal(expected) in _normal(answer))) or (expected is None and found)
            if wrong:
                print(f"- {row['q']!r} ({'expects ' + repr(expected) + ' in ' + str(row.get('source')) if expected else 'unanswerable'}):"
                      f" {answer[:300]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show-misses", action="store_true")
    parser.add_argument("--held-out", action="store_true", help="examples/kb's second calibration set")
    parser.add_argument("--corpus", type=Path, help="folder of documents to index (default: examples/kb)")
    parser.add_argument("--questions", type=Path, help="question file (default: the examples/kb calibration set)")
    parser.add_argument("--include", action="append", default=[], help="glob of files to index (repeatable)")
    parser.add_argument("--kb", type=Path, help="knowledge-base folder to index into and keep, or to use when it holds one (default: a temporary one)")
    args = parser.parse_args()
    if (args.corpus is None) != (args.questions is None):
        parser.error("--corpus and --questions go together")
    corpus = args.corpus or ROOT / "examples" / "kb"
    labelled = args.questions or (HELD_OUT if args.held_out else LABELLED)
    if not corpus.is_dir():
        parser.error(f"{corpus} is not a folder of documents")
    rows = [json.loads(line) for line in labelled.read_text(encoding="utf-8").splitlines() if line.strip()]
    for name in [n for n in os.environ if n.startswith("PLANVM_LLM") or n == "OPENAI_API_KEY"]:
        del os.environ[name]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PLANVM_HOME"] = tmp
        kb = args.kb or Path(tmp) / "kb"
        if not (kb / "CURRENT").is_file():  # a --kb indexed by an earlier run is used as it is
            _index(corpus, kb, args.include)
        outcomes, seconds = ask(kb, rows)
    report(labelled.name, outcomes, seconds, args.show_misses)


if __name__ == "__main__":
    main()

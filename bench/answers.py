"""Honest offline answers: does the extractive path say "not found" when examples/kb holds no
answer, and answer with the right sentence first when it does?

    python bench/answers.py                 # index examples/kb once, then ask every labelled question
    python bench/answers.py --show-misses   # and print each wrong outcome
    python bench/answers.py --held-out      # questions written after the thresholds were calibrated

The labelled set is bench/answers/examples_kb.jsonl: questions whose answer is in examples/kb
(with a piece of the sentence that answers), and on-topic questions it cannot answer, in English
and some other languages. Each question goes through what `planvm run` does offline: the template
plan (knowledge-graph lookup, vector search, `llm_generate` with no model configured), recorded
in a run store. Printed: the share of answerable questions answered (and with the right sentence
first), the share of unanswerable ones answered "not found", the precision of "answered", and the
same per language.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LABELLED = ROOT / "bench" / "answers" / "examples_kb.jsonl"
#: Questions written after the thresholds were calibrated on LABELLED, to see how they generalise.
HELD_OUT = ROOT / "bench" / "answers" / "examples_kb_held_out.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show-misses", action="store_true")
    parser.add_argument("--held-out", action="store_true", help="ask the held-out questions instead (written after calibration)")
    args = parser.parse_args()
    labelled = HELD_OUT if args.held_out else LABELLED
    rows = [json.loads(line) for line in labelled.read_text(encoding="utf-8").splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PLANVM_HOME"] = tmp
        for name in [n for n in os.environ if n.startswith("PLANVM_LLM") or n == "OPENAI_API_KEY"]:
            del os.environ[name]
        kb = Path(tmp) / "kb"
        subprocess.run([sys.executable, "-m", "planvm", "index", str(ROOT / "examples" / "kb"), "--kb", str(kb)], cwd=ROOT,
                       check=True, capture_output=True)
        from planvm.engine import Engine

        outcomes = []
        started = time.perf_counter()
        with Engine({"kb_path": str(kb), "no_library": True}) as engine:
            for row in rows:
                result = asyncio.run(engine.run_goal(row["q"]))
                outcome = engine.outcome(result.run_id)
                answer = str(outcome.final_answer or "")
                first = answer.split(" [", 1)[0]
                outcomes.append((row, bool(outcome.answer_found), answer, row["answer"] is not None and row["answer"] in first))
        seconds = time.perf_counter() - started

    def share(part: int, whole: int) -> str:
        return f"{part}/{whole} = {part / whole:.0%}" if whole else "-"

    answerable = [o for o in outcomes if o[0]["answer"] is not None]
    unanswerable = [o for o in outcomes if o[0]["answer"] is None]
    answered = [o for o in outcomes if o[1]]
    print(f"{labelled.name}: {len(rows)} questions ({len(answerable)} answerable, {len(unanswerable)} not) in {seconds:.1f} s")
    print(f"  answerable answered            {share(sum(o[1] for o in answerable), len(answerable))}")
    print(f"  answerable, right sentence 1st {share(sum(o[3] for o in answerable), len(answerable))}")
    print(f"  unanswerable said not found    {share(sum(not o[1] for o in unanswerable), len(unanswerable))}")
    print(f"  precision of 'answered'        {share(sum(o[0]['answer'] is not None for o in answered), len(answered))}")
    for lang in sorted({o[0]["lang"] for o in outcomes}):
        mine = [o for o in outcomes if o[0]["lang"] == lang]
        a = [o for o in mine if o[0]["answer"] is not None]
        u = [o for o in mine if o[0]["answer"] is None]
        print(f"  [{lang}] answered {share(sum(o[1] for o in a), len(a))}, right first {share(sum(o[3] for o in a), len(a))}, "
              f"not found {share(sum(not o[1] for o in u), len(u))}")
    if args.show_misses:
        for row, found, answer, right in outcomes:
            wrong = (row["answer"] is not None and not right) or (row["answer"] is None and found)
            if wrong:
                print(f"- {row['q']!r} ({'answerable' if row['answer'] else 'unanswerable'}): {answer[:160]!r}")


if __name__ == "__main__":
    main()

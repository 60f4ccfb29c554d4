"""Streamed planning against plan-then-run: end-to-end time of a planned run.

    python bench/streamed.py                        # 20, 40 and 80 tokens/s, every plan shape
    python bench/streamed.py --rates 40 --shapes fan-out-3

The planner is a scripted OpenAI-compatible server on loopback (tests/fake_openai.py) that writes
a fixed reply (a short reasoning, then the plan as an indented JSON array in a fence) at a set
pace: one 4-character piece (about a token) every 1/rate seconds. Plan-then-run gets the same
reply whole after the same time (the server waits, then answers); streamed (``stream_plan``)
gets it piece by piece. Tools are async and sleep a realistic latency: ``retrieve`` 0.3 s,
``llm_generate`` 2 s. Each cell is one run through the engine (planning, validation, the run, a
SQLite store); the runs of both ways must end with the same final answer and the same stored
steps (checked, else the bench fails).

Printed per shape and rate: seconds of plan-then-run, of streamed, their ratio, and the seconds
the planner's reply took.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai import FakeChatServer, chat_reply, stream  # noqa: E402

RETRIEVE_S = 0.3
GENERATE_S = 2.0
CHARS_PER_TOKEN = 4
REASONING = ("<think>The goal needs facts from the knowledge base first; independent lookups can go at once, then "
             "one generation joins them into the answer.</think>\n")


def _tools() -> list[Any]:
    from tools import tool

    @tool
    async def retrieve(query: str) -> str:
        """Look up passages for a query.

        Args:
            query: What to look up.
        """
        await asyncio.sleep(RETRIEVE_S)
        return f"passages on {query}"

    @tool
    async def llm_generate(prompt: str, context: str = "") -> str:
        """Write an answer from a prompt and context.

        Args:
            prompt: The question.
            context: What to answer from.
        """
        await asyncio.sleep(GENERATE_S)
        return f"answer to {prompt[:30]} from {len(context)} chars"

    return [retrieve, llm_generate]


def call(seq: int, tool: str, params: dict[str, Any], out: str) -> dict[str, Any]:
    return {"seq_no": seq, "type": "calling", "parameters": {"tool_name": tool, "tool_params": params, "output_vars": [out]}}


def fan_out(n: int) -> list[dict[str, Any]]:
    plan = [call(i, "retrieve", {"query": f"aspect {i}"}, f"r{i}") for i in range(n)]
    joined = " ".join(f"${{r{i}}}" for i in range(n))
    plan.append(call(n, "llm_generate", {"prompt": "Answer the goal", "context": joined}, "final_answer"))
    return plan


def two_level() -> list[dict[str, Any]]:
    """Three sub-questions, each: two lookups, then a generation; a last generation combines."""
    plan, seq = [], 0
    for i in range(3):
        plan += [call(seq, "retrieve", {"query": f"sub-question {i} facts"}, f"a{i}"),
                 call(seq + 1, "retrieve", {"query": f"sub-question {i} background"}, f"b{i}"),
                 call(seq + 2, "llm_generate", {"prompt": f"Answer sub-question {i}", "context": f"${{a{i}}} ${{b{i}}}"}, f"s{i}")]
        seq += 3
    plan.append(call(seq, "llm_generate", {"prompt": "Combine", "context": "${s0} ${s1} ${s2}"}, "final_answer"))
    return plan


def chain() -> list[dict[str, Any]]:
    return [call(0, "retrieve", {"query": "the goal"}, "a"), call(1, "retrieve", {"query": "more on ${a}"}, "b"),
            call(2, "llm_generate", {"prompt": "Answer the goal", "context": "${a} ${b}"}, "final_answer")]


def loop() -> list[dict[str, Any]]:
    """Widen a search until three rounds ran, then answer."""
    return [{"seq_no": 0, "type": "assign", "parameters": {"round": 0, "found": ""}},
            call(1, "retrieve", {"query": "the goal, round ${round}"}, "hit"),
            {"seq_no": 2, "type": "assign", "parameters": {"round": "${round} + 1", "found": "${found} ${hit}"}},
            {"seq_no": 3, "type": "jmp", "parameters": {"condition": "${round} < 3", "jump_if_true": 1}},
            call(4, "llm_generate", {"prompt": "Answer the goal", "context": "${found}"}, "final_answer")]


def twenty() -> list[dict[str, Any]]:
    """The issue's 20 instructions: 15 lookups, 4 partial answers, one final answer."""
    plan = [call(i, "retrieve", {"query": f"aspect {i} of the goal"}, f"r{i}") for i in range(15)]
    for j in range(4):
        refs = " ".join(f"${{r{i}}}" for i in range(j * 4, min(j * 4 + 4, 15)))
        plan.append(call(15 + j, "llm_generate", {"prompt": f"Summarise part {j}", "context": refs}, f"p{j}"))
    plan.append(call(19, "llm_generate", {"prompt": "Answer the goal", "context": "${p0} ${p1} ${p2} ${p3}"}, "final_answer"))
    return plan


SHAPES = {"chain": chain, "fan-out-3": lambda: fan_out(3), "fan-out-6": lambda: fan_out(6), "two-level": two_level,
          "loop": loop, "twenty": twenty}


def reply_of(plan: list[dict[str, Any]]) -> str:
    return f"{REASONING}```json\n{json.dumps(plan, indent=2)}\n```"


def run_once(server: FakeChatServer, folder: Path, text: str, rate: float, streamed: bool) -> tuple[float, Any]:
    from planvm.engine import Engine

    pieces = [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]
    pause = 1.0 / rate
    server.actions.append(stream(pieces, pause=pause) if streamed else ("sleep", pause * len(pieces), chat_reply(text)))
    with Engine({"store_path": str(folder / "runs.sqlite"), "no_builtins": True, "no_library": True}) as engine:
        for t in _tools():
            engine.registry.register(t)
        began = time.perf_counter()
        result = asyncio.run(engine.run_goal("Answer the goal", stream_plan=streamed))
        took = time.perf_counter() - began
        stored = engine.store.get(result.run_id)
    if result.status != "completed":
        raise SystemExit(f"a run failed ({'streamed' if streamed else 'plan-then-run'}): {result.error}")
    steps = [{k: v for k, v in dataclasses.asdict(s).items() if k not in ("started_at", "duration_s")} for s in stored.steps]
    return took, (result.final_answer, stored.plan, steps, stored.planning.get("seconds"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[20.0, 40.0, 80.0], help="tokens per second")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    for name in [n for n in os.environ if n.startswith("PLANVM_") or n == "OPENAI_API_KEY"]:
        del os.environ[name]
    print(f"retrieve {RETRIEVE_S} s, llm_generate {GENERATE_S} s; a token = {CHARS_PER_TOKEN} characters of the reply")
    print(f"{'shape':<10} {'instr':>5} {'tokens':>6} {'tok/s':>5} {'reply s':>7} {'plan-then-run s':>15} {'streamed s':>10} {'ratio':>6}")
    with FakeChatServer() as server, tempfile.TemporaryDirectory() as tmp:
        os.environ["PLANVM_LLM_BASE_URL"] = server.url
        os.environ["PLANVM_LLM_MODEL"] = "planner"
        os.environ["PLANVM_LLM_TIMEOUT"] = "600"  # plan-then-run waits for a long reply's first byte
        os.environ["PLANVM_HOME"] = tmp
        for shape in args.shapes:
            plan = SHAPES[shape]()
            text = reply_of(plan)
            for rate in args.rates:
                cell = Path(tmp) / f"{shape}-{rate:g}"
                whole_s, whole = run_once(server, cell / "whole", text, rate, False)
                streamed_s, streamed = run_once(server, cell / "streamed", text, rate, True)
                if whole[:3] != streamed[:3]:
                    raise SystemExit(f"{shape} at {rate:g} tokens/s: the streamed run differs from plan-then-run")
                tokens = -(-len(text) // CHARS_PER_TOKEN)
                print(f"{shape:<10} {len(plan):>5} {tokens:>6} {rate:>5g} {tokens / rate:>7.2f} {whole_s:>15.2f} {streamed_s:>10.2f} "
                      f"{streamed_s / whole_s:>6.2f}", flush=True)


if __name__ == "__main__":
    main()

"""Overlapping independent tool calls: sequential time, parallel time, critical path.

    python bench/parallel.py                 # latency 100 ms per retrieval, 150 ms per generation
    python bench/parallel.py --latency 0.05 --generate 0.08

The plan has the shape planners write: for each of three sub-questions, retrieve_knowledge_graph
and vector_search on the same query, then llm_generate over both; a final llm_generate combines
the three answers into final_answer. The tools sleep a fixed latency (async tools; the sync
variant runs them in the VM's thread pool). The critical path is the longest chain of dependent
calls, the lower bound for any schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import ToolRegistry, tool  # noqa: E402
from vm import VM  # noqa: E402


def plan() -> list[dict]:
    steps = []
    seq = 0
    for i in range(1, 4):
        q = f"sub-question {i}"
        steps.append({"seq_no": seq, "type": "calling", "parameters": {"tool_name": "retrieve_knowledge_graph", "tool_params": {"query": q}, "output_vars": [f"kg{i}"]}})
        steps.append({"seq_no": seq + 1, "type": "calling", "parameters": {"tool_name": "vector_search", "tool_params": {"query": q, "top_k": 5}, "output_vars": [f"chunks{i}"]}})
        steps.append({"seq_no": seq + 2, "type": "calling", "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": f"Answer {q}.", "context": f"${{kg{i}}} ${{chunks{i}}}"}, "output_vars": [f"answer{i}"]}})
        seq += 3
    steps.append({"seq_no": seq, "type": "calling", "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": "Combine: ${answer1} ${answer2} ${answer3}"}, "output_vars": ["final_answer"]}})
    return steps


def registry(latency: float, generate: float, sync: bool) -> ToolRegistry:
    if sync:
        def retrieve_knowledge_graph(query: str) -> dict:
            time.sleep(latency)
            return {"entities": [], "relationships": []}

        def vector_search(query: str, top_k: int = 10) -> list:
            time.sleep(latency)
            return [{"content": query, "source_uri": "bench", "score": 1.0}]

        def llm_generate(prompt: str, context: str | None = None) -> str:
            time.sleep(generate)
            return prompt[:20]
    else:
        async def retrieve_knowledge_graph(query: str) -> dict:
            await asyncio.sleep(latency)
            return {"entities": [], "relationships": []}

        async def vector_search(query: str, top_k: int = 10) -> list:
            await asyncio.sleep(latency)
            return [{"content": query, "source_uri": "bench", "score": 1.0}]

        async def llm_generate(prompt: str, context: str | None = None) -> str:
            await asyncio.sleep(generate)
            return prompt[:20]

    return ToolRegistry([tool(retrieve_knowledge_graph), tool(vector_search), tool(llm_generate)])


def critical_path(steps: list[dict], latency: float, generate: float) -> float:
    """Longest chain of dependent calls (a step depends on the steps that write what it reads)."""
    finish: dict[str, float] = {}
    end = 0.0
    for step in steps:
        p = step["parameters"]
        text = str(p["tool_params"])
        start = max([t for name, t in finish.items() if "${" + name + "}" in text] or [0.0])
        done = start + (generate if p["tool_name"] == "llm_generate" else latency)
        for name in p["output_vars"]:
            finish[name] = done
        end = max(end, done)
    return end


def timed(vm: VM, steps: list[dict], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        vm.run(steps).raise_for_error()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per retrieval call")
    parser.add_argument("--generate", type=float, default=0.15, help="seconds per llm_generate call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    steps = plan()
    bound = critical_path(steps, args.latency, args.generate)
    print(f"{'tools':<8}{'sequential s':>14}{'parallel s':>12}{'critical path s':>17}{'parallel / critical':>21}")
    for sync in (False, True):
        reg = registry(args.latency, args.generate, sync)
        with VM(reg, concurrency=1) as vm:
            sequential = timed(vm, steps, args.repeats)
        with VM(reg, concurrency=8) as vm:
            parallel = timed(vm, steps, args.repeats)
        print(f"{'sync' if sync else 'async':<8}{sequential:>14.3f}{parallel:>12.3f}{bound:>17.3f}{parallel / bound:>20.3f}x")


if __name__ == "__main__":
    main()

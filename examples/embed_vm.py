"""Embedding the VM in an application: run a stored plan with a custom tool and a run store,
then replay the run offline.

    python examples/embed_vm.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tools import ToolRegistry, tool
from vm import VM, Limits, RunStore, replay

HERE = Path(__file__).resolve().parent

# A small in-memory "search index" standing in for an application's own data.
FAQ = {
    "refund": "Refunds are paid within 14 days to the card used for the purchase.",
    "shipping": "Orders ship from the warehouse within 2 working days.",
}


@tool
def vector_search(query: str, top_k: int = 10) -> list[dict]:
    """Search the application's FAQ.

    Args:
        query: What to look for.
        top_k: How many answers.
    """
    words = set(query.lower().split())
    hits = [{"content": text, "source_uri": f"faq://{key}", "score": float(key in words)} for key, text in FAQ.items()]
    return sorted(hits, key=lambda h: -h["score"])[:top_k]


@tool
def retrieve_knowledge_graph(query: str) -> dict:
    """The application has no graph: an empty one."""
    return {"entities": [], "relationships": []}


@tool
def llm_generate(prompt: str, context: list | dict | str | None = None) -> str:
    """Answer with the best FAQ entry (the application's stand-in for a model)."""
    chunks = context.get("documents", []) if isinstance(context, dict) else context or []
    return chunks[0]["content"] if chunks else "No answer found."


def main() -> tuple[str, bool]:
    registry = ToolRegistry([vector_search, retrieve_knowledge_graph, llm_generate])
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(Path(folder) / "runs.sqlite")
        vm = VM(registry, limits=Limits(max_steps=50), store=store)
        plan = [
            {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "retrieve_knowledge_graph", "tool_params": {"query": "${question}"}, "output_vars": "graph"}},
            {"seq_no": 1, "type": "calling", "parameters": {"tool_name": "vector_search", "tool_params": {"query": "${question}", "top_k": 1}, "output_vars": "chunks"}},
            {"seq_no": 2, "type": "calling", "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": "${question}", "context": {"graph": "${graph}", "documents": "${chunks}"}}, "output_vars": "final_answer"}},
        ]
        result = vm.run(plan, variables={"question": "how long does a refund take"}, goal="refund time")
        result.raise_for_error()
        report = replay(store.get(result.run_id))  # offline: no tool is called again
        store.close()
        return result.final_answer, report.ok


if __name__ == "__main__":
    answer, reproduced = main()
    print(answer)
    print("replay reproduced every step:", reproduced)

"""The plan library's cost when planning: how long a lookup takes as the library grows.

    python bench/library.py                    # 100, 1,000 and 10,000 kept plans
    python bench/library.py --sizes 100 1000

For each size, a fresh SQLite store gets that many best plans (goal embeddings: random unit
vectors of the default model's 384 dimensions; the cost does not depend on what they say), then:
an exact hit (a query for that goal alone), the first miss (reads the whole library and builds
its matrix, as each new process does once), and then a miss with the three examples for the
prompt (embedding the goal excluded), and embedding one goal with the real model
(the knowledge base's ONNX export when --kb is given, else sentence-transformers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from planner.library import PlanLibrary, normalise_goal  # noqa: E402
from vm import RunStore  # noqa: E402

DIM = 384
PLAN = [
    {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "vector_search", "tool_params": {"query": "q", "top_k": 5},
                                                      "output_vars": ["chunks"]}},
    {"seq_no": 1, "type": "calling", "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": "Answer.", "context": "${chunks}"},
                                                      "output_vars": ["final_answer"]}},
]


class FixedEmbedder:
    """Random unit vectors, fixed per text (the real model's cost is measured apart)."""

    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for text in texts:
            v = np.random.default_rng(abs(hash(text)) % 2**32).standard_normal(DIM).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def fill(store: RunStore, n: int) -> None:
    embedder = FixedEmbedder()
    for i in range(n):
        goal = f"Question number {i} about the documents?"
        store.library_put({
            "run_id": f"run{i}", "goal": goal, "goal_key": normalise_goal(goal), "metadata": None, "language": "English",
            "label": f"Area {i % 10}", "tools": ["llm_generate", "vector_search"], "plan": PLAN, "reasoning": "Look it up.",
            "final_answer": "An answer.", "score": 8.0, "embedding": [round(float(x), 6) for x in embedder.encode([goal])[0]],
        })


def ms(fn, repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--kb", help="A knowledge base whose ONNX export embeds the goal (default: sentence-transformers).")
    args = parser.parse_args()
    tools = {"llm_generate", "vector_search", "retrieve_knowledge_graph"}
    print(f"{'plans':>7} {'exact hit ms':>13} {'first miss ms':>14} {'miss + 3 examples ms':>21}")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            store = RunStore(Path(folder) / "runs.sqlite")
            fill(store, n)
            library = PlanLibrary(store, FixedEmbedder)
            exact = ms(lambda: library.lookup("question number 7 about the documents", None, tools))
            library._embed("warm")  # the stand-in embedder's own cost is not the library's
            start = time.perf_counter()
            assert library.lookup("Nothing like the others", None, tools) is None
            first = (time.perf_counter() - start) * 1000

            def miss() -> None:
                assert library.lookup("Something else entirely", None, tools) is None
                assert len(library.examples("Something else entirely", {"label_path": ["Area 3"]}, tools)) == 3

            missed = ms(miss)
            print(f"{n:>7,} {exact:>13.2f} {first:>14.1f} {missed:>21.2f}")
            store.close()
    from tools.backends import query_embedder
    from tools.settings import Settings

    settings = Settings(kb=args.kb) if args.kb else Settings()
    embedder = query_embedder(settings) if args.kb else __import__("tools.kb.embedding", fromlist=["Embedder"]).Embedder()
    embedder.encode(["warm up"])
    print(f"embedding one goal ({type(embedder).__name__}): {ms(lambda: embedder.encode(['What does the assign instruction do?'])):.1f} ms")


if __name__ == "__main__":
    main()

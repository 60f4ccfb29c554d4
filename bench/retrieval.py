"""Exact vector search latency at 100,000 chunks, and indexing throughput.

    python bench/retrieval.py              # 100,000 synthetic 384-d vectors; index examples/kb
    python bench/retrieval.py --chunks 20000 --queries 100

Search: a LocalKnowledgeBase-shaped matrix of unit vectors (the dimension of all-MiniLM-L6-v2),
queried with exact inner-product top-k (``LocalKnowledgeBase.search`` without the query's own
embedding, which the bench excludes as the target says). Prints p50 and p95 in ms.
Indexing: ``index_folder`` over ``examples/kb`` repeated N times (chunks per second, real model,
the model's loading not counted).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def search_latency(n: int, dim: int, queries: int, top_k: int) -> tuple[float, float]:
    import numpy as np

    from tools.kb.local import LocalKnowledgeBase

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chunks = [{"content": f"chunk {i}", "source_uri": f"doc{i % 100}.md"} for i in range(n)]

    class Fixed:
        """Stands in for the embedder: the bench times the search, not the query's embedding."""

        def __init__(self) -> None:
            self.next = None

        def encode_query(self, query: str):
            return self.next

    kb = LocalKnowledgeBase.__new__(LocalKnowledgeBase)
    kb._version = type("V", (), {"embeddings": vectors, "chunks": chunks})()
    kb.embedder = Fixed()
    times = []
    for q in range(queries):
        query = vectors[(q * 7919) % n] + 0.1 * rng.standard_normal(dim, dtype=np.float32)
        kb.embedder.next = (query / np.linalg.norm(query)).astype(np.float32)
        started = time.perf_counter()
        hits = kb.search("q", top_k)
        times.append(time.perf_counter() - started)
        assert hits[0]["content"] == f"chunk {(q * 7919) % n}"  # exact: the source vector ranks first
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.95)] * 1000


def index_throughput(copies: int) -> tuple[int, float]:
    from tools.kb import Embedder, index_folder

    embedder = Embedder()
    embedder.encode(["warm up"])  # load the model before timing
    docs = Path(__file__).resolve().parent.parent / "examples" / "kb"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "docs"
        for i in range(copies):
            shutil.copytree(docs, src / f"copy{i}")
            for f in (src / f"copy{i}").glob("*.md"):
                f.write_text(f.read_text() + f"\n\nCopy number {i}.\n")
        started = time.perf_counter()
        report = index_folder(src, Path(tmp) / "kb", embedder=embedder)
        return report.chunks, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--copies", type=int, default=25, help="copies of examples/kb to index")
    args = parser.parse_args()
    p50, p95 = search_latency(args.chunks, args.dim, args.queries, args.top_k)
    print(f"exact search, {args.chunks:,} chunks x {args.dim} dims, top {args.top_k}: p50 {p50:.2f} ms, p95 {p95:.2f} ms")
    chunks, seconds = index_throughput(args.copies)
    print(f"indexing {chunks} chunks (with co-occurrence graph): {seconds:.1f} s, {chunks / seconds:.0f} chunks/s", flush=True)


if __name__ == "__main__":
    main()

"""Vector search: exact at 100,000 chunks, approximate (HNSW) at 1,000,000, and a real index.

    python bench/retrieval.py                       # all three (the 1M build takes minutes)
    python bench/retrieval.py --skip-ann --copies 0 # exact search only
    python bench/retrieval.py --ann-chunks 200000   # a smaller approximate case

* Exact: ``LocalKnowledgeBase.search`` over N synthetic 384-d unit vectors (the dimension of
  all-MiniLM-L6-v2), the query's own embedding left out. p50 and p95 in ms.
* Approximate: a knowledge base of ``--ann-chunks`` chunks written to disk with their vectors
  and the HNSW index that ``planvm index`` builds above ``ann_threshold``; then, in a fresh
  process, the knowledge base is opened (vectors memory-mapped, chunks read on demand) and
  searched: recall@10 against exact search, p50/p95, and the process's peak memory.
  The vectors have a 32-dimensional structure (see ``unit_vectors``); queries are stored
  vectors moved by noise.
* Indexing: ``index_folder`` over ``examples/kb`` copied N times (chunks per second, the model's
  loading not counted). ``bench/index.py`` measures indexing against the embedder itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import peak_mb  # noqa: E402


def unit_vectors(n: int, dim: int, seed: int = 0):
    """Unit vectors with the structure of sentence embeddings: a 32-dimensional latent point,
    mapped into ``dim`` dimensions by a fixed random projection, plus noise. (Real embeddings of
    text lie near such a low-dimensional surface; vectors spread uniformly over the sphere have
    no meaningful neighbours, for any index.)"""
    import numpy as np

    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((32, dim), dtype=np.float32)
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in slices, to keep the bench's own memory small
        stop = min(n, start + 100_000)
        block = rng.standard_normal((stop - start, 32), dtype=np.float32) @ projection
        block += 0.3 * rng.standard_normal((stop - start, dim), dtype=np.float32)
        vectors[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return vectors


def queries(vectors, count: int, seed: int = 1):
    """Stored vectors moved by noise of norm ~0.3 (cosine ~0.95 to where they came from)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    dim = vectors.shape[1]
    noise = rng.standard_normal((count, dim), dtype=np.float32) * np.float32(0.3 / np.sqrt(dim))
    picked = vectors[rng.integers(0, len(vectors), count)] + noise
    return (picked / np.linalg.norm(picked, axis=1, keepdims=True)).astype(np.float32)  # as an embedder returns


class Fixed:
    """Stands in for the embedder: the bench times the search, not the query's embedding."""

    next = None

    def encode_query(self, query: str):
        return self.next


def search_latency(n: int, dim: int, count: int, top_k: int) -> tuple[float, float]:
    from tools.kb.local import LocalKnowledgeBase

    vectors = unit_vectors(n, dim)
    chunks = [{"content": f"chunk {i}", "source_uri": f"doc{i % 100}.md"} for i in range(n)]
    kb = LocalKnowledgeBase.__new__(LocalKnowledgeBase)
    kb._version = type("V", (), {"embeddings": vectors, "chunks": chunks})()
    kb._ann = None
    kb.embedder = Fixed()
    times = []
    for q in queries(vectors, count):
        kb.embedder.next = q
        started = time.perf_counter()
        kb.search("q", top_k)
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.95)] * 1000


def build_large(folder: Path, n: int, dim: int) -> float:
    """A knowledge-base version on disk with n chunks, as ``planvm index`` writes one; returns
    the seconds the HNSW build took."""
    import numpy as np

    from tools.kb.store import ANN_FILE, build_ann, write_chunks

    version = folder / "v-bench"
    version.mkdir(parents=True)
    vectors = unit_vectors(n, dim)
    write_chunks(version, [{"content": f"chunk {i}", "source_uri": f"doc{i % 1000}.md"} for i in range(n)])
    np.save(version / "embeddings.npy", vectors)
    np.save(folder / "queries.npy", queries(vectors, 200))
    started = time.perf_counter()
    build_ann(vectors, version / ANN_FILE)
    seconds = time.perf_counter() - started
    np.save(version / "relationship_embeddings.npy", np.zeros((0, dim), dtype=np.float32))
    (version / "graph_parts.json").write_text("{}")
    (version / "graph.json").write_text('{"entities": [], "relationships": []}')
    manifest = {"format": "planvm-kb/1", "model": "bench", "dimension": dim, "files": {}, "ann_threshold": 1}
    (version / "manifest.json").write_text(json.dumps(manifest))
    (folder / "CURRENT").write_text("v-bench")
    return seconds


def search_large(folder: str, count: int, top_k: int) -> None:
    """In a fresh process: open the knowledge base, search it, compare with exact search (for the
    default search breadth, then a few others to show the trade-off)."""
    import numpy as np

    from tools.kb.local import LocalKnowledgeBase
    from tools.kb.store import EXPANSION_SEARCH

    started = time.perf_counter()
    kb = LocalKnowledgeBase(folder, embedder=type("E", (Fixed,), {"model_name": "bench"})())
    opened = time.perf_counter() - started
    assert kb._ann is not None
    asked = np.load(Path(folder) / "queries.npy")[:count]
    vectors = kb._version.embeddings  # memory-mapped
    exact: list[set[int]] | None = None
    for q in asked:  # one untimed pass: a service searches with its index pages already in memory
        kb.embedder.next = q
        kb.search("q", top_k)
    for breadth in (EXPANSION_SEARCH, 64, 96, 128):
        kb._ann._index.expansion_search = breadth
        times, found = [], []
        for q in asked:
            kb.embedder.next = q
            started = time.perf_counter()
            hits = kb.search("q", top_k)
            times.append(time.perf_counter() - started)
            found.append({int(h["content"].split()[1]) for h in hits})
        if exact is None:
            peak_search = peak_mb()  # before the exact checks below touch every vector (warm-up included)
            exact = [set(np.argpartition(-(vectors @ q), top_k)[:top_k].tolist()) for q in asked]
        recall = sum(len(e & f) for e, f in zip(exact, found, strict=True)) / (top_k * len(asked))
        times.sort()
        label = "default" if breadth == EXPANSION_SEARCH else "       "
        print(
            f"approximate search ({label} expansion_search={breadth}), {len(vectors):,} chunks: recall@{top_k} "
            f"{recall:.3f}, p50 {times[len(times) // 2] * 1000:.2f} ms, p95 {times[int(len(times) * 0.95)] * 1000:.2f} ms",
            flush=True,
        )
    print(f"opened in {opened:.2f} s; peak memory while searching {peak_search:.0f} MB", flush=True)


def index_throughput(copies: int) -> tuple[int, float]:
    from tools.kb import Embedder, index_folder

    embedder = Embedder()
    embedder.encode(["warm up"])  # load the model before timing
    docs = ROOT / "examples" / "kb"
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
    parser.add_argument("--chunks", type=int, default=100_000, help="exact search size")
    parser.add_argument("--ann-chunks", type=int, default=1_000_000, help="approximate search size")
    parser.add_argument("--skip-ann", action="store_true")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--copies", type=int, default=25, help="copies of examples/kb to index (0: skip)")
    parser.add_argument("--search-large", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.search_large:
        search_large(args.search_large, args.queries, args.top_k)
        return
    p50, p95 = search_latency(args.chunks, args.dim, args.queries, args.top_k)
    print(f"exact search, {args.chunks:,} chunks x {args.dim} dims, top {args.top_k}: p50 {p50:.2f} ms, p95 {p95:.2f} ms", flush=True)
    if not args.skip_ann:
        with tempfile.TemporaryDirectory() as tmp:
            seconds = build_large(Path(tmp) / "kb", args.ann_chunks, args.dim)
            size = (Path(tmp) / "kb" / "v-bench" / "ann.usearch").stat().st_size / 2**20
            print(f"HNSW build, {args.ann_chunks:,} x {args.dim}: {seconds:.0f} s on this machine, {size:.0f} MB on disk", flush=True)
            subprocess.run([sys.executable, __file__, "--search-large", str(Path(tmp) / "kb"), "--queries", str(args.queries)], check=True)
    if args.copies:
        chunks, seconds = index_throughput(args.copies)
        print(f"indexing {chunks} chunks (with co-occurrence graph): {seconds:.1f} s, {chunks / seconds:.0f} chunks/s", flush=True)


if __name__ == "__main__":
    main()

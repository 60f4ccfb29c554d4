"""How a knowledge-base version keeps its chunks and vectors so that opening it reads little.

* ``chunks.jsonl`` holds one chunk a line; ``chunks.offsets.npy`` the byte offset of each line.
  :class:`ChunkFile` reads a chunk only when it is asked for (by position or slice), so a
  million-chunk knowledge base opens without parsing a million JSON objects.
* ``embeddings.npy`` is memory-mapped: the operating system pages in what a search touches.
* Above ``ann_threshold`` chunks (default 200,000), ``ann.usearch`` is an HNSW graph (usearch)
  over the same vectors, built when indexing and memory-mapped when searching: a search visits a
  few thousand vectors instead of all of them. Below it, search stays exact.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

__all__ = ["ANN_FILE", "DEFAULT_ANN_THRESHOLD", "AnnIndex", "ChunkFile", "build_ann", "write_chunks"]

ANN_FILE = "ann.usearch"
DEFAULT_ANN_THRESHOLD = 200_000
#: HNSW settings: links per node, and candidates kept while building and while searching. The
#: graph keeps its copy of the vectors as 8-bit integers (a quarter of the memory, and faster to
#: compare; the search re-scores its candidates with the stored float32 vectors).
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 160


def write_chunks(folder: Path, chunks: Sequence[dict[str, Any]]) -> None:
    """``chunks.jsonl`` and its line offsets."""
    import numpy as np

    offsets = np.zeros(len(chunks), dtype=np.int64)
    position = 0
    with (folder / "chunks.jsonl").open("wb") as f:
        for i, chunk in enumerate(chunks):
            line = (json.dumps(chunk, ensure_ascii=False) + "\n").encode("utf-8")
            offsets[i] = position
            f.write(line)
            position += len(line)
    np.save(folder / "chunks.offsets.npy", offsets)


class ChunkFile(Sequence[dict[str, Any]]):
    """The chunks of a version, read from disk on demand (a read-only sequence of dicts)."""

    def __init__(self, folder: Path) -> None:
        import numpy as np

        self.path = folder / "chunks.jsonl"
        offsets = folder / "chunks.offsets.npy"
        if offsets.is_file():
            self._offsets = np.load(offsets, mmap_mode="r")
        else:  # a version written before offsets were kept: find the line starts once
            self._offsets = np.array(_line_starts(self.path), dtype=np.int64)
        self._handle = self.path.open("rb")
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._offsets)

    def _read(self, index: int) -> dict[str, Any]:
        with self._lock:
            self._handle.seek(int(self._offsets[index]))
            return json.loads(self._handle.readline())

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self._read(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._read(index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self.path.open("rb") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def _line_starts(path: Path) -> list[int]:
    starts, position = [], 0
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                starts.append(position)
            position += len(line)
    return starts


def build_ann(vectors: Any, path: Path, *, threads: int = 0) -> None:
    """Write an HNSW index (cosine, on unit vectors the inner product) of ``vectors`` to ``path``."""
    import numpy as np
    from usearch.index import Index

    # Cosine equals the inner product on unit vectors; usearch's 8-bit storage works with cosine.
    index = Index(ndim=vectors.shape[1], metric="cos", dtype="i8", connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD)
    index.add(np.arange(len(vectors), dtype=np.uint64), np.ascontiguousarray(vectors, dtype=np.float32), threads=threads)
    index.save(str(path))


class AnnIndex:
    """A memory-mapped HNSW index over ``vectors``: approximate top-k by cosine.

    The graph's 8-bit comparisons pick ``2 * k`` candidates; the stored float32 ``vectors``
    (memory-mapped) score them exactly, which fixes their order and their scores.
    """

    def __init__(self, path: Path, vectors: Any, *, expansion_search: int = EXPANSION_SEARCH) -> None:
        from usearch.index import Index

        self._index = Index.restore(str(path), view=True)
        self._index.expansion_search = expansion_search
        self._vectors = vectors

    def search(self, query: Any, k: int) -> tuple[Any, Any]:
        """(positions, cosine scores), best first."""
        import numpy as np

        query = np.asarray(query, dtype=np.float32)
        found = self._index.search(query, min(len(self._vectors), 2 * k))
        rows = np.sort(found.keys.astype(np.int64))  # ascending: one pass over the memory-mapped file
        exact = np.asarray(self._vectors[rows]) @ query
        order = np.argsort(-exact)[:k]
        return rows[order], exact[order]

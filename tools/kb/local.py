"""The embedded knowledge base: chunks, embeddings and a knowledge graph in one folder.

Layout of ``KB/``::

    CURRENT                 the name of the live version folder (replaced atomically)
    v-<time>-<id>/          one complete version:
        manifest.json       model, chunking, and per source file its hash and chunk rows
        chunks.jsonl        {content, source_uri, heading, position} per chunk
        chunks.offsets.npy  where each line of chunks.jsonl starts (chunks are read on demand)
        embeddings.npy      float32 [chunks, dim], L2-normalised (memory-mapped when searching)
        ann.usearch         above ann_threshold chunks: an HNSW index of the embeddings
        graph_parts.json    the graph extracted from each file (reused when the file is unchanged)
        graph.json          the merged graph {entities, relationships}
        relationship_embeddings.npy

A new version is written in a temporary folder, then ``CURRENT`` is switched with one atomic
rename: a crash while indexing leaves the previous version live and intact. Re-indexing embeds
and extracts only new or changed files.

    embedder.ref            the name of the embedding model's ONNX export in the machine's shared cache
                            (see tools.kb.onnx_embedding), for queries without torch

Search is exact below ``ann_threshold`` chunks (one matrix-vector product over all chunk vectors)
and approximate (HNSW, usearch) above it; see ``bench/retrieval.py`` and :mod:`tools.kb.store`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tools.kb.documents import (
    DEFAULT_INCLUDE,
    DEFAULT_MAX_FILE_BYTES,
    Chunk,
    chunk_document,
    embedding_text,
    find_documents,
    read_document,
)
from tools.kb.embedding import Embedder
from tools.kb.graph import CooccurrenceExtractor, Graph, GraphData
from tools.kb.lexical import LexicalIndex, fuse
from tools.kb.onnx_embedding import embedder_for, export_onnx, load_exported
from tools.kb.store import (
    ANN_FILE,
    DEFAULT_ANN_THRESHOLD,
    AnnIndex,
    ChunkFile,
    build_ann,
    write_chunks,
)
from vm.errors import BackendUnavailable, BadInput

__all__ = ["ByLengthEmbedder", "IndexReport", "LocalKnowledgeBase", "import_graph", "index_folder"]

log = logging.getLogger("planvm.kb")
#: Above this many chunks, search uses the embeddings alone (the BM25 index is held in memory).
LEXICAL_LIMIT = 200_000
FORMAT = "planvm-kb/1"
#: How documents are cut into chunks; a knowledge base chunked otherwise is chunked again when re-indexed.
CHUNKER = "structure/1"
Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass
class IndexReport:
    path: Path
    files_indexed: int = 0
    files_reused: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    chunks: int = 0
    chunks_embedded: int = 0
    entities: int = 0
    relationships: int = 0
    seconds: float = 0.0


# --- versions on disk ------------------------------------------------------------------------------


def _current(kb: Path) -> Path | None:
    pointer = kb / "CURRENT"
    if not pointer.is_file():
        return None
    version = kb / pointer.read_text(encoding="utf-8").strip()
    return version if version.is_dir() else None


def has_version(kb: Path) -> bool:
    """Whether ``kb`` holds a published knowledge base."""
    return _current(Path(kb)) is not None


def _publish(kb: Path, staged: Path) -> None:
    """Make ``staged`` the live version (atomic), then remove older versions."""
    final = kb / staged.name.removesuffix(".tmp")
    staged.rename(final)
    pointer_tmp = kb / f"CURRENT.{uuid.uuid4().hex}.tmp"
    pointer_tmp.write_text(final.name, encoding="utf-8")
    os.replace(pointer_tmp, kb / "CURRENT")
    for old in kb.glob("v-*"):
        if old.is_dir() and old.name != final.name and not old.name.endswith(".tmp"):
            shutil.rmtree(old, ignore_errors=True)


#: A staging folder this old belongs to an indexing that was killed (writing one takes seconds).
_STALE_SECONDS = 15 * 60


def _remove_stale(kb: Path) -> None:
    """Remove what killed indexings left: ``v-*.tmp`` folders and ``CURRENT.*.tmp`` files."""
    cutoff = time.time() - _STALE_SECONDS
    for leftover in [*kb.glob("v-*.tmp"), *kb.glob("CURRENT.*.tmp")]:
        try:
            if leftover.stat().st_mtime < cutoff:
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
        except OSError:
            continue


def _stage(kb: Path) -> Path:
    kb.mkdir(parents=True, exist_ok=True)
    _remove_stale(kb)
    staged = kb / f"v-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}.tmp"
    staged.mkdir()
    return staged


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


@dataclass
class _Version:
    manifest: dict[str, Any]
    chunks: Any  # a ChunkFile: a sequence of chunk dicts read on demand
    embeddings: Any
    parts: dict[str, dict[str, Any]]
    graph: Graph
    rel_embeddings: Any
    folder: Path


def _read_version(kb: Path, folder: Path) -> _Version:
    import numpy as np

    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            raise ValueError(f"unknown format {manifest.get('format')!r}")
        chunks = ChunkFile(folder)
        embeddings = np.load(folder / "embeddings.npy", mmap_mode="r")
        parts = json.loads((folder / "graph_parts.json").read_text(encoding="utf-8"))
        graph = Graph()
        graph.merge(GraphData.model_validate_json((folder / "graph.json").read_text(encoding="utf-8")))
        rel_embeddings = np.load(folder / "relationship_embeddings.npy", mmap_mode="r")
        dim = int(manifest["dimension"])
        if embeddings.shape != (len(chunks), dim) or rel_embeddings.shape != (len(graph.relationships), dim):
            raise ValueError("the vectors do not match the chunks or relationships")
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        raise BackendUnavailable(
            f"the knowledge base at {kb} is damaged ({exc}); rebuild it with `planvm index DIR --kb {kb}`"
        ) from exc
    return _Version(manifest, chunks, embeddings, parts, graph, rel_embeddings, folder)


def _merge_graph(parts: dict[str, dict[str, Any]]) -> Graph:
    graph = Graph()
    for key in sorted(parts):
        graph.merge(GraphData.model_validate(parts[key]))
    return graph


def _write_version(
    kb: Path,
    manifest: dict[str, Any],
    chunks: list[dict[str, Any]],
    embeddings: Any,
    parts: dict[str, dict[str, Any]],
    embedder: Embedder,
    previous: _Version | None,
    context: dict[str, Any] | None = None,
    ann_threshold: int | None = DEFAULT_ANN_THRESHOLD,
) -> tuple[Graph, Path]:
    import numpy as np

    graph = _merge_graph(parts)
    known: dict[str, Any] = {}
    if previous is not None:
        known = dict(zip(previous.graph.relationship_texts(), previous.rel_embeddings, strict=True))
    if graph.relationships:
        rel_embeddings = graph.relationship_vectors(embedder.encode, known, context)
    else:
        rel_embeddings = np.zeros((0, embedder.dimension), dtype=np.float32)
    staged = _stage(kb)
    try:
        write_chunks(staged, chunks)
        np.save(staged / "embeddings.npy", np.ascontiguousarray(embeddings, dtype=np.float32))
        if ann_threshold is not None and len(chunks) >= ann_threshold:
            build_ann(embeddings, staged / ANN_FILE)
        _write_json(staged / "graph_parts.json", parts)
        (staged / "graph.json").write_text(graph.to_data().model_dump_json(), encoding="utf-8")
        np.save(staged / "relationship_embeddings.npy", np.ascontiguousarray(rel_embeddings, dtype=np.float32))
        _write_json(staged / "manifest.json", manifest)  # last: a version without it is incomplete
        _publish(kb, staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return graph, kb / staged.name.removesuffix(".tmp")


# --- building -----------------------------------------------------------------------------------------


class ByLengthEmbedder:
    """Embeds short texts with the ONNX export and long ones with sentence-transformers: the two
    give the same vectors (tested), and on a CPU ONNX Runtime is faster on short sequences (a
    third less time on one-sentence files) and PyTorch on long ones (bench/index.py)."""

    SHORT_CHARS = 400

    def __init__(self, full: Embedder, exported: Any) -> None:
        self.full = full
        self.exported = exported
        self.model_name = full.model_name
        self.dimension = exported.dimension
        self.window = exported.window

    def token_count(self, text: str) -> int:
        return self.exported.token_count(text)

    def encode(self, texts: list[str]) -> Any:
        import numpy as np

        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        short = [i for i, t in enumerate(texts) if len(t) < self.SHORT_CHARS]
        long = [i for i, t in enumerate(texts) if len(t) >= self.SHORT_CHARS]
        for runtime, rows in ((self.exported, short), (self.full, long)):
            if rows:
                out[rows] = runtime.encode([texts[i] for i in rows])
        return out


def index_folder(
    source: str | Path,
    kb: str | Path,
    *,
    embedder: Embedder | None = None,
    include: tuple[str, ...] = DEFAULT_INCLUDE,
    exclude: tuple[str, ...] = (),
    chunk_size: int = 1000,
    overlap: int = 150,
    extractor: Any = "cooccurrence",
    progress: Progress | None = None,
    follow_symlinks: bool = False,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ann_threshold: int | None = DEFAULT_ANN_THRESHOLD,
) -> IndexReport:
    """Index the documents under ``source`` into the knowledge base folder ``kb``.

    With ``ann_threshold`` chunks or more (None: never), an approximate (HNSW) index is built
    too, and searches use it.

    Files are found by :func:`tools.kb.documents.find_documents` (no symbolic links unless
    ``follow_symlinks``; files over ``max_file_bytes`` or with names that are not UTF-8 are
    skipped, each logged once as a warning and listed in ``report.skipped``).

    ``extractor``: ``"cooccurrence"``, ``None`` (no graph), or an object with
    ``extract(text, source) -> GraphData`` (e.g. ``LLMExtractor(llm)``).
    """
    import numpy as np

    started = time.monotonic()
    source, kb = Path(source), Path(kb)
    if not source.is_dir():
        raise BackendUnavailable(f"{source} is not a folder; pass the folder of documents to index")
    embedder = embedder or Embedder()
    if isinstance(embedder, Embedder) and export_onnx(embedder, kb):
        exported = load_exported(kb, embedder.model_name)
        if exported is not None:  # the same vectors either way: each text goes to the faster runtime
            embedder = ByLengthEmbedder(embedder, exported)
        from tools.kb.reader import prepare_reader

        prepare_reader()  # the answer reader's export, built once per machine here so the first answer need not wait
    report = IndexReport(path=kb)
    paths = find_documents(
        source, include, exclude, follow_symlinks=follow_symlinks, max_file_bytes=max_file_bytes, skipped=report.skipped
    )
    for rel, reason in report.skipped:
        log.warning("skipped %s: %s", rel, reason)
    if not paths:
        raise BackendUnavailable(
            f"no documents in {source} match {', '.join(include)}"
            + (f" (excluding {', '.join(exclude)})" if exclude else "")
            + "; check the folder or the --include / --exclude globs"
        )
    extractor_name = "none" if extractor is None else (extractor if isinstance(extractor, str) else type(extractor).__name__)
    graph_extractor = CooccurrenceExtractor() if extractor == "cooccurrence" else extractor
    sentences_from_text = isinstance(graph_extractor, CooccurrenceExtractor)
    sentence_chunk: dict[str, int] = {}  # relation sentence -> the chunk it was read from
    previous: _Version | None = None
    current = _current(kb)
    if current is not None:
        try:
            previous = _read_version(kb, current)
        except BackendUnavailable as exc:
            log.warning("%s; indexing everything again", exc)
    same_setup = previous is not None and all(
        previous.manifest.get(k) == v
        for k, v in (("model", embedder.model_name), ("chunk_size", chunk_size), ("overlap", overlap),
                     ("graph_extractor", extractor_name), ("chunker", CHUNKER))
    )
    old_files = previous.manifest.get("files", {}) if previous is not None and same_setup else {}

    chunks: list[dict[str, Any]] = []
    rows: list[Any] = []  # per chunk: an old embedding row, or None (to embed)
    parts: dict[str, dict[str, Any]] = {k: v for k, v in (previous.parts.items() if previous and same_setup else []) if k.startswith("import:")}
    files: dict[str, dict[str, Any]] = {}
    for done, path in enumerate(paths, 1):
        rel = path.relative_to(source).as_posix()
        try:
            doc = read_document(path, rel)
        except (ValueError, OSError) as exc:
            report.skipped.append((rel, str(exc)))
            log.warning("skipped %s: %s", rel, exc)
            continue
        old = old_files.get(rel)
        if old is not None and old["sha256"] == doc.sha256 and previous is not None:
            first, count = old["first"], old["count"]
            files[rel] = {"sha256": doc.sha256, "first": len(chunks), "count": count}
            chunks.extend(previous.chunks[first : first + count])
            rows.extend(previous.embeddings[first : first + count])
            if rel in previous.parts:
                parts[rel] = previous.parts[rel]
            report.files_reused += 1
        else:
            pieces: list[Chunk] = chunk_document(doc, chunk_size, overlap, count_tokens=embedder.token_count,
                                                 max_tokens=embedder.window)
            files[rel] = {"sha256": doc.sha256, "first": len(chunks), "count": len(pieces)}
            chunks.extend({"content": c.content, "source_uri": c.source_uri, "heading": c.heading, "position": c.position} for c in pieces)
            rows.extend([None] * len(pieces))
            if graph_extractor is not None:
                part = Graph()
                first_chunk = len(chunks) - len(pieces)
                for offset, c in enumerate(pieces):
                    data = graph_extractor.extract(c.content, c.source_uri)
                    if sentences_from_text:  # the relation is a sentence of this chunk
                        for r in data.relationships:
                            sentence_chunk.setdefault(" ".join(r.relationship.split()), first_chunk + offset)
                    part.merge(data)
                parts[rel] = part.to_data().model_dump()
            report.files_indexed += 1
        if progress:
            progress("files", done, len(paths))
    if not chunks:
        raise BackendUnavailable(f"none of the files in {source} could be read (skipped: {len(report.skipped)}); nothing to index")

    todo = [i for i, r in enumerate(rows) if r is None]
    vectors = np.zeros((len(chunks), embedder.dimension), dtype=np.float32)
    for i, r in enumerate(rows):
        if r is not None:
            vectors[i] = r
    too_long = 0
    batch = 256
    for start in range(0, len(todo), batch):
        ids = todo[start : start + batch]
        texts = [embedding_text(chunks[i].get("heading", ""), chunks[i]["content"]) for i in ids]
        too_long += sum(1 for t in texts if len(t) > embedder.window * 3 and embedder.token_count(t) > embedder.window)
        vectors[ids] = embedder.encode(texts)
        if progress:
            progress("chunks", min(start + batch, len(todo)), len(todo))
    if too_long:
        log.warning("%d chunks are longer than the embedding model's window of %d tokens; they were embedded from their start (use a smaller --chunk-size)", too_long, embedder.window)
    manifest = {
        "format": FORMAT,
        "model": embedder.model_name,
        "dimension": embedder.dimension,
        "chunk_size": chunk_size,
        "overlap": overlap,
        "graph_extractor": extractor_name,
        "chunker": CHUNKER,
        "source": str(source.resolve()),
        "created_at": time.time(),
        "files": files,
        "ann_threshold": ann_threshold,
    }
    context = {sentence: vectors[i] for sentence, i in sentence_chunk.items()}
    graph, _folder = _write_version(
        kb, manifest, chunks, vectors, parts, embedder, previous if same_setup else None, context, ann_threshold
    )
    report.chunks = len(chunks)
    report.chunks_embedded = len(todo)
    report.entities = len(graph.names)
    report.relationships = len(graph.relationships)
    report.seconds = time.monotonic() - started
    return report


def import_graph(kb: str | Path, file: str | Path, *, embedder: Embedder | None = None) -> IndexReport:
    """Add the graph in ``file`` (``{entities, relationships}`` JSON) to the knowledge base."""
    import numpy as np

    kb, file = Path(kb), Path(file)
    expected = (
            'expected {"entities": [{name, description}], "relationships": [{source_entity, target_entity, '
            'relationship}]}'
    )
    try:
        data = GraphData.model_validate_json(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackendUnavailable(f"{file}: no such file") from None
    except OSError as exc:
        raise BackendUnavailable(f"{file}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise BackendUnavailable(f"{file} is not UTF-8 text; {expected}") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(map(str, first["loc"])) or "the document"
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise BackendUnavailable(f"{file} is not a graph: {where}: {first['msg']}{more}; {expected}") from None
    current = _current(kb)
    previous = _read_version(kb, current) if current is not None else None
    embedder = embedder or Embedder(previous.manifest["model"] if previous else None)
    if previous is not None:
        manifest, chunks, vectors, parts = dict(previous.manifest), previous.chunks, previous.embeddings, dict(previous.parts)
    else:
        manifest = {"format": FORMAT, "model": embedder.model_name, "dimension": embedder.dimension, "chunk_size": None,
                    "overlap": None, "graph_extractor": "none", "source": None, "created_at": time.time(), "files": {}}
        chunks, vectors, parts = [], np.zeros((0, embedder.dimension), dtype=np.float32), {}
    parts[f"import:{file.name}"] = data.model_dump()
    threshold = manifest.get("ann_threshold", DEFAULT_ANN_THRESHOLD)
    graph, _ = _write_version(kb, manifest, chunks, vectors, parts, embedder, previous, ann_threshold=threshold)
    return IndexReport(path=kb, chunks=len(chunks), entities=len(graph.names), relationships=len(graph.relationships))


# --- searching ----------------------------------------------------------------------------------------


class LocalKnowledgeBase:
    """``search`` and ``graph`` over a knowledge-base folder (a ``tools.KnowledgeBase``)."""

    def __init__(self, path: str | Path, *, embedder: Embedder | None = None) -> None:
        self.path = Path(path)
        current = _current(self.path)
        if current is None:
            raise BackendUnavailable(
                f"no knowledge base at {self.path}; build one with `planvm index DIR --kb {self.path}`"
            )
        self._version = _read_version(self.path, current)
        if self._version.manifest.get("chunker") != CHUNKER and self._version.manifest.get("files"):
            log.warning("the knowledge base at %s was cut into chunks by an older version (front matter read as text, code "
                        "blocks apart from their sentences); re-run `planvm index` on its folder for better answers", self.path)
        model = self._version.manifest["model"]
        # Queries are embedded by the ONNX export made when indexing (no torch import), if there is one.
        self.embedder = embedder or embedder_for(self.path, model)
        if embedder is not None and embedder.model_name != model:
            raise BackendUnavailable(f"the knowledge base at {self.path} was indexed with {model!r}, not {embedder.model_name!r}")
        self._ann = self._open_ann(self._version.folder / ANN_FILE)
        self._lexical: LexicalIndex | None = None

    def _open_ann(self, path: Path) -> AnnIndex | None:
        if not path.is_file():
            return None
        try:
            return AnnIndex(path, self._version.embeddings)
        except ImportError:
            log.warning("the knowledge base at %s has an approximate index, but usearch is not installed; searching "
                        "exactly (pip install 'planvm[kb]')", self.path)
            return None

    @property
    def size(self) -> int:
        return len(self._version.chunks)

    def search(self, query: str, top_k: int = 10) -> list[dict[str, Any]]:
        """The ``top_k`` chunks for ``query``: the embedding ranking and BM25's fused (reciprocal
        ranks); each hit's ``score`` is its cosine similarity to the query, and ``absent`` (when
        there are any) lists the query's words that no chunk of the knowledge base holds."""
        import numpy as np

        if not query.strip():
            raise BadInput("the query is empty; say what to look for")
        vectors = self._version.embeddings
        if len(vectors) == 0 or top_k <= 0:
            return []
        query_vector = self.embedder.encode_query(query)
        k = min(top_k, len(vectors))
        pool = min(len(vectors), max(4 * k, 20))
        if self._ann is not None:
            best, _ = self._ann.search(query_vector, pool)
        else:
            scores = vectors @ query_vector  # exact cosine: rows and query are unit vectors
            best = np.argpartition(scores, len(scores) - pool)[len(scores) - pool :]
            best = best[np.argsort(-scores[best])]
        dense = [int(i) for i in best]
        lexical = self.lexical()
        ranked = fuse([dense, [i for i, _ in lexical.search(query, pool)]], k) if lexical is not None else dense[:k]
        chunks = self._version.chunks
        absent = lexical.absent(query) if lexical is not None else []
        hits = []
        for i in ranked:
            chunk = chunks[i]
            hit = {"content": chunk["content"], "source_uri": chunk["source_uri"], "heading": chunk.get("heading", ""),
                   "score": round(float(vectors[i] @ query_vector), 4)}
            if absent:
                hit["absent"] = absent  # words of the query that no chunk of the knowledge base holds
            hits.append(hit)
        return hits

    def lexical(self) -> LexicalIndex | None:
        """The BM25 index of the chunks (built on first use; None above ``LEXICAL_LIMIT`` chunks)."""
        if self._lexical is None and len(self._version.chunks) <= LEXICAL_LIMIT:
            chunks = self._version.chunks
            self._lexical = LexicalIndex(embedding_text(c.get("heading", ""), c["content"]) for c in chunks[0 : len(chunks)])
        return self._lexical

    def graph(self, query: str) -> dict[str, Any]:
        import numpy as np

        if not query.strip():
            raise BadInput("the query is empty; say what to look for")
        graph = self._version.graph
        if not graph.relationships:
            return {"entities": [], "relationships": []}
        scores = self._version.rel_embeddings @ self.embedder.encode_query(query)
        ranked = [int(i) for i in np.argsort(-scores)[:200]]
        return graph.neighbourhood(ranked)

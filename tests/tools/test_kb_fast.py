"""The fast knowledge base: ONNX query embeddings equal the indexing model's, old knowledge bases
still open, approximate search keeps its recall, and the on-disk layout survives re-indexing and
crashes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT

from tools.kb import Embedder, LocalKnowledgeBase, index_folder
from tools.kb import local as kb_local
from tools.kb.onnx_embedding import EXPORT_FOLDER, REFERENCE_FILE, OnnxEmbedder, cache_root, load_exported
from tools.kb.store import ANN_FILE, AnnIndex, ChunkFile, build_ann

QUERIES = [
    "How do I resume a killed run?",
    "What is the capital of France?",
    "jmp",
    "Wie funktioniert das Training des Planers?",
    "计划如何结束？",
    "final_answer ends the run " * 80,  # longer than the model's window
    "",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def kb(tmp_path_factory, embedder):
    folder = tmp_path_factory.mktemp("fastkb") / "kb"
    index_folder(EXAMPLES / "kb", folder, embedder=embedder)
    return folder


def test_onnx_query_vectors_equal_the_indexing_models(kb, embedder):
    exported = load_exported(kb, embedder.model_name)
    assert isinstance(exported, OnnxEmbedder) and exported.dimension == embedder.dimension
    onnx_vectors = exported.encode(QUERIES)
    torch_vectors = embedder.encode(QUERIES)
    cosines = (onnx_vectors * torch_vectors).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines
    assert np.allclose(np.linalg.norm(onnx_vectors, axis=1), 1.0, atol=1e-5)


def test_searching_uses_the_export_and_finds_the_same_chunks(kb, embedder):
    fast = LocalKnowledgeBase(kb)
    assert isinstance(fast.embedder, OnnxEmbedder)
    slow = LocalKnowledgeBase(kb, embedder=embedder)
    for query in QUERIES[:5]:
        assert [h["content"] for h in fast.search(query, 5)] == [h["content"] for h in slow.search(query, 5)]
        assert fast.graph(query) == slow.graph(query)


def test_a_search_in_a_fresh_process_imports_no_torch(kb):
    code = (
        "import sys, runpy; sys.argv = ['planvm', 'search', 'How do runs end?', '--kb', sys.argv[1], '--json'];"
        "from planvm.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'sentence_transformers'))\n"
        "print('HEAVY', heavy, file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(kb)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert json.loads(out.stdout)[0]["content"], out.stderr
    assert "HEAVY []" in out.stderr


def test_a_knowledge_base_indexed_before_exports_and_offsets_still_opens(tmp_path, kb, embedder):
    old = tmp_path / "old"
    shutil.copytree(kb, old)
    (old / REFERENCE_FILE).unlink()  # indexed before the export existed
    version = next(p for p in old.glob("v-*") if p.is_dir())
    (version / "chunks.offsets.npy").unlink()
    opened = LocalKnowledgeBase(old)
    assert isinstance(opened.embedder, Embedder)  # sentence-transformers, as before
    hits = opened.search("How do I resume a killed run?", 3)
    assert "resume" in hits[0]["content"]
    assert len(opened._version.chunks) == LocalKnowledgeBase(kb).size


def test_one_export_per_machine_shared_by_knowledge_bases_and_old_own_exports_still_load(tmp_path, kb, embedder):
    other = tmp_path / "other"
    index_folder(EXAMPLES / "kb", other, embedder=embedder)
    exports = [p for p in cache_root().iterdir() if (p / "model.onnx").is_file()]
    assert len(exports) == 1 and "all-MiniLM-L6-v2-" in exports[0].name
    for folder in (kb, other):  # no knowledge base holds a copy of the model
        assert not list(folder.rglob("*.onnx"))
        assert load_exported(folder).folder.name == exports[0].name  # one model, one key
    old = tmp_path / "old"  # a knowledge base with its own export, from before the shared cache
    shutil.copytree(other, old)
    (old / REFERENCE_FILE).unlink()
    shutil.copytree(exports[0], old / EXPORT_FOLDER)
    assert load_exported(old).folder == old / EXPORT_FOLDER
    assert isinstance(LocalKnowledgeBase(old).embedder, OnnxEmbedder)


def test_chunk_file_reads_on_demand(tmp_path):
    from tools.kb.store import write_chunks

    chunks = [{"content": f"chunk {i} ü", "source_uri": f"{i}.md"} for i in range(50)]
    write_chunks(tmp_path, chunks)
    read = ChunkFile(tmp_path)
    assert len(read) == 50 and read[7] == chunks[7] and read[-1] == chunks[-1] and read[10:13] == chunks[10:13]
    assert list(read) == chunks
    with pytest.raises(IndexError):
        read[50]


# --- approximate search --------------------------------------------------------------------------------


def test_hnsw_recall_at_10_is_at_least_095(tmp_path):
    """20,000 random unit vectors around 200 random topic centres (embeddings of real text cluster
    by topic; vectors spread uniformly over the sphere have no meaningful nearest neighbours, for
    any index), queried near stored vectors."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((200, 384), dtype=np.float32)
    vectors = centres[rng.integers(0, 200, 20_000)] + rng.standard_normal((20_000, 384), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    build_ann(vectors, tmp_path / ANN_FILE)
    index = AnnIndex(tmp_path / ANN_FILE, vectors)
    # queries at cosine ~0.95 from a stored vector, as a question near a passage
    queries = vectors[rng.integers(0, len(vectors), 100)] + np.float32(0.3 / np.sqrt(384)) * rng.standard_normal((100, 384), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    found = 0
    for q in queries:
        keys, scores = index.search(q, 10)
        exact = np.argpartition(-(vectors @ q), 10)[:10]
        found += len(set(keys.tolist()) & set(exact.tolist()))
        assert np.allclose(scores, vectors[keys] @ q, atol=1e-5) and list(scores) == sorted(scores, reverse=True)
    assert found / 1000 >= 0.95


def test_the_threshold_decides_and_the_index_survives_reindexing_and_a_crash(tmp_path, embedder, monkeypatch):
    docs = tmp_path / "docs"
    shutil.copytree(EXAMPLES / "kb", docs)
    plain = tmp_path / "plain"
    index_folder(docs, plain, embedder=embedder)  # default threshold: exact search
    assert not list(plain.glob(f"v-*/{ANN_FILE}")) and LocalKnowledgeBase(plain)._ann is None

    kb = tmp_path / "kb"
    index_folder(docs, kb, embedder=embedder, ann_threshold=5)
    approximate = LocalKnowledgeBase(kb)
    assert approximate._ann is not None
    query = "How do I resume a killed run?"
    assert approximate.search(query, 1)[0]["content"] == LocalKnowledgeBase(plain).search(query, 1)[0]["content"]

    (docs / "extra.md").write_text("# Extra\n\nThe harbour master logs every ship that enters the bay at night.\n")
    index_folder(docs, kb, embedder=embedder, ann_threshold=5)
    again = LocalKnowledgeBase(kb)
    assert again._ann is not None and "harbour master" in again.search("who logs ships in the bay", 1)[0]["content"]

    (docs / "extra.md").write_text("# Extra\n\nThe lighthouse keeper rings a bell.\n")

    def crash(*args, **kwargs):
        raise OSError("disk went away while publishing")

    monkeypatch.setattr(kb_local, "_publish", crash)
    with pytest.raises(OSError):
        index_folder(docs, kb, embedder=embedder, ann_threshold=5)
    monkeypatch.undo()
    survivor = LocalKnowledgeBase(kb)
    assert survivor._ann is not None and "harbour master" in survivor.search("who logs ships in the bay", 1)[0]["content"]
    assert not list(kb.glob("v-*.tmp"))  # the failed staging folder was removed
    assert (kb / REFERENCE_FILE).is_file() and not os.path.isdir(kb / EXPORT_FOLDER)  # the export is shared, not copied


def test_index_progress_lines_when_not_on_a_terminal(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "planvm", "index", str(EXAMPLES / "kb"), "--kb", str(tmp_path / "kb")],
        capture_output=True, text=True, cwd=ROOT, timeout=180, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("indexing: ")]
    assert any("files 4/4" in line for line in lines) and any("chunks" in line for line in lines)
    assert "Traceback" not in out.stderr and "TracerWarning" not in out.stderr


def test_a_staged_export_replaces_an_unusable_target_keeps_a_finished_one_and_leaves_nothing_when_it_fails(tmp_path, monkeypatch):
    from pathlib import Path

    import tools.kb.onnx_embedding as onnx_embedding
    from tools.kb.onnx_embedding import staged_folder

    def usable(folder):
        return (folder / "done").is_file()

    target = tmp_path / "export"
    target.mkdir()
    (target / "half").write_text("stopped midway")  # not usable: replaced
    with staged_folder(target, usable) as staged:
        (staged / "done").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["done"] and not list(tmp_path.glob("*.tmp"))

    with pytest.raises(RuntimeError), staged_folder(tmp_path / "failed", usable) as staged:
        (staged / "partial").write_text("x")
        raise RuntimeError("the exporter failed")
    assert not (tmp_path / "failed").exists() and not list(tmp_path.glob("*.tmp"))

    other = tmp_path / "raced"
    real_replace = os.replace

    def finished_meanwhile(source, destination):  # another process renames its finished export first
        Path(destination).mkdir()
        (Path(destination) / "done").write_text("theirs")
        real_replace(source, destination)

    monkeypatch.setattr(onnx_embedding.os, "replace", finished_meanwhile)
    with staged_folder(other, usable) as staged:
        (staged / "done").write_text("ours")
    assert (other / "done").read_text() == "theirs" and not list(tmp_path.glob("*.tmp"))

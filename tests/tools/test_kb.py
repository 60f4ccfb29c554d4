"""The embedded knowledge base with the real bundled embedding model (no download)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from conftest import EXAMPLES, ScriptedLLM

from tools.kb import Embedder, LocalKnowledgeBase, import_graph, index_folder
from tools.kb.documents import Document, chunk_document, find_documents, read_document
from tools.kb.graph import CooccurrenceExtractor, Graph, GraphData, LLMExtractor, normalise
from vm import BackendUnavailable

DOCS = EXAMPLES / "kb"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    kb = tmp_path_factory.mktemp("kb") / "kb"
    report = index_folder(DOCS, kb)
    return kb, report


# --- documents and chunks -------------------------------------------------------------------------


def test_chunks_are_cut_at_headings_then_paragraphs_then_sentences():
    text = "# Title\n\nIntro.\n\n## Part\n\n" + "A sentence that is here. " * 30 + "\n\nLast paragraph."
    doc = Document("a.md", text, "x")
    chunks = chunk_document(doc, size=200, overlap=40)
    assert chunks[0].heading == "Title" and chunks[0].content == "# Title\n\nIntro."
    assert all(c.heading == "Title > Part" for c in chunks[1:])
    assert all(len(c.content) <= 200 for c in chunks)
    for c in chunks:  # each chunk is the document's own text at its position
        assert text[c.position : c.position + len(c.content)] == c.content
    assert chunks[2].content.startswith("A sentence that is here.")  # overlap: whole sentences
    assert chunks[-1].content.endswith("Last paragraph.")


@pytest.mark.parametrize(("size", "overlap"), [(10, 0), (100, 100), (100, -1)])
def test_bad_chunk_settings(size, overlap):
    with pytest.raises(ValueError):
        chunk_document(Document("a", "text", "x"), size=size, overlap=overlap)


def test_reading_skips_binary_and_undecodable_and_strips_html(tmp_path):
    (tmp_path / "ok.md").write_text("# Hi\n\nText.")
    (tmp_path / "page.html").write_text("<html><head><style>x{}</style></head><body><h2>Head</h2><p>Para &amp; more</p><script>bad()</script></body></html>")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.md").write_text("hidden")
    (tmp_path / "notes.pdf").write_bytes(b"%PDF")
    found = [p.relative_to(tmp_path).as_posix() for p in find_documents(tmp_path)]
    assert found == ["bin.txt", "latin.txt", "ok.md", "page.html"]
    assert read_document(tmp_path / "page.html", "page.html").text == "## Head\n\nPara & more"
    with pytest.raises(ValueError, match="binary"):
        read_document(tmp_path / "bin.txt", "bin.txt")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_document(tmp_path / "latin.txt", "latin.txt")
    assert [p.name for p in find_documents(tmp_path, include=("*.md",), exclude=("ok*",))] == []


# --- indexing ----------------------------------------------------------------------------------------


def test_index_and_search(built):
    kb_path, report = built
    assert report.files_indexed == 4 and report.chunks == report.chunks_embedded > 4
    assert report.entities > 5 and report.relationships > 3
    kb = LocalKnowledgeBase(kb_path)
    hits = kb.search("When does a run end?", top_k=3)
    assert [set(h) - {"absent"} for h in hits] == [{"content", "source_uri", "heading", "score"}] * 3
    assert hits[0]["source_uri"] == "instructions.md" and "final_answer" in hits[0]["content"]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert len(kb.search("anything", top_k=500)) == report.chunks


def test_graph_retrieval_shape_and_bounds(built):
    kb = LocalKnowledgeBase(built[0])
    graph = kb.graph("What does output_vars do?")
    assert set(graph) == {"entities", "relationships"}
    assert graph["relationships"] and len(graph["relationships"]) <= 20 and len(graph["entities"]) <= 30
    names = {e["name"] for e in graph["entities"]}
    assert "output_vars" in names
    for rel in graph["relationships"]:
        assert set(rel) == {"source_entity", "target_entity", "relationship"}
        assert rel["source_entity"] in names and rel["target_entity"] in names


def test_reindex_embeds_only_changed_files(built, tmp_path):
    src = tmp_path / "docs"
    shutil.copytree(DOCS, src)
    kb = tmp_path / "kb"
    first = index_folder(src, kb)
    again = index_folder(src, kb)
    assert (again.files_indexed, again.files_reused, again.chunks_embedded) == (0, 4, 0)
    (src / "cli.md").write_text((src / "cli.md").read_text() + "\n\n## New\n\nThe zebra command feeds zebras.\n")
    (src / "training.md").unlink()
    (src / "extra.txt").write_text("Extra notes about Zebra Tools and Lion Tools in one sentence.")
    changed = index_folder(src, kb)
    assert changed.files_indexed == 2 and changed.files_reused == 2
    assert 0 < changed.chunks_embedded < first.chunks
    top = LocalKnowledgeBase(kb).search("zebra command", top_k=1)[0]
    assert top["source_uri"] == "cli.md" and "zebra" in top["content"]
    assert all(h["source_uri"] != "training.md" for h in LocalKnowledgeBase(kb).search("LoRA rank", top_k=20))
    assert "Zebra Tools" in {e["name"] for e in LocalKnowledgeBase(kb).graph("zebra tools")["entities"]}
    assert len(list(kb.glob("v-*"))) == 1  # old versions removed


def test_a_crash_while_writing_leaves_the_previous_version(tmp_path, monkeypatch):
    kb = tmp_path / "kb"
    index_folder(DOCS, kb)
    before = LocalKnowledgeBase(kb).search("LoRA rank", top_k=1)
    import tools.kb.local as local

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(local, "_publish", boom)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a.md").write_text("Completely different content about Giraffes.")
    with pytest.raises(OSError, match="disk full"):
        index_folder(tmp_path / "new", kb)
    assert LocalKnowledgeBase(kb).search("LoRA rank", top_k=1) == before
    assert not list(kb.glob("*.tmp"))


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty", "no documents in"),
        ("unreadable", "none of the files"),
        ("not_a_folder", "is not a folder"),
    ],
)
def test_index_bad_folders(tmp_path, setup, message):
    src = tmp_path / "src"
    if setup != "not_a_folder":
        src.mkdir()
    if setup == "unreadable":
        (src / "a.txt").write_bytes(b"\x00\x00")
    with pytest.raises(BackendUnavailable, match=message):
        index_folder(src, tmp_path / "kb")


def test_missing_and_damaged_knowledge_base(tmp_path, built):
    with pytest.raises(BackendUnavailable, match="no knowledge base at .*planvm index"):
        LocalKnowledgeBase(tmp_path / "nothing")
    damaged = tmp_path / "damaged"
    shutil.copytree(built[0], damaged)
    version = next(damaged.glob("v-*"))
    (version / "embeddings.npy").write_bytes(b"garbage")
    with pytest.raises(BackendUnavailable, match="is damaged .*rebuild it"):
        LocalKnowledgeBase(damaged)


def test_empty_query_and_long_query(built, caplog):
    kb = LocalKnowledgeBase(built[0])
    with pytest.raises(ValueError, match="query is empty"):
        kb.search("   ")
    with caplog.at_level(logging.WARNING, logger="planvm.kb"):
        hits = kb.search("runs " * 400, top_k=1)
    assert hits and "reads only the first 256" in caplog.text


# --- the graph ----------------------------------------------------------------------------------------


def test_cooccurrence_extractor():
    data = CooccurrenceExtractor().extract(
        "The VM runs plans written by the Planner. TiDB Cloud stores data in TiKV. Use `planvm exec` here. It is fast."
    )
    names = [e.name for e in data.entities]
    assert names == ["VM", "Planner", "TiDB Cloud", "TiKV", "planvm exec"]
    pairs = [(r.source_entity, r.target_entity) for r in data.relationships]
    assert pairs == [("VM", "Planner"), ("TiDB Cloud", "TiKV")]
    assert data.relationships[1].relationship == "TiDB Cloud stores data in TiKV."


def test_entities_are_deduplicated_by_normalised_name():
    graph = Graph()
    graph.merge(GraphData.model_validate({"entities": [{"name": "TiDB", "description": "a database"}, {"name": "`tidb`"}, {"name": "TIDB."}]}))
    assert list(graph.names) == ["tidb"] and graph.descriptions["tidb"] == "a database"
    assert normalise("  “Final  Answer”. ") == "final answer"


def test_llm_extractor_validates_replies(caplog):
    reply = '```json\n{"entities": [{"name": "A", "description": "first"}], "relationships": [{"source_entity": "A", "target_entity": "B", "relationship": "A uses B"}]}\n```'
    llm = ScriptedLLM(reply, '{"entities": "nope"}')
    extractor = LLMExtractor(llm)
    data = extractor.extract("A uses B.", "doc.md")
    assert data.relationships[0].relationship == "A uses B"
    assert "A uses B." in llm.prompts[0] and "doc.md" in llm.prompts[0]
    assert llm.schemas[0]["properties"].keys() == {"entities", "relationships"}
    with caplog.at_level(logging.WARNING, logger="planvm.kb"):
        assert extractor.extract("x", "doc.md") == GraphData()
    assert "skipped the graph of one chunk of doc.md" in caplog.text


def test_index_with_an_llm_extractor(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.md").write_text("Alpha feeds Beta.")
    reply = '{"entities": [{"name": "Alpha", "description": "a feeder"}], "relationships": [{"source_entity": "Alpha", "target_entity": "Beta", "relationship": "Alpha feeds Beta"}]}'
    report = index_folder(src, tmp_path / "kb", extractor=LLMExtractor(ScriptedLLM(reply)))
    assert (report.entities, report.relationships) == (2, 1)
    assert LocalKnowledgeBase(tmp_path / "kb").graph("who feeds Beta")["relationships"][0]["relationship"] == "Alpha feeds Beta"


def test_import_graph(tmp_path, built):
    kb = tmp_path / "kb"
    shutil.copytree(built[0], kb)
    file = tmp_path / "graph.json"
    file.write_text(json.dumps({"entities": [{"name": "Okapi", "description": "a forest giraffe"}], "relationships": [{"source_entity": "Okapi", "target_entity": "Congo", "relationship": "The okapi lives in the Congo."}]}))
    report = import_graph(kb, file)
    assert report.relationships == built[1].relationships + 1
    graph = LocalKnowledgeBase(kb).graph("where does the okapi live")
    assert graph["relationships"][0]["relationship"] == "The okapi lives in the Congo."
    assert len(LocalKnowledgeBase(kb).search("LoRA", top_k=100)) == built[1].chunks  # chunks kept
    fresh = import_graph(tmp_path / "only_graph", file)  # a knowledge base with just a graph
    assert fresh.chunks == 0 and fresh.relationships == 1
    bad = tmp_path / "bad.json"
    bad.write_text('{"entities": [{"description": "no name"}]}')
    with pytest.raises(BackendUnavailable, match="is not a graph"):
        import_graph(kb, bad)


def test_embedder_basics():
    embedder = Embedder()
    vectors = embedder.encode(["a cat", "a kitten", "tax law"])
    assert vectors.shape == (3, 384) and vectors.dtype.name == "float32"
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])
    with pytest.raises(BackendUnavailable, match="cannot load the embedding model"):
        Embedder("/nonexistent/model/folder").encode(["x"])

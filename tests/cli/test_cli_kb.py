"""`planvm index`, `search`, `kg import`, and `exec` over the knowledge base, offline."""

from __future__ import annotations

import json
import re

from conftest import EXAMPLES
from test_cli import planvm, write


def test_index_search_and_exec_offline(tmp_path):
    kb = str(tmp_path / "kb")
    out = planvm("index", str(EXAMPLES / "kb"), "--kb", kb, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("indexed 4 file(s), reused 0 unchanged, skipped 0;")
    again = planvm("index", str(EXAMPLES / "kb"), "--kb", kb, timeout=120)
    assert "indexed 0 file(s), reused 4 unchanged" in again.stdout and "(0 embedded now)" in again.stdout

    hits = json.loads(planvm("search", "When does a run end?", "--kb", kb, "--json", "--top-k", "2").stdout)
    assert len(hits) == 2 and hits[0]["source_uri"] == "instructions.md"
    table = planvm("search", "When does a run end?", "--kb", kb)
    assert "instructions.md" in table.stdout and "score" in table.stdout
    graph = json.loads(planvm("search", "output_vars", "--kb", kb, "--graph", "--json").stdout)
    assert "output_vars" in {e["name"] for e in graph["entities"]}

    run = planvm("exec", str(EXAMPLES / "plans" / "retrieval_answer.json"), "--kb", kb, "--json", timeout=120)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert re.fullmatch(r"(?s).+ \[\w+\.md > [^\]]+\]", data["final_answer"])  # a passage, then its page and section
    note = planvm("exec", str(EXAMPLES / "plans" / "retrieval_answer.json"), "--kb", kb, timeout=120)
    assert "note: no LLM is configured" in note.stderr and "PLANVM_LLM_BASE_URL" in note.stderr


def test_kb_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANVM_KB", str(tmp_path / "envkb"))
    assert planvm("index", str(EXAMPLES / "kb"), timeout=120).returncode == 0
    assert (tmp_path / "envkb" / "CURRENT").is_file()


def test_kg_import(tmp_path):
    kb = str(tmp_path / "kb")
    graph = write(tmp_path, {"entities": [{"name": "Okapi", "description": "an animal"}], "relationships": [{"source_entity": "Okapi", "target_entity": "Congo", "relationship": "The okapi lives in the Congo."}]}, "g.json")
    out = planvm("kg", "import", graph, "--kb", kb, timeout=120)
    assert out.returncode == 0 and "1 relationships" in out.stdout
    found = json.loads(planvm("search", "okapi", "--kb", kb, "--graph", "--json").stdout)
    assert found["relationships"][0]["target_entity"] == "Congo"
    bad = write(tmp_path, "[1, 2]", "bad.json")
    out = planvm("kg", "import", bad, "--kb", kb)
    assert out.returncode == 2 and "is not a graph" in out.stderr


def test_bad_kb_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = planvm("index", str(empty), "--kb", str(tmp_path / "kb"))
    assert out.returncode == 2 and "no documents in" in out.stderr and "Traceback" not in out.stderr
    (empty / "blob.txt").write_bytes(b"\x00\x01")
    (empty / "ok.md").write_text("Some text about Zebras and Lions together.")
    out = planvm("index", str(empty), "--kb", str(tmp_path / "kb"), timeout=120)
    assert out.returncode == 0 and "skipped 1" in out.stdout and "skipped blob.txt: binary content" in out.stderr
    out = planvm("search", "x", "--kb", str(tmp_path / "missing"))
    assert out.returncode == 2 and "no knowledge base at" in out.stderr
    out = planvm("exec", str(EXAMPLES / "plans" / "retrieval_answer.json"), "--kb", str(tmp_path / "missing"))
    assert out.returncode == 2 and "planvm index" in out.stderr  # checked before the run starts, as every front end does

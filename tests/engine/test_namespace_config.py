"""Namespaces in the settings: [namespaces.NAME] tables over the top level, tokens never
inherited, unknown keys and undeclared namespaces refused, one engine per namespace over one
store. No fakes."""

from __future__ import annotations

import pytest

from planvm.engine import Engine, EngineConfig
from vm import BadInput, BackendUnavailable, QuotaExceeded, RunNotFound

TWO_TEAMS = '''
concurrency = 3
allow_tools = ["retrieve_knowledge_graph", "llm_generate"]
serve_token = "top-token-000000000001"
[limits]
max_steps = 50
max_llm_calls = 9

[namespaces.search]
allow_tools = ["vector_search"]
max_active_runs = 2
serve_token = "search-token-0000000002"
[namespaces.search.limits]
max_steps = 20

[namespaces.ops]
planner = "template"
tokens_per_day = 1000
'''


@pytest.fixture
def teams(tmp_path, monkeypatch):
    (tmp_path / "planvm.toml").write_text(TWO_TEAMS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PLANVM_STORE", str(tmp_path / "runs.sqlite"))
    return tmp_path


def test_a_namespace_table_applies_over_the_top_level(teams):
    top = EngineConfig.load()
    assert top.namespace == "default" and top.namespace_names() == ["default", "ops", "search"]
    search = EngineConfig.load({"namespace": "search"})
    assert search.namespace == "search" and search.allow_tools == ["vector_search"] and search.concurrency == 3
    assert (search.limits.max_steps, search.limits.max_llm_calls) == (20, 9)  # a table merges key by key
    assert search.max_active_runs == 2 and search.serve_token.get_secret_value() == "search-token-0000000002"
    ops = top.for_namespace("ops")
    assert ops.planner_kind == "template" and ops.tokens_per_day == 1000
    assert ops.serve_token is None  # the top level's token is default's, never a namespace's
    assert ops.allow_tools == ["retrieve_knowledge_graph", "llm_generate"]
    assert top.token_namespaces() == {"top-token-000000000001": "default", "search-token-0000000002": "search"}


def test_flags_win_over_a_namespace_table(teams):
    search = EngineConfig.load({"namespace": "search", "max_steps": 7, "allow_tools": ["llm_generate"]})
    assert search.limits.max_steps == 7 and search.allow_tools == ["llm_generate"]


def test_the_environment_names_the_namespace(teams, monkeypatch):
    monkeypatch.setenv("PLANVM_NAMESPACE", "ops")
    assert EngineConfig.load().planner_kind == "template"


def test_an_undeclared_namespace_a_bad_name_and_a_key_no_namespace_may_set_are_refused(teams, monkeypatch):
    with pytest.raises(BadInput, match=r"no namespace 'nope' is declared \(namespaces: default, ops, search\)"):
        EngineConfig.load({"namespace": "nope"})
    with pytest.raises(BackendUnavailable, match="namespace name"):
        EngineConfig.load({"namespace": "Team A"})
    (teams / "planvm.toml").write_text(TWO_TEAMS + '\n[namespaces.bad]\nstore = "other.sqlite"\n')
    with pytest.raises(BadInput, match=r"\[namespaces.bad\].*'store' cannot be set per namespace"):
        EngineConfig.load({"namespace": "bad"})
    (teams / "planvm.toml").write_text(TWO_TEAMS + '\n[namespaces.bad]\nmax_active_runs = 0\n')
    with pytest.raises(BackendUnavailable, match=r"\[namespaces.bad\].*max_active_runs"):
        EngineConfig.load({"namespace": "bad"})


def test_each_namespace_has_its_own_engine_over_one_store(teams):
    with Engine(EngineConfig.load(), role="service") as engine:
        search, ops = engine.in_namespace("search"), engine.in_namespace("ops")
        assert engine.in_namespace("search") is search and engine.in_namespace("default") is engine
        assert search.store.namespace == "search" and search.store.max_active_runs == 2
        assert search.available_tools() == {"vector_search"}
        assert "vector_search" not in engine.available_tools()
        first = search.enqueue("a goal")
        search.enqueue("another goal")
        with pytest.raises(QuotaExceeded):
            search.enqueue("a third goal")
        with pytest.raises(RunNotFound):
            engine.get_run(first)
        with pytest.raises(RunNotFound):
            ops.cancel(first)
        assert [r.id for r in engine.list_runs().runs] == []
        assert search.get_run(first).id == first
        assert ops.config.kb_path() != engine.config.kb_path()  # each namespace its own knowledge base, unless one is named

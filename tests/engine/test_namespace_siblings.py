"""A namespace's settings come from the top level and its own table only: a server or command
started in one namespace (PLANVM_NAMESPACE) reaches another without carrying its own values over."""

from __future__ import annotations

from planvm.engine import EngineConfig

TABLES = '''
[namespaces.a]
allow_tools = ["llm_generate"]
max_active_runs = 3
serve_token = "token-of-a-0000000001"
[namespaces.a.limits]
max_steps = 7

[namespaces.b]
serve_token = "token-of-b-0000000002"
'''


def test_a_sibling_namespace_does_not_inherit_the_first_ones_values(tmp_path, monkeypatch):
    (tmp_path / "planvm.toml").write_text(TABLES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PLANVM_NAMESPACE", "a")
    a = EngineConfig.load()
    assert a.namespace == "a" and a.allow_tools == ["llm_generate"] and a.max_active_runs == 3 and a.limits.max_steps == 7
    for other in (a.for_namespace("b"), a.for_namespace("default")):
        assert other.allow_tools == [] and other.max_active_runs is None and other.limits.max_steps != 7
    assert a.for_namespace("default").serve_token is None
    assert a.for_namespace("b").for_namespace("a").allow_tools == ["llm_generate"]
    assert a.token_namespaces() == {"token-of-a-0000000001": "a", "token-of-b-0000000002": "b"}

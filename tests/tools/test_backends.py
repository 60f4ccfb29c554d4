"""Settings, the extractive baseline, and the remote retrieval client (against FakeRetrievalServer,
a local HTTP server with scripted replies)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import EXAMPLES, ScriptedLLM, assign, call, jmp

from tools.backends import make_knowledge_base, make_llm, make_registry
from tools.kb.remote import RemoteKnowledgeBase
from tools.llm_extractive import ExtractiveBackend
from tools.llm_openai import OpenAIChat
from tools.settings import Settings
from vm import VM, BackendUnavailable, LLMUnavailable, ToolFailed

# --- settings ------------------------------------------------------------------------------------


def test_settings_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "planvm.toml").write_text('llm_model = "from-toml"\nllm_base_url = "http://toml/v1"\nkb = "/toml/kb"\n')
    assert Settings().llm_model == "from-toml"
    monkeypatch.setenv("PLANVM_LLM_MODEL", "from-env")
    assert Settings().llm_model == "from-env" and Settings().llm_base_url == "http://toml/v1"
    assert Settings(llm_model="from-flag").llm_model == "from-flag"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert Settings().llm_api_key.get_secret_value() == "sk-env"
    assert "sk-env" not in repr(Settings())
    monkeypatch.setenv("PLANVM_CONFIG", str(tmp_path / "other.toml"))
    (tmp_path / "other.toml").write_text('kb = "/other/kb"\n')
    assert str(Settings().kb_path()) == "/other/kb"


@pytest.mark.parametrize(
    ("env", "backend"),
    [({}, "extractive"), ({"PLANVM_LLM_MODEL": "m"}, "openai"), ({"PLANVM_LOCAL_MODEL": "/m"}, "local"), ({"PLANVM_LLM_BACKEND": "extractive", "PLANVM_LLM_MODEL": "m"}, "extractive")],
)
def test_backend_choice(monkeypatch, tmp_path, env, backend):
    monkeypatch.chdir(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings()
    assert settings.chosen_llm_backend() == backend
    llm = make_llm(settings)
    assert type(llm).__name__ == {"extractive": "ExtractiveBackend", "openai": "OpenAIChat", "local": "LocalChat"}[backend]


def test_settings_errors(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BackendUnavailable, match="needs a model name: set PLANVM_LLM_MODEL"):
        make_llm(Settings(llm_backend="openai"))
    with pytest.raises(BackendUnavailable, match="PLANVM_REMOTE_URL"):
        make_knowledge_base(Settings(kb_backend="remote"))
    assert isinstance(make_llm(Settings(llm_model="m", llm_base_url="http://x/v1")), OpenAIChat)


def test_lazy_knowledge_base_fails_only_when_used(tmp_path):
    registry = make_registry(Settings(kb=tmp_path / "nothing"))
    vm = VM(registry)
    assert vm.run([assign(0, final_answer=1)]).ok  # no retrieval, no knowledge base needed
    result = vm.run([call(0, "vector_search", "final_answer", query="x")])
    assert isinstance(result.error, ToolFailed) and "planvm index" in str(result.error)


# --- the extractive baseline --------------------------------------------------------------------------


def test_extractive_answers_from_context_with_sources(example_kb):
    settings = Settings(kb=example_kb)
    vm = VM(make_registry(settings), llm=make_llm(settings))
    result = vm.run(EXAMPLES / "plans" / "retrieval_answer.json")
    assert result.ok
    # an instruction, not a question: answered with the closest passage, as the document has it, and its page
    assert re.fullmatch(r"(?s).+ \[\w+\.md > [^\]]+\]", result.final_answer), result.final_answer
    call_record = result.trace[3].llm_calls[0]
    assert "no LLM is configured" in call_record["reasoning"]


def test_extractive_multi_key_output(example_kb):
    settings = Settings(kb=example_kb)
    result = VM(make_registry(settings), llm=make_llm(settings)).run(EXAMPLES / "plans" / "multi_key_output.json")
    assert result.ok and result.variables["summary"] and result.variables["pitfall"]


CONTEXT = [
    {"content": "## Resuming runs\n\nA killed run continues from its last completed step with planvm resume.", "source_uri": "cli.md", "score": 0.8},
    {"content": "# Knowledge base\n\nThe knowledge base is built by planvm index from a folder of documents.", "source_uri": "kb.md", "score": 0.5},
]


def test_extractive_answers_only_what_the_context_holds():
    backend = ExtractiveBackend()
    answer, found = backend.extract_found("Answer from the documents.\nGoal: How does a killed run continue?", CONTEXT)
    assert found and answer.startswith("A killed run continues") and answer.endswith("[cli.md > Resuming runs]")
    assert "##" not in answer  # a heading is not a passage: it names the passage's section
    answer, found = backend.extract_found("Answer from the documents.\nGoal: What is the capital of France?", CONTEXT)
    assert not found and answer == "The knowledge base does not contain an answer to this question."


def test_extractive_says_not_found_for_on_topic_questions_it_cannot_answer():
    """Close to the topic is not an answer: the question's own subject must be in the passage."""
    backend = ExtractiveBackend()
    for question in ("How much does a planvm enterprise license cost?", "Who maintains planvm?",
                     "How do I deploy planvm on Oracle Cloud?"):
        answer, found = backend.extract_found(f"Goal: {question}", CONTEXT)
        assert not found and answer == "The knowledge base does not contain an answer to this question.", question
    answer, found = backend.extract_found("Goal: How is the knowledge base built?", CONTEXT)
    assert found and answer.startswith("The knowledge base is built by planvm index") and answer.endswith("[kb.md > Knowledge base]")


def test_the_answer_is_the_passage_with_its_code_block_and_its_page_and_section():
    context = [
        {"content": "## Resuming runs\n\nTo continue a killed run, run the following command:\n\n```shell\nplanvm resume RUN_ID\n```\n\n"
                    "Finished runs cannot be resumed.", "source_uri": "cli.md", "heading": "CLI > Resuming runs", "score": 0.7},
        {"content": "# Knowledge base\n\nThe knowledge base is built by planvm index from a folder of documents.",
         "source_uri": "kb.md", "heading": "Knowledge base", "score": 0.4},
    ]
    answer, found = ExtractiveBackend().extract_found("Goal: How do I resume a killed run?", context)
    assert found and answer.startswith("To continue a killed run, run the following command:")
    assert "```shell\nplanvm resume RUN_ID\n```" in answer and "[cli.md > Resuming runs]" in answer
    assert "kb.md" not in answer


def test_extractive_answers_each_key_from_its_name():
    answers = ExtractiveBackend().extract("Goal: explain the tools", CONTEXT, ("resuming_a_run", "building_the_knowledge_base"))
    assert "resume" in answers["resuming_a_run"] and "planvm index" in answers["building_the_knowledge_base"]


def test_extractive_refuses_conditions_naming_the_settings():
    plan = [jmp(0, condition_prompt="ok?", jump_if_true=1), assign(1, final_answer=1)]
    result = VM(llm=ExtractiveBackend()).run(plan)
    assert isinstance(result.error, LLMUnavailable)
    assert "PLANVM_LLM_BASE_URL" in str(result.error) and "PLANVM_LLM_MODEL" in str(result.error)
    # said once, and without advice about an address or key nobody configured
    assert str(result.error).count("PLANVM_LLM_MODEL") == 1 and "check the LLM backend" not in str(result.error)
    assert result.error.__cause__ is None


def test_extractive_needs_context():
    from tools import default_registry

    result = VM(default_registry(), llm=ExtractiveBackend()).run([call(0, "llm_generate", "final_answer", prompt="Say hi")])
    assert isinstance(result.error, ToolFailed) and "no context to extract" in str(result.error)


# --- the remote retrieval client ------------------------------------------------------------------------


class FakeRetrievalServer:
    """Fake at the edge: a local HTTP server answering the retrieval service's two endpoints."""

    def __init__(self) -> None:
        self.queue: list[tuple[int, object]] = []
        self.requests: list[tuple[str, dict, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                outer.requests.append((self.path, body, dict(self.headers)))
                status, payload = outer.queue.pop(0) if outer.queue else (500, {"detail": "nothing scripted"})
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeRetrievalServer()
    yield s
    s.close()


def remote(server, **kw):
    return RemoteKnowledgeBase(server.url, token="tok-123", kb_id=7, backoff=0.01, **kw)


def test_remote_search_is_normalised(server):
    server.queue.append((200, [
        {"node": {"text": "low", "metadata": {"source_uri": "https://docs/a"}}, "score": 0.2},
        {"node": {"text": "high", "metadata": {"source_uri": "https://docs/b"}}, "score": 0.9},
    ]))
    hits = remote(server).search("q", top_k=5)
    assert hits == [
        {"content": "high", "source_uri": "https://docs/b", "score": 0.9},
        {"content": "low", "source_uri": "https://docs/a", "score": 0.2},
    ]
    path, body, headers = server.requests[0]
    assert path == "/api/v1/admin/embedding_retrieve"
    assert body == {"query": "q", "chat_engine": "default", "top_k": 5}
    assert headers["Authorization"] == "Bearer tok-123"


def test_remote_graph_is_normalised(server):
    server.queue.append((200, {
        "entities": [{"id": 1, "name": "TiDB", "description": "db"}, {"id": 2, "name": "TiKV", "description": "store"}],
        "relationships": [{"source_entity_id": 1, "target_entity_id": 2, "description": "TiDB stores data in TiKV"}],
    }))
    graph = remote(server).graph("storage")
    assert graph == {
        "entities": [{"name": "TiDB", "description": "db"}, {"name": "TiKV", "description": "store"}],
        "relationships": [{"source_entity": "TiDB", "target_entity": "TiKV", "relationship": "TiDB stores data in TiKV"}],
    }
    path, body, _ = server.requests[0]
    assert path == "/api/v1/admin/knowledge_bases/7/graph/search"
    assert body == {"query": "storage", "include_meta": False, "depth": 2, "with_degree": False}


def test_remote_retries_429_and_5xx(server):
    server.queue += [(429, {}), (503, {}), (200, [])]
    assert remote(server).search("q") == []
    assert len(server.requests) == 3


def test_remote_errors(server):
    server.queue += [(500, {})] * 4
    with pytest.raises(BackendUnavailable, match=r"failed after 4 tries \(HTTP 500\)"):
        remote(server).search("q")
    server.queue.append((401, {}))
    with pytest.raises(BackendUnavailable, match="HTTP 401; check PLANVM_REMOTE_TOKEN"):
        remote(server).search("q")
    server.queue.append((200, "not json"))
    with pytest.raises(BackendUnavailable, match="not JSON"):
        remote(server).search("q")
    with pytest.raises(BackendUnavailable, match="PLANVM_REMOTE_KB_ID"):
        RemoteKnowledgeBase(server.url).graph("q")
    with pytest.raises(BackendUnavailable, match="cannot reach"):
        RemoteKnowledgeBase("http://127.0.0.1:9", max_retries=0).search("q")


@pytest.mark.parametrize("reply", [[1, 2], ["text"], [{"node": "x"}], [None]])
def test_remote_replies_of_the_wrong_shape_are_named(server, reply):
    server.queue.append((200, reply))
    with pytest.raises(BackendUnavailable, match="unexpected chunk at position 0"):
        remote(server).search("q")


def test_remote_graph_of_the_wrong_shape_is_empty_not_a_crash(server):
    server.queue.append((200, {"entities": "x", "relationships": 5}))
    assert remote(server).graph("q") == {"entities": [], "relationships": []}


def test_remote_in_a_run(server):
    server.queue.append((200, [{"node": {"text": "TiDB 8.5 is the latest.", "metadata": {"source_uri": "u"}}, "score": 1}]))
    settings = Settings(kb_backend="remote", remote_url=server.url, remote_kb_id=1)
    llm = ScriptedLLM("8.5")
    result = VM(make_registry(settings), llm=llm).run([
        call(0, "vector_search", "chunks", query="latest version"),
        call(1, "llm_generate", "final_answer", prompt="Which version?", context="${chunks}"),
    ])
    assert result.final_answer == "8.5" and "TiDB 8.5 is the latest." in llm.prompts[0]
    assert len(server.requests) == 1  # the service is opened lazily and asked once

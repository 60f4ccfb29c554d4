"""The openai backend against FakeChatServer (a local HTTP server with scripted replies; the real
openai SDK and httpx on the wire)."""

from __future__ import annotations

import time

import pytest
from conftest import assign, call, jmp
from fake_openai import FakeChatServer, chat_reply

from tools import default_registry
from tools.llm_openai import OpenAIChat
from vm import VM, LLMError

SECRET = "sk-test-secret-123"


def client(server: FakeChatServer, **kw) -> OpenAIChat:
    options = {"model": "test-model", "base_url": server.url, "api_key": SECRET, "max_retries": 2, "timeout": 5.0}
    options.update(kw)
    return OpenAIChat(**options)


def test_plain_reply_and_request_shape():
    with FakeChatServer() as server:
        server.reply("Hello there.")
        reply = client(server).complete("Say hi.", system="Be brief.")
    assert reply.text == "Hello there." and reply.reasoning is None
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["model"] == "test-model"
    assert request["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]
    assert "response_format" not in request
    assert server.headers[0]["authorization"] == f"Bearer {SECRET}"


def test_json_schema_is_sent_as_structured_output():
    schema = {"type": "object", "properties": {"a": {}}, "required": ["a"]}
    with FakeChatServer() as server:
        server.reply('{"a": 1}').reply('{"a": 2}')
        client(server).complete("x", json_schema=schema)
        client(server, json_mode="object").complete("x", json_schema=schema)
    assert server.requests[0]["response_format"] == {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
    assert server.requests[1]["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(
    ("content", "reasoning", "text", "thinking"),
    [
        ("<think>step by step</think>\nThe answer.", None, "The answer.", "step by step"),
        ("The answer.", "thought apart", "The answer.", "thought apart"),
        ("only thinking, cut off", None, "only thinking, cut off", None),
    ],
)
def test_reasoning_is_kept_apart(content, reasoning, text, thinking):
    with FakeChatServer() as server:
        server.reply(content, reasoning)
        reply = client(server).complete("q")
    assert (reply.text, reply.reasoning) == (text, thinking)


def test_429_then_success_is_retried():
    with FakeChatServer() as server:
        server.actions.append(("json", 429, {"error": {"message": "slow down"}}, {"retry-after-ms": "10"}))
        server.actions.append(("json", 503, {"error": {"message": "busy"}}, {"retry-after-ms": "10"}))
        server.reply("finally")
        assert client(server).complete("q").text == "finally"
    assert len(server.requests) == 3


def test_retries_are_bounded_and_the_error_names_endpoint_and_status_not_key():
    with FakeChatServer() as server:
        for _ in range(5):
            server.actions.append(("json", 500, {"error": {"message": "boom"}}, {"retry-after-ms": "10"}))
        with pytest.raises(LLMError) as info:
            client(server, max_retries=2).complete("q")
    assert len(server.requests) == 3  # one try + two retries
    message = str(info.value)
    assert server.url in message and "HTTP 500" in message and "test-model" in message
    assert SECRET not in message


def test_unauthorised_says_which_variable_to_check():
    with FakeChatServer() as server:
        server.actions.append(("json", 401, {"error": {"message": "bad key"}}))
        with pytest.raises(LLMError, match="HTTP 401.*PLANVM_LLM_API_KEY"):
            client(server).complete("q")


def test_timeout():
    with FakeChatServer() as server:
        server.actions.append(("sleep", 2.0, chat_reply("late")))
        started = time.perf_counter()
        with pytest.raises(LLMError, match="did not begin its reply within 0.3 s"):
            client(server, timeout=0.3, max_retries=0).complete("q")
        assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("body", ["not json at all", '{"choices": []}', '{"unexpected": true}'])
def test_malformed_bodies(body):
    with FakeChatServer() as server:
        server.actions.append(("raw", 200, body))
        with pytest.raises(LLMError) as info:
            client(server, max_retries=0).complete("q")
    assert server.url in str(info.value)


def test_endpoint_down():
    with pytest.raises(LLMError, match="cannot reach"):
        OpenAIChat(model="m", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=2).complete("q")


def test_in_a_run_conditions_and_llm_generate_use_the_endpoint():
    plan = [
        call(0, "llm_generate", ["summary", "risk"], prompt="Summarise."),
        jmp(1, condition_prompt="Is ${summary} short?", jump_if_true=2, jump_if_false=3),
        assign(2, final_answer="${summary} / ${risk}"),
        assign(3, final_answer="long"),
    ]
    with FakeChatServer() as server:
        server.reply('{"summary": "tiny", "risk": "none"}', reasoning="hidden")
        server.reply('{"result": true, "explanation": "it is"}')
        result = VM(default_registry(), llm=client(server)).run(plan)
        result2_server_requests = len(server.requests)
    assert result.final_answer == "tiny / none"
    assert result2_server_requests == 2
    assert server.requests[0]["response_format"]["json_schema"]["schema"]["required"] == ["summary", "risk"]
    assert result.trace[0].llm_calls[0]["reasoning"] == "hidden"
    assert "hidden" not in str(result.variables)


def test_in_a_run_an_endpoint_error_fails_the_step_clearly():
    with FakeChatServer() as server:
        server.actions.append(("json", 404, {"error": {"message": "model not found"}}))
        result = VM(default_registry(), llm=client(server, max_retries=0)).run([call(0, "llm_generate", "final_answer", prompt="x")])
    assert result.status == "failed" and result.error.seq_no == 0
    assert "HTTP 404" in str(result.error) and "PLANVM_LLM_MODEL" in str(result.error)

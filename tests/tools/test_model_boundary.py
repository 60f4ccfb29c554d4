"""The model boundary under a misbehaving model server (FakeChatServer: a local HTTP server speaking
the chat-completions protocol with scripted replies, the real openai SDK and httpx on the wire):
keys never leak, a cut or empty answer never passes as done, replies of any shape are one clear
error, every wait is bounded, Ctrl-C ends a command at once."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import planvm
from fake_openai import ASK, FakeChatServer, chat_reply, openai_client, write_plan
from fake_openai import llm_env as key_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vm import AnswerTruncated, EmptyAnswer, LLMBadReply, LLMError, RunStore

ROOT = Path(__file__).resolve().parents[2]
KEY = "zz-custom-key-abcdefgh12345678"  # not an sk- key: only its configured value can find it


def pieces(secret: str, size: int = 8) -> list[str]:
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


def leaks(text: str) -> bool:
    return any(p in text for p in pieces(KEY))


def echoed_401() -> tuple[Any, ...]:
    """A 401 whose message quotes the key after 150 characters (as OpenAI's own error does)."""
    return ("json", 401, {"error": {"message": "x" * 150 + f" Incorrect API key provided: {KEY}. Find your key at ..."}})


client = functools.partial(openai_client, key=KEY)
llm_env = functools.partial(key_env, key=KEY)


# --- keys ------------------------------------------------------------------------------------------


def test_a_key_echoed_late_in_an_error_is_masked_before_it_is_shortened():
    with FakeChatServer() as server:
        server.actions.append(echoed_401())
        with pytest.raises(LLMError) as caught:
            client(server).complete("hi")
    assert not leaks(str(caught.value)) and "HTTP 401" in str(caught.value)


def test_a_key_echoed_by_the_server_reaches_no_output_store_or_http_body(tmp_path):
    home = tmp_path / "home"
    with FakeChatServer() as server:
        server.actions.append(echoed_401())
        out = planvm("exec", write_plan(tmp_path), "--json", env=llm_env(server, home))
        assert out.returncode == 1, out.stderr
        result = json.loads(out.stdout)
        assert result["status"] == "failed" and "HTTP 401" in result["error"]
        assert not leaks(out.stdout) and not leaks(out.stderr)
        store = RunStore(home / "runs.sqlite")
        run = store.get(result["run_id"])
        assert not leaks(json.dumps(run.to_dict()))

        # Over HTTP: a run's answer, the planner's 502, and the server's log.
        from fastapi.testclient import TestClient

        from planvm.engine import Engine
        from planvm.server import create_app

        os.environ.update({k: v for k, v in llm_env(server, home).items() if k.startswith("PLANVM_LLM")})
        try:
            engine = Engine({"store_path": str(home / "runs.sqlite")})
            logged: list[str] = []
            import logging

            class Keep(logging.Handler):
                def emit(self, record: logging.LogRecord) -> None:
                    logged.append(self.format(record))

            handler = Keep()
            logging.getLogger().addHandler(handler)
            try:
                with TestClient(create_app(engine), raise_server_exceptions=False) as http:
                    server.actions.extend([echoed_401(), echoed_401(), echoed_401()])
                    ran = http.post("/v1/runs?wait=true", json={"goal": "hi", "plan": ASK})
                    planned = http.post("/v1/plans", json={"goal": "hi", "planner": "llm"})
                    logging.getLogger("planvm.test").error("the server said: %s", f"Incorrect API key provided: {KEY}")
            finally:
                logging.getLogger().removeHandler(handler)
            assert ran.json()["status"] == "failed" and not leaks(ran.text)
            assert planned.status_code == 502 and "HTTP 401" in planned.text and not leaks(planned.text)
            assert logged and not any(leaks(line) for line in logged)
            engine.close()
        finally:
            for k in llm_env(server, home):
                if k.startswith("PLANVM_LLM"):
                    os.environ.pop(k, None)


# --- honest completions -------------------------------------------------------------------------------


@pytest.mark.parametrize("reply, error, says", [
    ({**chat_reply("The answer is"), "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is"},
                                                   "finish_reason": "length"}]}, AnswerTruncated, "token limit"),
    (chat_reply(None), EmptyAnswer, "empty answer"),  # content: null
    (chat_reply("", reasoning="I thought about it at length."), EmptyAnswer, "only reasoning"),
])
def test_a_cut_or_empty_answer_is_an_error_not_an_answer(reply, error, says):
    with FakeChatServer() as server:
        server.actions.extend([("json", 200, reply), ("json", 200, reply)])
        with pytest.raises(error, match=says):
            client(server).complete("hi")
    # An empty answer is asked for once more (it may help); a cut one is not (the same limit cuts it again).
    assert len(server.requests) == (1 if error is AnswerTruncated else 2)


def test_an_empty_answer_then_a_real_one_is_the_real_one():
    with FakeChatServer() as server:
        server.actions.extend([("json", 200, chat_reply(None)), ("json", 200, chat_reply("Hello."))])
        reply = client(server).complete("hi")
    assert reply.text == "Hello." and reply.finish_reason == "stop"


def test_a_stream_that_ends_without_its_end_is_cut():
    with FakeChatServer() as server:
        server.actions.append(("stream_cut", "The answer is forty"))
        deltas: list[str] = []
        with pytest.raises(AnswerTruncated, match="ended the stream"):
            client(server).stream("hi", on_delta=deltas.append)
        server.reply("The whole answer.")
        whole = client(server).stream("hi", on_delta=deltas.append)
    assert whole.text == "The whole answer."


def test_a_run_whose_answer_was_cut_fails_and_is_never_exported_or_judged(tmp_path):
    home = tmp_path / "home"
    cut = {**chat_reply("Half a sen"), "choices": [{"index": 0, "message": {"role": "assistant", "content": "Half a sen"},
                                                     "finish_reason": "length"}]}
    with FakeChatServer() as server:
        server.actions.append(("json", 200, cut))
        out = planvm("exec", write_plan(tmp_path), "--json", env=llm_env(server, home))
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["status"] == "failed" and "AnswerTruncated" in result["error"] and result["final_answer"] is None
    run = RunStore(home / "runs.sqlite").get(result["run_id"])
    assert run.status == "failed" and RunStore(home / "runs.sqlite").completed_runs() == []


# --- replies of any shape -----------------------------------------------------------------------------


@pytest.mark.parametrize("body, says", [
    ({"choices": [{"index": 0, "finish_reason": "stop"}]}, "without a message"),
    (chat_reply(42), "a number, not text"),
    (chat_reply(["a", "list"]), "a list, not text"),
    (chat_reply({"an": "object"}), "an object, not text"),
    ({"choices": []}, "no choices"),
])
def test_an_odd_200_is_one_bad_reply_error(body, says):
    with FakeChatServer() as server:
        server.actions.append(("json", 200, body))
        with pytest.raises(LLMBadReply, match=says):
            client(server).complete("hi")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_choice = st.fixed_dictionaries({}, optional={"index": _json, "finish_reason": st.sampled_from([None, "stop", "length", 3]),
                                              "message": _json | st.fixed_dictionaries({}, optional={"content": _json, "role": _json})})
_body = st.fixed_dictionaries({}, optional={"choices": _json | st.lists(_choice, max_size=2), "model": _json, "usage": _json})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=_body)
def test_any_reply_shape_is_a_completion_or_an_llm_error(body):
    with FakeChatServer() as server:
        server.actions.extend([("json", 200, body), ("json", 200, body)])
        try:
            reply = client(server).complete("hi")
        except LLMError:
            return
    assert isinstance(reply.text, str) and reply.text.strip()


def test_json_output_stays_json_when_the_reply_is_odd(tmp_path):
    with FakeChatServer() as server:
        server.actions.append(("json", 200, {"choices": [{"index": 0}]}))
        out = planvm("exec", write_plan(tmp_path), "--json", env=llm_env(server, tmp_path / "home"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "LLMBadReply" in json.loads(out.stdout)["error"]


# --- bounded waits ------------------------------------------------------------------------------------------


def test_a_server_trickling_its_reply_is_cut_off_at_the_request_deadline():
    with FakeChatServer() as server:
        server.actions.append(("trickle", 0.2, chat_reply("a reply sent one byte at a time")))
        began = time.monotonic()
        with pytest.raises(LLMError, match="did not send its whole reply within 1 s"):
            client(server, timeout=1.0).complete("hi")
    assert time.monotonic() - began < 3


def test_retry_messages_say_how_many_requests_were_made():
    limited = ("json", 429, {"error": {"message": "slow down"}}, {"Retry-After": "121"})
    with FakeChatServer() as server:
        server.actions.extend([limited])
        with pytest.raises(LLMError, match=r"rate limited on the first request \(not retried\)"):
            client(server, max_retries=0).complete("hi")
        # Retry-After beyond a minute is not waited for (none is made); a short one is, and counted.
        with pytest.raises(LLMError, match=r"on the first request \(not retried\)"):
            server.actions.extend([limited])
            client(server, max_retries=2).complete("hi")
        soon = ("json", 429, {"error": {"message": "slow down"}}, {"Retry-After": "0.1"})
        server.actions.extend([soon, soon])
        with pytest.raises(LLMError, match="rate limited after 2 requests"):
            client(server, max_retries=1).complete("hi")


def test_planning_counts_against_max_seconds_and_a_failed_planning_is_kept_as_a_run(tmp_path):
    home = tmp_path / "home"
    with FakeChatServer() as server:
        server.actions.append(("sleep", 20, chat_reply("too late")))
        began = time.monotonic()
        out = planvm("run", "What is planvm?", "--planner", "llm", "--max-seconds", "2", "--json",
                     env=llm_env(server, home, PLANVM_LLM_TIMEOUT="30"))
        took = time.monotonic() - began
    assert out.returncode == 1 and took < 15, (out.stderr, took)
    result = json.loads(out.stdout)
    assert result["status"] == "planning_failed" and "planning took more than the run's 2 s" in result["error"]
    run = RunStore(home / "runs.sqlite").get(result["run_id"])
    assert run.status == "failed" and run.error.startswith("planning failed")


def test_a_model_server_error_during_planning_exits_1_with_a_failed_run(tmp_path):
    home = tmp_path / "home"
    with FakeChatServer() as server:
        server.actions.append(("json", 500, {"error": {"message": "the model crashed"}}))
        out = planvm("run", "What is planvm?", "--planner", "llm", env=llm_env(server, home))
    assert out.returncode == 1 and "HTTP 500" in out.stderr and "kept as failed run" in out.stderr
    [listed] = RunStore(home / "runs.sqlite").list_runs()
    assert listed["status"] == "failed" and listed["goal"] == "What is planvm?"


def test_repair_prompts_quote_a_bounded_excerpt_of_a_huge_reply():
    from planner import Planner
    from tools import default_registry

    huge = "not a plan " * 20_000  # 220,000 characters
    with FakeChatServer() as server:
        server.actions.extend([("json", 200, chat_reply(huge))] * 3)
        with pytest.raises(Exception):
            Planner(client(server), default_registry()).plan("What is planvm?")
    repair = server.requests[1]["messages"][-1]["content"]
    assert len(repair) < 40_000 and "characters left out" in repair


@pytest.mark.parametrize("command", ["run", "exec"])
def test_ctrl_c_ends_a_command_within_a_second_and_keeps_the_run_as_interrupted(tmp_path, command):
    home = tmp_path / "home"
    with FakeChatServer() as server:
        server.actions.append(("sleep", 60, chat_reply("too late")))
        args = ["run", "What is planvm?", "--planner", "llm"] if command == "run" else ["exec", write_plan(tmp_path)]
        proc = subprocess.Popen([sys.executable, "-m", "planvm", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, **llm_env(server, home, PLANVM_LLM_TIMEOUT="90")})
        deadline = time.monotonic() + 60
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        began = time.monotonic()
        proc.wait(30)
        took = time.monotonic() - began
    assert proc.returncode == 130 and took < 1.5, (took, proc.stderr.read() if proc.stderr else "")
    if command == "exec":
        [listed] = RunStore(home / "runs.sqlite").list_runs()
        assert listed["status"] == "interrupted"


# --- the service answers before the planner does -------------------------------------------------------------


def planner_reply(plan: list[dict[str, Any]]) -> dict[str, Any]:
    return chat_reply(f"<think>One step answers it.</think>\n```json\n{json.dumps(plan)}\n```")


def test_the_service_answers_202_with_the_run_id_while_planning_then_runs_it(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from planvm.engine import Engine
    from planvm.server import create_app

    assign = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "planned and run"}}]
    with FakeChatServer() as server:
        server.actions.extend([("sleep", 2.0, planner_reply(assign)), ("sleep", 2.0, planner_reply(assign))])
        for name, value in llm_env(server, tmp_path / "home").items():
            monkeypatch.setenv(name, value)
        engine = Engine({"store_path": str(tmp_path / "runs.sqlite")})
        with TestClient(create_app(engine)) as http:
            began = time.monotonic()
            started = http.post("/v1/runs", json={"goal": "What is planvm?", "planner": "llm"})
            answered = time.monotonic() - began
            assert started.status_code == 202 and started.json()["status"] == "planning" and answered < 1.0
            run_id = started.json()["run_id"]
            with http.stream("GET", f"/v1/runs/{run_id}/events") as stream:
                events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
            assert events[-1]["status"] == "completed" and events[-1]["final_answer"] == "planned and run"
            run = http.get(f"/v1/runs/{run_id}").json()
            assert run["planning"]["planner"] == "llm" and run["plan"] == assign
            # Cancelled while it is being planned: it never runs.
            other = http.post("/v1/runs", json={"goal": "Another?", "planner": "llm"}).json()["run_id"]
            assert http.post(f"/v1/runs/{other}/cancel").json()["status"] == "cancelled"
            time.sleep(2.5)
            after = http.get(f"/v1/runs/{other}").json()
            assert after["status"] == "cancelled" and after["plan"] is None and after["steps"] == 0
        engine.close()


def test_a_planning_that_fails_in_the_service_is_a_failed_run_with_its_attempts(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from planvm.engine import Engine
    from planvm.server import create_app

    with FakeChatServer() as server:
        server.actions.extend([("json", 200, chat_reply("no plan here"))] * 3)
        for name, value in llm_env(server, tmp_path / "home").items():
            monkeypatch.setenv(name, value)
        engine = Engine({"store_path": str(tmp_path / "runs.sqlite")})
        with TestClient(create_app(engine)) as http:
            done = http.post("/v1/runs?wait=true", json={"goal": "What is planvm?", "planner": "llm"}).json()
            assert done["status"] == "failed" and "planning failed" in done["error"]
            run = http.get(f"/v1/runs/{done['run_id']}").json()
            assert run["planning"]["attempts"] == 3 and run["steps"] == 0
        engine.close()


def test_a_reply_without_usage_still_counts_against_the_token_budget():
    import asyncio

    from vm import VM, Completion, Limits, TokenLimitExceeded
    from tools import default_registry

    class NoUsage:
        def complete(self, prompt: str, *, system: str | None = None, json_schema: Any = None) -> Completion:
            return Completion("word " * 400)  # 2,000 characters, no token counts: about 500 tokens

    plan = [{"seq_no": i, "type": "calling", "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": f"q{i}"},
                                                            "output_vars": [f"a{i}"]}} for i in range(5)]
    plan.append({"seq_no": 5, "type": "assign", "parameters": {"final_answer": "${a4}"}})
    result = asyncio.run(VM(default_registry(), llm=NoUsage(), limits=Limits(max_tokens=1200), concurrency=1).arun(plan))
    assert result.status == "failed" and isinstance(result.error, TokenLimitExceeded)


def test_hints_name_the_setting_in_effect(monkeypatch):
    from tools.backends import make_llms
    from tools.settings import Settings

    monkeypatch.setenv("PLANVM_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("PLANVM_LLM_MODEL", "general")
    monkeypatch.setenv("PLANVM_PLANNER_TIMEOUT", "7")
    llms = make_llms(Settings(), ("planner", "answer"))
    assert llms["planner"].names["timeout"] == "PLANVM_PLANNER_TIMEOUT" and llms["planner"].timeout == 7
    assert llms["answer"].names["timeout"] == "PLANVM_LLM_TIMEOUT"

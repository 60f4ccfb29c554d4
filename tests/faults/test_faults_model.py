"""The model boundary under faults nobody scripted before: a model that repeats the key (whole,
split across streamed pieces, base64, percent-encoded, in part), answers that end without being
finished, and servers that trickle their headers or go quiet mid-stream, against FakeChatServer
(a local HTTP server speaking the chat-completions protocol with scripted replies; the real
openai SDK and httpx on the wire), the real `planvm` command and the real service app."""

from __future__ import annotations

import functools
import asyncio
import base64
import json
import time
from typing import Any
from urllib.parse import quote, unquote

import pytest
from conftest import planvm
from fake_openai import ASK, FakeChatServer, chat_reply, openai_client, write_plan
from fake_openai import llm_env as key_env, stream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vm import AnswerTruncated, LLMError, RunStore
from vm.redact import StreamMasker, mask_secrets, register_secret

pytestmark = pytest.mark.faults

KEY = "tok_9f8e7d6c5b4a39281706"  # not an sk- key: only its configured value can find it
register_secret(KEY)  # as configuring the client does; done here too for the tests of vm.redact alone


def _b64_runs(data: bytes) -> list[str]:
    """The base64 of ``data`` at each alignment inside encoded data, less its edge characters."""
    return [base64.b64encode(b"\0" * a + data).decode()[3:-3] for a in range(3)]


def leaks(text: str) -> bool:
    """Whether ``text`` shows 12 characters of the key, or 16 of its base64, or (decoded) 12 of it."""
    plain = [KEY[i:i + 12] for i in range(len(KEY) - 11)]
    encoded = [form[i:i + 16] for form in _b64_runs(KEY.encode()) for i in range(len(form) - 15)]
    encoded += [piece.replace("+", "-").replace("/", "_") for piece in encoded]
    decoded = unquote(text)
    return any(p in text or p in decoded for p in plain) or any(p in text or p in decoded for p in encoded)


client = functools.partial(openai_client, key=KEY)
llm_env = functools.partial(key_env, key=KEY)


def planner_reply(final_answer: str) -> dict[str, Any]:
    plan = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": final_answer}}]
    return chat_reply(f"<think>The key is {KEY}.</think>\n```json\n{json.dumps(plan)}\n```")


# --- 10. a key the model repeats is never shown --------------------------------------------------------------


@pytest.mark.parametrize("content, reasoning", [
    (f"Your key is {KEY}.", None),
    ("Here it is.", f"The user's key is {KEY}; I should not say it."),
    (f"<think>I saw {KEY} in the headers.</think>\nDone: {KEY}", None),
])
def test_a_key_the_model_repeats_in_its_answer_or_reasoning_is_masked_where_it_enters(content, reasoning):
    with FakeChatServer() as server:
        server.reply(content, reasoning)
        reply = client(server).complete("hi")
    assert not leaks(reply.text) and not leaks(reply.reasoning or "") and "***" in reply.text + (reply.reasoning or "")


@pytest.mark.parametrize("split", [1, 7, 12, 23])
def test_a_key_split_across_two_streamed_deltas_is_never_shown(split):
    text = f"Your key is {KEY}, keep it safe."
    at = text.index(KEY) + split
    with FakeChatServer() as server:
        server.actions.append(stream([text[:at], text[at:]]))
        shown: list[str] = []
        reply = client(server).stream("hi", on_delta=shown.append)
    assert not any(leaks(piece) for piece in shown) and not leaks("".join(shown))
    assert "".join(shown) == reply.text == "Your key is ***, keep it safe."


def test_text_with_no_key_streams_as_it_comes():
    with FakeChatServer() as server:
        server.actions.append(stream(["The answer ", "is forty ", "two."]))
        shown: list[str] = []
        reply = client(server).stream("hi", on_delta=shown.append)
    assert "".join(shown) == reply.text == "The answer is forty two." and len(shown) >= 3


def test_the_cli_prints_no_repeated_key_in_plain_output(tmp_path):
    home = tmp_path / "home"
    with FakeChatServer() as server:
        server.reply(f"The key you gave me is {KEY}.", f"It is {KEY}.")
        ran = planvm("exec", write_plan(tmp_path), env=llm_env(server, home))
        server.actions.append(("json", 200, planner_reply(f"use {KEY}")))
        planned = planvm("plan", "What is my key?", "--planner", "llm", env=llm_env(server, home))
    assert ran.returncode == 0, ran.stderr
    assert "The key you gave me is ***." in ran.stdout and not leaks(ran.stdout + ran.stderr)
    assert planned.returncode == 0, planned.stderr
    assert "use ***" in planned.stdout and not leaks(planned.stdout + planned.stderr)


def test_the_service_never_streams_waits_plans_or_judges_a_repeated_key(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from planvm.engine import Engine
    from planvm.server import create_app

    text = f"The key is {KEY}, as you asked."
    at = text.index(KEY) + 9
    with FakeChatServer() as server:
        for name, value in llm_env(server, tmp_path / "home").items():
            monkeypatch.setenv(name, value)
        engine = Engine({"store_path": str(tmp_path / "runs.sqlite")})
        with TestClient(create_app(engine)) as http:
            server.actions.append(stream([text[:at], text[at:]], pause=0.05))
            run_id = http.post("/v1/runs", json={"goal": "Say it.", "plan": ASK}).json()["run_id"]
            with http.stream("GET", f"/v1/runs/{run_id}/events") as events:
                lines = [line for line in events.iter_lines()]
            with http.stream("GET", f"/v1/runs/{run_id}/events?format=ai-sdk") as events:
                ai_sdk = "\n".join(events.iter_lines())
            server.actions.append(stream([text[:at], text[at:]]))
            waited = http.post("/v1/runs?wait=true", json={"goal": "Say it.", "plan": ASK})
            server.actions.append(("json", 200, planner_reply(f"use {KEY}")))
            planned = http.post("/v1/plans", json={"goal": "What is my key?", "planner": "llm"})
            verdict = {"score": 3, "accept": False, "suggestion": f"Never say {KEY} aloud.", "step_notes": []}
            server.actions.append(("json", 200, chat_reply(json.dumps(verdict), reasoning=f"It said {KEY}.")))
            judged = http.post(f"/v1/runs/{waited.json()['run_id']}/judge")
        engine.close()
    tokens = [json.loads(line[6:])["delta"] for line in lines if line.startswith("data: ") and '"delta"' in line]
    assert "".join(tokens) == "The key is ***, as you asked."
    assert not leaks("\n".join(lines)) and not leaks(ai_sdk) and "***" in ai_sdk
    assert waited.json()["final_answer"] == "The key is ***, as you asked." and not leaks(waited.text)
    assert planned.status_code == 200 and "use ***" in planned.text and not leaks(planned.text)
    assert judged.status_code == 200 and judged.json()["suggestion"] == "Never say *** aloud." and not leaks(judged.text)


def test_the_local_backend_masks_what_its_model_writes(tiny_model):
    import torch

    from tools.llm_local import LocalChat

    llm = LocalChat(str(tiny_model), max_new_tokens=24, temperature=1.0)  # sampled: the tiny model's greedy answer is blank

    def ask(**stream: Any) -> Any:
        torch.manual_seed(0)  # the same sample each time
        return llm.stream("What is planvm?", **stream) if stream else llm.complete("What is planvm?")

    said = ask().text
    secret = said[:16]
    assert len(secret.strip()) >= 12, said
    register_secret(secret)  # now the model "repeats a key"
    again = ask().text
    shown: list[str] = []
    streamed = ask(on_delta=shown.append)
    assert secret not in again and again.startswith("***")
    assert secret not in "".join(shown) and secret not in streamed.text and "".join(shown).startswith("***")


# --- 11. encoded and partial echoes ------------------------------------------------------------------------------


ECHOES = {
    "base64 of the key": base64.b64encode(KEY.encode()).decode(),
    "base64 of user:key (Basic)": base64.b64encode(f"user:{KEY}".encode()).decode(),
    "base64 of u:key": base64.b64encode(f"u:{KEY}".encode()).decode(),
    "base64 url-safe of ?key": base64.urlsafe_b64encode(f"?{KEY}~".encode()).decode(),
    "percent-encoded, every byte": "".join(f"%{b:02X}" for b in KEY.encode()),
    "percent-encoded, lower case, in a URL": "https://x.test/cb?k=" + "".join(f"%{b:02x}" for b in KEY.encode()) + "&n=1",
    "percent-encoded base64": quote(base64.b64encode(f"me:{KEY}".encode()).decode(), safe=""),
    "missing its first characters": KEY[3:],
    "missing its last characters": KEY[:-3],
    "12 characters from its middle": KEY[6:18],
}


@pytest.mark.parametrize("echo", list(ECHOES.values()), ids=list(ECHOES))
def test_an_encoded_or_partial_echo_is_masked(echo):
    assert leaks(echo)  # the check itself sees it
    said = f"Sure: {echo} (as requested)"
    assert not leaks(mask_secrets(said)) and mask_secrets(said).startswith("Sure: ") and "(as requested)" in mask_secrets(said)
    with FakeChatServer() as server:
        server.reply(said)
        server.actions.append(stream([said[:14], said[14:27], said[27:]]))
        reply = client(server).complete("hi")
        shown: list[str] = []
        streamed = client(server).stream("hi", on_delta=shown.append)
    assert not leaks(reply.text) and not leaks("".join(shown)) and not leaks(streamed.text)


def test_fewer_than_12_characters_of_a_key_are_left_as_they_are():
    assert mask_secrets(f"id {KEY[5:16]} here") == f"id {KEY[5:16]} here"
    assert mask_secrets("plain words, 100% sure, %zz, and a%20b") == "plain words, 100% sure, %zz, and a%20b"


_filler = st.text(alphabet="abc _-%:=/+\n", max_size=12)
_echo = st.sampled_from([KEY, KEY[2:], KEY[:-2], *ECHOES.values()])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.tuples(_filler, _echo), min_size=1, max_size=3), tail=_filler, cuts=st.lists(st.integers(0, 400), max_size=6))
def test_a_streamed_key_split_anywhere_is_masked_as_the_whole_text_is(parts, tail, cuts):
    text = "".join(a + b for a, b in parts) + tail
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
    masker = StreamMasker()
    shown = [masker.feed(piece) for piece in pieces] + [masker.flush()]
    assert "".join(shown) == mask_secrets(text) and not leaks("".join(shown))


# --- 12. only a finished answer is an answer --------------------------------------------------------------------


def test_a_content_filtered_answer_fails_the_run_and_is_never_exported(tmp_path):
    filtered = chat_reply("The first half of an answer, then", finish="content_filter")
    with FakeChatServer() as server:
        server.actions.append(("json", 200, filtered))
        with pytest.raises(AnswerTruncated, match="content filter"):
            client(server).complete("hi")
        server.actions.append(("json", 200, filtered))
        out = planvm("exec", write_plan(tmp_path), "--json", env=llm_env(server, tmp_path / "home"))
    result = json.loads(out.stdout)
    assert out.returncode == 1 and result["status"] == "failed" and "content_filter" in result["error"]
    assert result["final_answer"] is None and RunStore(tmp_path / "home" / "runs.sqlite").completed_runs() == []


@pytest.mark.parametrize("finish", [None, "eos", "tool_calls", "function_call"])
def test_a_reply_that_does_not_say_it_is_finished_is_not_an_answer(finish):
    with FakeChatServer() as server:
        server.actions.append(("json", 200, chat_reply("Maybe this is all of it.", finish=finish)))
        with pytest.raises(AnswerTruncated, match="did not say that the answer was finished"):
            client(server).complete("hi")
    assert len(server.requests) == 1


def test_a_stream_cut_without_done_whose_text_says_done_is_cut():
    with FakeChatServer() as server:
        server.actions.append(stream(["The stream ends with ", "data: [DONE]", " and then"], finish=None, done=False))
        with pytest.raises(AnswerTruncated, match="ended the stream without its \\[DONE\\]"):
            client(server).stream("hi", on_delta=lambda piece: None)
        server.actions.append(stream(["Cut off in the middle of a sen"], finish=None, done=True))
        with pytest.raises(AnswerTruncated, match="sent its end of stream \\(\\[DONE\\]\\) before finishing"):
            client(server).stream("hi", on_delta=lambda piece: None)
        server.actions.append(stream(["A whole answer ", "whose [DONE] is text."], finish="stop", done=False))
        whole = client(server).stream("hi", on_delta=lambda piece: None)
    assert whole.text == "A whole answer whose [DONE] is text." and whole.finish_reason == "stop"


def test_a_stream_cut_in_a_run_fails_it(tmp_path):
    from fastapi.testclient import TestClient

    from planvm.engine import Engine
    from planvm.server import create_app

    with FakeChatServer() as server:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in llm_env(server, tmp_path / "home").items():
                patch.setenv(name, value)
            engine = Engine({"store_path": str(tmp_path / "runs.sqlite")})
        with TestClient(create_app(engine)) as http:
            server.actions.append(stream(["It says ", "[DONE]", " in the middle"], finish=None, done=False))
            done = http.post("/v1/runs?wait=true", json={"goal": "Say it.", "plan": ASK}).json()
        engine.close()
    assert done["status"] == "failed" and "AnswerTruncated" in done["error"] and done["final_answer"] is None


# --- 13. deadlines that a slow server cannot stretch ---------------------------------------------------------


def test_headers_trickled_a_byte_at_a_time_are_cut_at_the_first_byte_deadline():
    with FakeChatServer() as server:
        server.actions.append(("trickle_headers", 0.3, chat_reply("a reply whose very headers crawl")))
        began = time.monotonic()
        with pytest.raises(LLMError, match=r"did not begin its reply within 1 s \(the first-byte deadline, PLANVM_LLM_TIMEOUT"):
            client(server, timeout=1.0).complete("hi")
        took = time.monotonic() - began
    assert took < 2.0, took


def test_plan_and_v1_plans_are_bounded_by_the_first_byte_deadline(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from planvm.engine import Engine
    from planvm.server import create_app

    with FakeChatServer() as server:
        server.actions.append(("trickle_headers", 0.3, planner_reply("late")))
        began = time.monotonic()
        out = planvm("plan", "What is planvm?", "--planner", "llm", env=llm_env(server, tmp_path / "home", PLANVM_LLM_TIMEOUT="1"))
        took = time.monotonic() - began
        assert out.returncode == 1 and "did not begin its reply within 1 s" in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert took < 20, took  # the command's own start included; the server would take 60 s to send its headers

        for name, value in llm_env(server, tmp_path / "home", PLANVM_LLM_TIMEOUT="1").items():
            monkeypatch.setenv(name, value)
        engine = Engine({"store_path": str(tmp_path / "runs.sqlite")})
        with TestClient(create_app(engine)) as http:
            server.actions.append(("trickle_headers", 0.3, planner_reply("late")))
            began = time.monotonic()
            planned = http.post("/v1/plans", json={"goal": "What is planvm?", "planner": "llm"})
            took = time.monotonic() - began
        engine.close()
    assert planned.status_code == 502 and "first-byte deadline" in planned.text and took < 3, (planned.text, took)


def test_a_healthy_slow_stream_outlasts_the_request_timeout():
    words = [f"w{i} " for i in range(45)]  # 45 pieces at 30 a second: 1.5 s, more than the 1 s timeout
    with FakeChatServer() as server:
        server.actions.append(stream(words, pause=1 / 30))
        shown: list[str] = []
        began = time.monotonic()
        reply = client(server, timeout=1.0, idle_timeout=0.5).stream("hi", on_delta=shown.append)
        took = time.monotonic() - began
    assert reply.text == "".join(words) and took > 1.0


def test_a_stream_that_goes_quiet_is_cut_at_the_idle_deadline():
    with FakeChatServer() as server:
        server.actions.append(stream(["Once ", "upon ", "a time"], pause=1.5))
        began = time.monotonic()
        with pytest.raises(LLMError, match=r"sent nothing for 0.3 s in the middle of its streamed reply \(the idle deadline, "
                                           r"PLANVM_LLM_IDLE_TIMEOUT\)"):
            client(server, timeout=5.0, idle_timeout=0.3).stream("hi", on_delta=lambda piece: None)
        took = time.monotonic() - began
    assert took < 1.2, took


def test_a_reply_that_is_not_streamed_is_still_bounded_whole():
    with FakeChatServer() as server:
        server.actions.append(("trickle", 0.1, chat_reply("a reply whose body crawls one byte at a time")))
        with pytest.raises(LLMError, match=r"did not send its whole reply within 1 s \(the reply deadline"):
            client(server, timeout=1.0, idle_timeout=0.5).complete("hi")


@pytest.mark.parametrize("then", ["a retry", "a repair attempt"])
def test_a_planner_abandoned_at_the_run_budget_sends_no_more_requests(tmp_path, monkeypatch, then):
    from planvm.engine import Engine
    from vm.errors import PlanningError

    with FakeChatServer() as server:
        if then == "a retry":  # the SDK would retry a 500
            server.actions.append(("sleep", 1.5, {"error": {"message": "overloaded"}}, 500))
        else:  # the planner would ask again for a reply with no plan in it
            server.actions.append(("sleep", 1.5, chat_reply("no plan in this reply")))
        server.responder = lambda body: "still no plan"
        for name, value in llm_env(server, tmp_path / "home", PLANVM_LLM_MAX_RETRIES="2").items():
            monkeypatch.setenv(name, value)
        engine = Engine({"store_path": str(tmp_path / "runs.sqlite")})
        began = time.monotonic()
        with pytest.raises(PlanningError, match="planning took more than the run's 0.8 s"):
            asyncio.run(engine.run_goal("What is planvm?", planner_kind="llm", limits={"max_seconds": 0.8}))
        time.sleep(max(0.0, 3.5 - (time.monotonic() - began)))  # the first reply came at 1.5 s; the next would follow by 2.5 s
        engine.close()
    assert len(server.requests) == 1, server.requests

"""Model roles, token counts, streaming and approvals.

The LLM servers here are fakes at the edge (tests/fake_openai.py: scripted replies over a real
socket, spoken to by the real openai SDK); everything else is the real code."""

from __future__ import annotations

import json

import pytest
from conftest import ScriptedLLM, call, make_registry
from fake_openai import FakeChatServer, chat_reply
from httpx_sse import connect_sse

from tests.serve_helpers import Server
from tools.settings import Settings
from vm import VM, Limits, RunStore, TokenLimitExceeded
from vm.llm import Completion

PLAN = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": "Say the answer."},
                                                          "output_vars": ["final_answer"]}}]


def planner_reply() -> dict:
    return chat_reply(f"<think>One llm_generate answers it.</think>\n```json\n{json.dumps(PLAN)}\n```", model="planner-lora", usage=(500, 80))


def test_roles_inherit_the_general_settings_and_override_them(monkeypatch, tmp_path):
    monkeypatch.setenv("PLANVM_LLM_BASE_URL", "http://general/v1")
    monkeypatch.setenv("PLANVM_LLM_MODEL", "general")
    monkeypatch.setenv("PLANVM_PLANNER_MODEL", "planner-lora")
    monkeypatch.setenv("PLANVM_PLANNER", "template")  # the --planner choice, not a role table
    config = tmp_path / "planvm.toml"
    config.write_text('[condition]\nmodel = "small"\ntemperature = 0.5\n')
    monkeypatch.setenv("PLANVM_CONFIG", str(config))
    settings = Settings()
    assert settings.for_role("answer").llm_model == "general"
    planner = settings.for_role("planner")
    assert (planner.llm_model, planner.llm_base_url) == ("planner-lora", "http://general/v1")
    condition = settings.for_role("condition")
    assert (condition.llm_model, condition.llm_temperature) == ("small", 0.5)
    assert settings.role_key("answer") == settings.role_key("judge") != settings.role_key("planner")
    with pytest.raises(ValueError, match="roles are"):
        settings.for_role("critic")
    monkeypatch.setenv("PLANVM_ANSWER_TEMPERATURE", "-1")
    with pytest.raises(Exception, match="temperature"):
        Settings()


def test_the_planner_and_the_answer_go_to_their_own_servers_with_streaming_and_tokens(tmp_path):
    with FakeChatServer() as planner_server, FakeChatServer() as answer_server:
        planner_server.actions.append(("json", 200, planner_reply()))
        answer_server.actions.append(("json", 200, chat_reply("The answer is forty two, said the model.", model="general-7b", usage=(30, 6))))
        answer_server.stream_pause = 0.05
        env = {
            "PLANVM_PLANNER_BASE_URL": planner_server.url, "PLANVM_PLANNER_MODEL": "planner-lora",
            "PLANVM_ANSWER_BASE_URL": answer_server.url, "PLANVM_ANSWER_MODEL": "general-7b",
        }
        home = tmp_path / "home"
        home.mkdir()
        with Server(home, env=env) as server, server.client() as client:
            started = client.post("/v1/runs", json={"goal": "What is the answer?", "planner": "llm"})
            assert started.status_code == 202, started.text
            run_id = started.json()["run_id"]
            with connect_sse(client, "GET", f"/v1/runs/{run_id}/events") as source:
                events = []
                for event in source.iter_sse():
                    events.append(event)
                    if event.event == "done":
                        break
            run = client.get(f"/v1/runs/{run_id}").json()
    tokens = [json.loads(e.data)["delta"] for e in events if e.event == "token"]
    assert len(tokens) >= 3 and "".join(tokens) == "The answer is forty two, said the model."
    assert len(planner_server.requests) == 1 and not planner_server.requests[0].get("stream")
    assert planner_server.requests[0]["model"] == "planner-lora"
    assert len(answer_server.requests) == 1 and answer_server.requests[0]["stream"] is True
    assert answer_server.requests[0]["model"] == "general-7b"
    assert run["planning"]["model"] == "planner-lora" and run["planning"]["reasoning"] == "One llm_generate answers it."
    assert run["tokens"]["planner"] == {"prompt_tokens": 500, "completion_tokens": 80}
    assert run["tokens"]["answer"] == {"prompt_tokens": 30, "completion_tokens": 6}
    assert run["tokens"]["total"] == {"prompt_tokens": 530, "completion_tokens": 86}
    finished = [json.loads(e.data) for e in events if e.event == "step" and json.loads(e.data)["phase"] == "finished"]
    assert finished[0]["models"] == ["general-7b"] and finished[0]["prompt_tokens"] == 30


def test_jump_conditions_use_the_condition_model():
    answer, condition = ScriptedLLM("unused"), ScriptedLLM('{"result": true, "explanation": "yes"}')
    plan = [
        {"seq_no": 0, "type": "jmp", "parameters": {"condition_prompt": "Is it so?", "jump_if_true": 2}},
        {"seq_no": 1, "type": "assign", "parameters": {"final_answer": "no"}},
        {"seq_no": 2, "type": "assign", "parameters": {"final_answer": "yes"}},
    ]
    result = VM(make_registry(), llm=answer, condition_llm=condition).run(plan)
    assert result.final_answer == "yes" and len(condition.prompts) == 1 and answer.prompts == []
    assert result.trace[0].llm_calls[0]["role"] == "condition"


class CountingLLM:
    model = "counted"

    def complete(self, prompt: str, *, system=None, json_schema=None) -> Completion:
        return Completion("fine", model="counted", prompt_tokens=40, completion_tokens=10)


def test_max_tokens_ends_a_run_that_spends_more():
    plan = [call(i, "llm_generate", [f"a{i}"], prompt="go") for i in range(5)] + [
        {"seq_no": 5, "type": "assign", "parameters": {"final_answer": "${a4}"}}
    ]
    from tools import default_registry

    ok = VM(default_registry(), llm=CountingLLM(), limits=Limits(max_tokens=250), concurrency=1).run(plan)
    assert ok.ok and ok.tokens == 250
    stopped = VM(default_registry(), llm=CountingLLM(), limits=Limits(max_tokens=120), concurrency=1).run(plan)
    assert isinstance(stopped.error, TokenLimitExceeded) and stopped.error.limit == "max_tokens"
    assert stopped.error.seq_no == 2 and "--max-tokens" in str(stopped.error)


def test_an_approval_tool_without_a_store_fails_instead_of_running(tmp_path):
    plan = [call(0, "echo", ["final_answer"], value="x")]
    result = VM(make_registry(), approve_tools=["echo"]).run(plan)
    assert result.status == "failed" and "cannot wait" in str(result.error)
    store = RunStore(tmp_path / "runs.sqlite")
    waiting = VM(make_registry(), approve_tools=["echo"], store=store).run(plan)
    assert waiting.status == "waiting" and waiting.pending["tool_params"] == {"value": "x"}
    assert store.get(waiting.run_id).status == "waiting"
    with pytest.raises(Exception, match="seq_no 0"):
        VM(make_registry(), approve_tools=["echo"], store=store).approve(waiting.run_id, 3, True)
    done = VM(make_registry(), approve_tools=["echo"], store=store).approve(waiting.run_id, 0, True, tool_params={"value": "y"})
    assert done.ok and done.final_answer == "y"
    with pytest.raises(Exception, match="not waiting"):
        VM(make_registry(), store=store).approve(waiting.run_id, 0, True)

"""The local backend with a tiny Qwen2 built in the test (no download): real loading, chat
template, generation, and a PEFT adapter."""

from __future__ import annotations

import pytest

from tools.llm_local import LocalChat, load_model
from vm import VM, LLMError


@pytest.fixture(scope="session")
def tiny(tiny_model):
    return tiny_model


def test_generates_through_the_chat_template(tiny):
    llm = LocalChat(str(tiny), max_new_tokens=8)
    inputs = llm.prompt_ids("What is planvm?", system="Be brief.")
    _model, tokenizer, _device = llm.loaded()
    rendered = tokenizer.decode(inputs["input_ids"][0])
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert rendered.endswith("<|im_start|>assistant\n")
    reply = llm.complete("What is planvm?")
    assert isinstance(reply.text, str)
    again = LocalChat(str(tiny), max_new_tokens=8).complete("What is planvm?")
    assert again.text == reply.text  # greedy: deterministic


def test_streams_through_a_transformers_streamer_and_counts_tokens(tiny):
    llm = LocalChat(str(tiny), max_new_tokens=12)
    pieces: list[str] = []
    streamed = llm.stream("What is planvm?", on_delta=pieces.append)
    whole = llm.complete("What is planvm?")
    assert pieces and "".join(pieces).rstrip().endswith(streamed.text.rstrip())
    assert whole.text == streamed.text and whole.model == str(tiny)
    prompt_length = llm.prompt_ids("What is planvm?")["input_ids"].shape[1]
    assert whole.prompt_tokens == prompt_length and 0 < whole.completion_tokens <= 12


def test_model_is_loaded_once(tiny):
    a = LocalChat(str(tiny)).loaded()
    b = LocalChat(str(tiny)).loaded()
    assert a[0] is b[0]
    assert load_model.cache_info().hits >= 1


def test_adapter_changes_the_model(tiny, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.5)  # a non-zero adapter, so it must change the logits
    peft_model.save_pretrained(tmp_path / "adapter")
    plain = LocalChat(str(tiny))
    adapted = LocalChat(str(tiny), adapter=str(tmp_path / "adapter"))
    inputs = plain.prompt_ids("hello")
    with torch.no_grad():
        logits_plain = plain.loaded()[0](**inputs).logits
        logits_adapted = adapted.loaded()[0](**inputs).logits
    assert not torch.allclose(logits_plain, logits_adapted)


def test_think_block_is_split_off(tiny, monkeypatch):
    llm = LocalChat(str(tiny))
    monkeypatch.setattr(llm, "generate", lambda inputs, **kw: ("<think>plan it</think>The answer.", 5, 7))
    reply = llm.complete("q")
    assert (reply.text, reply.reasoning) == ("The answer.", "plan it")
    assert (reply.prompt_tokens, reply.completion_tokens) == (5, 7)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(LLMError, match="cannot load the local model"):
        LocalChat(str(tmp_path / "nope")).complete("q")


def test_in_a_run(tiny):
    from tools import default_registry

    plan = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": "Hi"}, "output_vars": "final_answer"}}]
    result = VM(default_registry(), llm=LocalChat(str(tiny), max_new_tokens=5)).run(plan)
    assert result.ok and isinstance(result.final_answer, str)

"""The ``local`` LLM backend: a transformers model in this process, optionally with a PEFT adapter.

The model is loaded once per (model, adapter, device) and reused by every backend object and run.
The tokenizer's chat template builds the prompt; generation is greedy unless a temperature is
set. ``torch``, ``transformers`` and ``peft`` are imported only when a model is first used.
What the model writes is masked as it leaves the model (a registered key it repeats, in any
form: :mod:`vm.redact`), streamed text included.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from vm.errors import LLMError
from vm.llm import Completion, split_reasoning
from vm.redact import StreamMasker, mask_secrets

__all__ = ["LocalChat", "load_model"]


@functools.lru_cache(maxsize=4)
def load_model(model: str, adapter: str | None = None, device: str = "auto") -> tuple[Any, Any, str]:
    """(model, tokenizer, device) for ``model`` with ``adapter`` applied; cached."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise LLMError("the local backend needs torch and transformers: pip install 'planvm[local]'") from exc
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
        loaded = AutoModelForCausalLM.from_pretrained(model, dtype="auto")
    except (OSError, ValueError) as exc:
        raise LLMError(f"cannot load the local model {model!r}: {exc}; set PLANVM_LOCAL_MODEL to a model folder") from exc
    if adapter:
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise LLMError("a LoRA adapter needs peft: pip install 'planvm[local]'") from exc
        try:
            loaded = PeftModel.from_pretrained(loaded, adapter)
        except (OSError, ValueError) as exc:
            raise LLMError(f"cannot load the adapter {adapter!r} onto {model!r}: {exc}") from exc
    loaded.to(device)
    loaded.eval()
    return loaded, tokenizer, device


class LocalChat:
    """An LLM (``vm.LLM``) running a transformers model in process."""

    def __init__(
        self,
        model: str,
        *,
        adapter: str | None = None,
        device: str = "auto",
        max_new_tokens: int = 512,
        temperature: float = 0.0,
    ) -> None:
        self.model_name = model
        self.adapter = adapter
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self._lock = threading.Lock()  # one generate() at a time per process-wide model

    def loaded(self) -> tuple[Any, Any, str]:
        return load_model(self.model_name, self.adapter, self.device)

    def prompt_ids(self, prompt: str, system: str | None = None) -> Any:
        model, tokenizer, device = self.loaded()
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        return {k: v.to(device) for k, v in encoded.items()}

    @property
    def model(self) -> str:
        """The name runs record for this backend: the model, and its adapter when there is one."""
        return f"{self.model_name}+{self.adapter}" if self.adapter else self.model_name

    def generate_text(self, inputs: Any, **generate_kwargs: Any) -> str:
        return self.generate(inputs, **generate_kwargs)[0]

    def generate(self, inputs: Any, **generate_kwargs: Any) -> tuple[str, int, int]:
        """(text, prompt tokens, completion tokens) of one generation, counted with the tokenizer."""
        import torch

        model, tokenizer, _device = self.loaded()
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.temperature > 0}
        if self.temperature > 0:
            options["temperature"] = self.temperature
        if tokenizer.pad_token_id is not None:
            options["pad_token_id"] = tokenizer.pad_token_id
        options.update(generate_kwargs)
        with self._lock, torch.no_grad():
            output = model.generate(**inputs, **options)
        prompt_length = inputs["input_ids"].shape[1]
        new_tokens = output[0, prompt_length:]
        return tokenizer.decode(new_tokens, skip_special_tokens=True), int(prompt_length), int(new_tokens.shape[0])

    def _completion(self, text: str, prompt_tokens: int, completion_tokens: int) -> Completion:
        reply = split_reasoning(mask_secrets(text))
        # As a server would say it: a generation that used every token it was allowed was cut there.
        finish = "length" if completion_tokens >= self.max_new_tokens else "stop"
        return Completion(reply.text, reply.reasoning, model=self.model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          finish_reason=finish)

    def complete(self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None) -> Completion:
        return self._completion(*self.generate(self.prompt_ids(prompt, system)))

    def stream(self, prompt: str, *, system: str | None = None, on_delta: Any) -> Completion:
        """Generate with a transformers streamer: ``on_delta`` gets the text as tokens are decoded."""
        from transformers import TextStreamer

        _model, tokenizer, _device = self.loaded()
        masker = StreamMasker()  # a key split across pieces is masked too

        class _Forward(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                shown = masker.feed(text) if text else ""
                if stream_end:
                    shown += masker.flush()
                if shown:
                    on_delta(shown)

        streamer = _Forward(tokenizer, skip_prompt=True, skip_special_tokens=True)
        completion = self._completion(*self.generate(self.prompt_ids(prompt, system), streamer=streamer))
        rest = masker.flush()  # in case the streamer was not told of the end
        if rest:
            on_delta(rest)
        return completion

    def __repr__(self) -> str:
        return f"LocalChat(model={self.model_name!r}, adapter={self.adapter!r})"

"""The ``openai`` LLM backend: any OpenAI-compatible chat-completions endpoint.

vLLM (serving the fine-tuned planner with its LoRA adapter), Ollama, OpenAI and DeepSeek all
speak this protocol. Retries on 429, 5xx and timeouts are the SDK's own: exponential backoff with
jitter, bounded by ``max_retries``, honouring ``Retry-After``. Errors name the endpoint, the model
and the HTTP status, never the key. A reasoning model's thinking (a ``reasoning_content`` field,
or a leading ``<think>`` block) is returned apart from the answer.
"""

from __future__ import annotations

from typing import Any

from vm.errors import LLMError
from vm.llm import Completion, split_reasoning
from vm.values import shorten

__all__ = ["OpenAIChat"]


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class OpenAIChat:
    """An LLM (``vm.LLM``) on an OpenAI-compatible endpoint.

    ``plan_schema`` (from the planner) is sent as a structured-output request for an object
    ``{"plan": [...]}``, which servers such as vLLM enforce while decoding.
    """

    supports_plan_schema = True

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        json_mode: str = "schema",
    ) -> None:
        import openai

        self.model = model
        self.base_url = base_url or "https://api.openai.com/v1"
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.json_mode = json_mode
        # Local servers (vLLM, Ollama) need no key, but the SDK insists on one.
        key = api_key or "no-key"
        # Sync client only: the VM calls it from its thread pool, so one client serves every run
        # (an async client's connections would be tied to the event loop of the first run).
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout, max_retries=max_retries)

    def _request(self, prompt: str, system: str | None, json_schema: dict[str, Any] | None) -> dict[str, Any]:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        request: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        if json_schema is not None and self.json_mode == "schema":
            request["response_format"] = {"type": "json_schema", "json_schema": {"name": "reply", "schema": json_schema}}
        elif json_schema is not None and self.json_mode == "object":
            request["response_format"] = {"type": "json_object"}
        return request

    def _reply(self, response: Any) -> Completion:
        choices = getattr(response, "choices", None)
        if not choices:
            raise LLMError(f"LLM endpoint {self.base_url} (model {self.model}) sent a reply with no choices")
        message = choices[0].message
        return self._completion(message.content or "", getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None),
                                response)

    def _completion(self, text: str, thinking: Any, response: Any) -> Completion:
        """The reply with the model that wrote it and the server's token counts."""
        if thinking:
            reply = Completion(text=split_reasoning(text).text if "</think>" in text else text.strip(), reasoning=str(thinking))
        else:
            reply = split_reasoning(text)
        usage = getattr(response, "usage", None)
        served = getattr(response, "model", None)
        return Completion(
            reply.text,
            reply.reasoning,
            model=served if isinstance(served, str) and served else self.model,
            prompt_tokens=_count(getattr(usage, "prompt_tokens", None)),
            completion_tokens=_count(getattr(usage, "completion_tokens", None)),
        )

    def _error(self, exc: Exception) -> LLMError:
        import openai

        where = f"LLM endpoint {self.base_url} (model {self.model})"
        if isinstance(exc, openai.APIStatusError):
            detail = shorten(getattr(exc, "message", "") or str(exc))
            hint = {
                401: "check PLANVM_LLM_API_KEY / OPENAI_API_KEY",
                403: "check the key's permissions",
                404: "check PLANVM_LLM_MODEL and PLANVM_LLM_BASE_URL",
                429: "rate limited; retries were exhausted, try again later",
            }.get(exc.status_code, "see the server's log")
            return LLMError(f"{where} answered HTTP {exc.status_code}: {detail}; {hint}")
        if isinstance(exc, openai.APITimeoutError):
            return LLMError(f"{where} did not answer in time (after retries); raise PLANVM_LLM_TIMEOUT or check the server")
        if isinstance(exc, openai.APIConnectionError):
            return LLMError(f"cannot reach {where}: {shorten(str(exc.__cause__ or exc))}; is the server running at that address?")
        return LLMError(f"{where} sent a reply that could not be read ({type(exc).__name__}: {shorten(str(exc))})")

    def complete(
        self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None, plan_schema: dict[str, Any] | None = None
    ) -> Completion:
        if plan_schema is not None and self.json_mode != "off":
            defs = plan_schema.get("$defs", {})
            array = {k: v for k, v in plan_schema.items() if k != "$defs"}
            json_schema = {"type": "object", "properties": {"plan": array}, "required": ["plan"], "$defs": defs}
        try:
            response = self._client.chat.completions.create(**self._request(prompt, system, json_schema))
        except LLMError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        return self._reply(response)

    def stream(self, prompt: str, *, system: str | None = None, on_delta: Any) -> Completion:
        """Ask with ``stream=True``: ``on_delta`` gets each piece of the answer as it arrives; the
        whole reply (with the usage the server reports at the end) is returned."""
        request = self._request(prompt, system, None)
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
        parts: list[str] = []
        thinking: list[str] = []
        last: Any = None
        try:
            for chunk in self._client.chat.completions.create(**request):
                last = chunk if getattr(chunk, "usage", None) is not None or last is None else last
                for choice in getattr(chunk, "choices", None) or ():
                    delta = choice.delta
                    reasoning = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
                    if reasoning:
                        thinking.append(str(reasoning))
                    if delta.content:
                        parts.append(delta.content)
                        on_delta(delta.content)
        except LLMError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        return self._completion("".join(parts), "".join(thinking) or None, last)

    def __repr__(self) -> str:
        return f"OpenAIChat(model={self.model!r}, base_url={self.base_url!r})"

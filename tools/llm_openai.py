"""The ``openai`` LLM backend: any OpenAI-compatible chat-completions endpoint.

vLLM (serving the fine-tuned planner with its LoRA adapter), Ollama, OpenAI and DeepSeek all
speak this protocol. Retries on 429, 5xx and timeouts are the SDK's own: exponential backoff with
jitter, bounded by ``max_retries``, honouring ``Retry-After``. Errors name the endpoint, the model
and the HTTP status, never the key. A reasoning model's thinking (a ``reasoning_content`` field,
or a leading ``<think>`` block) is returned apart from the answer.

Honest replies: ``timeout`` bounds each request whole (connecting and reading the entire body,
however slowly it trickles), not each read. A 200 that is not a chat completion is
:class:`~vm.errors.LLMBadReply`; an answer cut at its token limit, or a stream that ends before
the server finishes it, is :class:`~vm.errors.AnswerTruncated`; an empty answer (or reasoning
only) is :class:`~vm.errors.EmptyAnswer`, asked once more first. Every reply keeps its
``finish_reason``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from vm.errors import AnswerTruncated, EmptyAnswer, LLMBadReply, LLMError
from vm.llm import Completion, split_reasoning
from vm.values import shorten

__all__ = ["OpenAIChat"]

DEFAULT_SETTING_NAMES = {"timeout": "PLANVM_LLM_TIMEOUT", "max_tokens": "PLANVM_LLM_MAX_TOKENS", "api_key": "PLANVM_LLM_API_KEY"}


class _WholeRequestDeadline(httpx.BaseTransport):
    """An httpx transport that bounds each request whole: the body must be read within
    ``seconds`` of sending the request (a server trickling bytes is cut off), and that counts the
    requests sent (the SDK's retries included)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.inner = httpx.HTTPTransport()
        self.local = threading.local()

    def handle_request(self, request: Any) -> Any:
        self.local.sent = getattr(self.local, "sent", 0) + 1
        self.local.done = False
        deadline = time.monotonic() + self.seconds
        response = self.inner.handle_request(request)
        response.stream = _Bounded(response.stream, deadline, self.seconds, request, self.local)
        return response

    def close(self) -> None:
        self.inner.close()

    def sent(self) -> int:
        return getattr(self.local, "sent", 0)

    def reset(self) -> None:
        self.local.sent = 0
        self.local.done = False

    def saw_done(self) -> bool:
        """Whether the last streamed reply ended with its ``data: [DONE]`` line."""
        return getattr(self.local, "done", False)


class _Bounded(httpx.SyncByteStream):
    def __init__(self, stream: Any, deadline: float, seconds: float, request: Any, local: Any) -> None:
        self.stream, self.deadline, self.seconds, self.request, self.local = stream, deadline, seconds, request, local

    def __iter__(self) -> Iterator[bytes]:
        tail = b""
        for chunk in self.stream:
            if time.monotonic() > self.deadline:
                self.stream.close()
                raise httpx.ReadTimeout(f"the reply took more than {self.seconds:g} s in all", request=self.request)
            if b"[DONE]" in tail + chunk:  # a stream's end, as the server marks it
                self.local.done = True
            tail = chunk[-8:]
            yield chunk

    def close(self) -> None:
        self.stream.close()


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "true or false", int: "a number", float: "a number"}.get(
        type(value), f"a {type(value).__name__}")


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
        setting_names: Mapping[str, str] | None = None,
    ) -> None:
        import openai

        from vm.redact import register_secret

        self.model = model
        self.base_url = base_url or "https://api.openai.com/v1"
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.json_mode = json_mode
        self.timeout = timeout
        self.max_retries = max_retries
        # The settings that govern this client, as the user sets them (a role's own, or the general one).
        self.names = {**DEFAULT_SETTING_NAMES, **(setting_names or {})}
        register_secret(api_key)  # a key of any shape, masked wherever a server echoes it
        # Local servers (vLLM, Ollama) need no key, but the SDK insists on one.
        key = api_key or "no-key"
        # Sync client only: the VM calls it from its thread pool, so one client serves every run
        # (an async client's connections would be tied to the event loop of the first run).
        self._transport = _WholeRequestDeadline(timeout)
        http = httpx.Client(transport=self._transport, timeout=timeout)
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout, max_retries=max_retries, http_client=http)

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

    @property
    def where(self) -> str:
        return f"LLM endpoint {self.base_url} (model {self.model})"

    def _reply(self, response: Any) -> Completion:
        """The completion in a 200 reply, read without trusting its shape."""
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise LLMBadReply(f"{self.where} sent a reply with no choices (a 200 that is not a chat completion); check "
                              f"that the address is an OpenAI-compatible /v1 endpoint")
        choice = choices[0]
        message = getattr(choice, "message", None)
        if message is None or isinstance(message, (str, int, float, list)):
            raise LLMBadReply(f"{self.where} sent a choice without a message (a 200 that is not a chat completion)")
        content = getattr(message, "content", None)
        if content is not None and not isinstance(content, str):
            raise LLMBadReply(f"{self.where} sent message content that is {_kind(content)}, not text")
        thinking = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
        finish = getattr(choice, "finish_reason", None)
        return self._completion(content or "", thinking if isinstance(thinking, str) else None, response,
                                finish if isinstance(finish, str) else None)

    def _honest(self, reply: Completion, *, streamed: bool = False) -> Completion:
        """The reply, if it is a whole answer: a cut or empty one raises."""
        if reply.finish_reason == "length":
            used = f" after {reply.completion_tokens} tokens" if reply.completion_tokens else ""
            raise AnswerTruncated(
                f"{self.where} cut the answer at its token limit{used} (finish_reason: length); raise "
                f"{self.names['max_tokens']}, or ask for a shorter answer"
            )
        if streamed and reply.finish_reason is None and not self._transport.saw_done():
            raise AnswerTruncated(f"{self.where} ended the stream before finishing the answer (no finish_reason, no [DONE]); "
                                  f"the answer so far is not used; check the server's log")
        if not reply.text.strip():
            only = " (only reasoning, no answer after it)" if reply.reasoning else ""
            raise EmptyAnswer(f"{self.where} sent an empty answer{only}, twice; check the model and its prompt template")
        return reply

    def _completion(self, text: str, thinking: Any, response: Any, finish: str | None = None) -> Completion:
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
            finish_reason=finish,
        )

    def _error(self, exc: Exception) -> LLMError:
        import openai

        where = self.where
        sent = self._transport.sent()
        tries = f"after {sent} requests" if sent > 1 else "on the first request (not retried)"
        if isinstance(exc, openai.APIStatusError):
            detail = shorten(getattr(exc, "message", "") or str(exc))  # masked, then shortened
            hint = {
                401: f"check {self.names['api_key']} / OPENAI_API_KEY",
                403: "check the key's permissions",
                404: "check PLANVM_LLM_MODEL and PLANVM_LLM_BASE_URL",
                429: f"rate limited {tries}; try again later",
            }.get(exc.status_code, f"see the server's log ({tries})")
            return LLMError(f"{where} answered HTTP {exc.status_code}: {detail}; {hint}")
        if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException)):
            return LLMError(f"{where} did not answer within {self.timeout:g} s {tries}; raise {self.names['timeout']} or check "
                            f"the server")
        if isinstance(exc, openai.APIConnectionError):
            return LLMError(f"cannot reach {where} ({tries}): {shorten(str(exc.__cause__ or exc))}; is the server running at that "
                            f"address?")
        return LLMBadReply(f"{where} sent a reply that could not be read ({type(exc).__name__}: {shorten(str(exc))})")

    def complete(
        self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None, plan_schema: dict[str, Any] | None = None
    ) -> Completion:
        if plan_schema is not None and self.json_mode != "off":
            defs = plan_schema.get("$defs", {})
            array = {k: v for k, v in plan_schema.items() if k != "$defs"}
            json_schema = {"type": "object", "properties": {"plan": array}, "required": ["plan"], "$defs": defs}
        request = self._request(prompt, system, json_schema)
        for attempt in (1, 2):
            self._transport.reset()
            try:
                response = self._client.chat.completions.create(**request)
            except LLMError:
                raise
            except Exception as exc:
                raise self._error(exc) from exc
            reply = self._reply(response)
            if reply.text.strip() or reply.finish_reason == "length" or attempt == 2:
                return self._honest(reply)
        raise AssertionError("unreachable")  # pragma: no cover

    def stream(self, prompt: str, *, system: str | None = None, on_delta: Any) -> Completion:
        """Ask with ``stream=True``: ``on_delta`` gets each piece of the answer as it arrives; the
        whole reply (with the usage the server reports at the end) is returned."""
        request = self._request(prompt, system, None)
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
        parts: list[str] = []
        thinking: list[str] = []
        last: Any = None
        finish: str | None = None
        self._transport.reset()
        try:
            for chunk in self._client.chat.completions.create(**request):
                last = chunk if getattr(chunk, "usage", None) is not None or last is None else last
                for choice in getattr(chunk, "choices", None) or ():
                    delta = getattr(choice, "delta", None)
                    if isinstance(getattr(choice, "finish_reason", None), str):
                        finish = choice.finish_reason
                    if delta is None:
                        continue
                    reasoning = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
                    if isinstance(reasoning, str) and reasoning:
                        thinking.append(reasoning)
                    content = getattr(delta, "content", None)
                    if content is not None and not isinstance(content, str):
                        raise LLMBadReply(f"{self.where} streamed content that is {_kind(content)}, not text")
                    if content:
                        parts.append(content)
                        on_delta(content)
        except LLMError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        return self._honest(self._completion("".join(parts), "".join(thinking) or None, last, finish), streamed=True)

    def __repr__(self) -> str:
        return f"OpenAIChat(model={self.model!r}, base_url={self.base_url!r})"

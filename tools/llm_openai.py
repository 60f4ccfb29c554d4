"""The ``openai`` LLM backend: any OpenAI-compatible chat-completions endpoint.

vLLM (serving the fine-tuned planner with its LoRA adapter), Ollama, OpenAI and DeepSeek all
speak this protocol. Retries on 429, 5xx and timeouts are the SDK's own: exponential backoff with
jitter, bounded by ``max_retries``, honouring ``Retry-After``. Errors name the endpoint, the model
and the HTTP status, never the key. A reasoning model's thinking (a ``reasoning_content`` field,
or a leading ``<think>`` block) is returned apart from the answer.

Honest replies: a reply must begin (status line, headers, first piece) within ``timeout``
seconds, a reply that is not streamed must be read whole within it too, and a streamed one may
pause at most ``idle_timeout`` seconds between pieces (:mod:`tools.llm_transport`); the error
names the deadline that fired. Only ``finish_reason: stop`` is a finished answer: a 200 that is
not a chat completion is :class:`~vm.errors.LLMBadReply`; an answer cut at its token limit, by a
content filter, or a stream that ends before the server finishes it, is
:class:`~vm.errors.AnswerTruncated`; an empty answer (or reasoning only) is
:class:`~vm.errors.EmptyAnswer`, asked once more first. Every reply keeps its ``finish_reason``.

What a model writes is masked where it enters planvm: a registered key it repeats (whole, in
part, base64- or percent-encoded) is replaced in the answer and its reasoning, and in streamed
text before ``on_delta`` sees it, a key split across pieces included (:class:`~vm.redact.StreamMasker`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from tools.llm_transport import DeadlineTransport
from vm.errors import AnswerTruncated, EmptyAnswer, LLMBadReply, LLMError
from vm.llm import Completion, split_reasoning
from vm.redact import StreamMasker, mask_secrets
from vm.values import shorten

__all__ = ["OpenAIChat"]

DEFAULT_SETTING_NAMES = {"timeout": "PLANVM_LLM_TIMEOUT", "idle_timeout": "PLANVM_LLM_IDLE_TIMEOUT", "max_tokens": "PLANVM_LLM_MAX_TOKENS",
                         "api_key": "PLANVM_LLM_API_KEY"}
#: The finish reasons of a finished answer (``tool_calls`` would be one, were tools ever asked for).
FINISHED = frozenset({"stop"})


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
        idle_timeout: float = 30.0,
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
        self.idle_timeout = idle_timeout
        self.max_retries = max_retries
        # The settings that govern this client, as the user sets them (a role's own, or the general one).
        self.names = {**DEFAULT_SETTING_NAMES, **(setting_names or {})}
        register_secret(api_key)  # a key of any shape, masked wherever a server echoes it
        # Local servers (vLLM, Ollama) need no key, but the SDK insists on one.
        key = api_key or "no-key"
        # Sync client only: the VM calls it from its thread pool, so one client serves every run
        # (an async client's connections would be tied to the event loop of the first run).
        # The transport keeps every deadline; httpx's own (per read) would let a trickle through.
        self._transport = DeadlineTransport(timeout, idle_timeout)
        http = httpx.Client(transport=self._transport, timeout=None)
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=None, max_retries=max_retries, http_client=http)

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
        """The reply, if it is a whole answer: a cut, unfinished or empty one raises."""
        finish = reply.finish_reason
        if finish == "length":
            used = f" after {reply.completion_tokens} tokens" if reply.completion_tokens else ""
            raise AnswerTruncated(
                f"{self.where} cut the answer at its token limit{used} (finish_reason: length); raise "
                f"{self.names['max_tokens']}, or ask for a shorter answer"
            )
        if finish == "content_filter":
            raise AnswerTruncated(f"{self.where} stopped the answer with its content filter (finish_reason: content_filter); "
                                  f"the part it sent is not used; rephrase the request, or check the server's filter settings")
        if finish is None and streamed:
            ended = "sent its end of stream ([DONE])" if self._transport.saw_done() else "ended the stream without its [DONE]"
            raise AnswerTruncated(f"{self.where} {ended} before finishing the answer (no finish_reason); the answer so far is "
                                  f"not used; check the server's log")
        if finish not in FINISHED:
            said = f"finish_reason: {shorten(finish, 40)}" if finish is not None else "no finish_reason"
            raise AnswerTruncated(f"{self.where} did not say that the answer was finished ({said}; only stop is a finished "
                                  f"answer); the answer is not used; check the server's log")
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
            mask_secrets(reply.text),  # a key the model repeats goes no further than here
            mask_secrets(reply.reasoning) if reply.reasoning else reply.reasoning,
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
            fired = self._transport.fired()
            if fired == "idle":
                return LLMError(f"{where} sent nothing for {self.idle_timeout:g} s in the middle of its streamed reply (the idle "
                                f"deadline, {self.names['idle_timeout']}), {tries}; raise it or check the server")
            if fired == "whole":
                return LLMError(f"{where} did not send its whole reply within {self.timeout:g} s (the reply deadline, "
                                f"{self.names['timeout']}: it began, then trickled), {tries}; raise it or check the server")
            return LLMError(f"{where} did not begin its reply within {self.timeout:g} s (the first-byte deadline, "
                            f"{self.names['timeout']}: connecting, status line, headers), {tries}; raise it or check the server")
        if isinstance(exc, openai.APIConnectionError):
            return LLMError(f"cannot reach {where} ({tries}): {shorten(str(exc.__cause__ or exc))}; is the server running at that "
                            f"address?")
        return LLMBadReply(f"{where} sent a reply that could not be read ({type(exc).__name__}: {shorten(str(exc))})")

    def _plan_format(self, plan_schema: dict[str, Any] | None) -> dict[str, Any] | None:
        """The structured-output schema asking for ``{"plan": [...]}`` (None: none asked)."""
        if plan_schema is None or self.json_mode == "off":
            return None
        defs = plan_schema.get("$defs", {})
        array = {k: v for k, v in plan_schema.items() if k != "$defs"}
        return {"type": "object", "properties": {"plan": array}, "required": ["plan"], "$defs": defs}

    def complete(
        self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None, plan_schema: dict[str, Any] | None = None
    ) -> Completion:
        request = self._request(prompt, system, self._plan_format(plan_schema) if plan_schema is not None else json_schema)
        for attempt in (1, 2):
            self._transport.expect_stream(False)
            try:
                response = self._client.chat.completions.create(**request)
            except LLMError:
                raise
            except Exception as exc:
                raise self._error(exc) from exc
            reply = self._reply(response)
            if reply.text.strip() or reply.finish_reason not in FINISHED or attempt == 2:  # only a finished empty answer is asked again
                return self._honest(reply)
        raise AssertionError("unreachable")  # pragma: no cover

    def stream(self, prompt: str, *, system: str | None = None, on_delta: Any, plan_schema: dict[str, Any] | None = None) -> Completion:
        """Ask with ``stream=True``: ``on_delta`` gets each piece of the answer as it arrives; the
        whole reply (with the usage the server reports at the end) is returned. ``plan_schema``:
        as for :meth:`complete` (a streamed plan)."""
        request = self._request(prompt, system, self._plan_format(plan_schema))
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
        parts: list[str] = []
        thinking: list[str] = []
        last: Any = None
        finish: str | None = None
        masker = StreamMasker()  # what on_delta sees is masked, a key split across pieces included
        self._transport.expect_stream(True)
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
                        shown = masker.feed(content)
                        if shown:
                            on_delta(shown)
        except LLMError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        rest = masker.flush()
        if rest:
            on_delta(rest)
        return self._honest(self._completion("".join(parts), "".join(thinking) or None, last, finish), streamed=True)

    def __repr__(self) -> str:
        return f"OpenAIChat(model={self.model!r}, base_url={self.base_url!r})"

"""The small LLM interface the VM (and every other package) talks to.

An LLM is any object with ``complete(prompt, *, system=None, json_schema=None)`` returning a
:class:`Completion` or a plain string; it may also offer ``async acomplete(...)`` with the same
signature, which the VM prefers. ``json_schema`` asks for a reply that is a JSON value of that
schema (a backend with a JSON or structured-output mode uses it; others may ignore it).

Streaming is optional: an LLM that also has ``stream(prompt, *, system=None, on_delta)`` calls
``on_delta(text)`` with each piece of the answer as it is produced and returns the whole
:class:`Completion`. The VM uses it for ``llm_generate`` when someone listens for tokens.

A :class:`Completion` may say which ``model`` wrote it and how many ``prompt_tokens`` and
``completion_tokens`` the exchange cost; runs record both, per exchange.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["LLM", "Completion", "StreamingLLM", "as_completion", "split_reasoning"]


@dataclass(frozen=True, slots=True)
class Completion:
    """An LLM reply: the answer ``text`` and, apart from it, a reasoning model's ``reasoning``;
    the ``model`` that wrote it, the exchange's token counts and ``finish_reason``, when the backend
    knows them."""

    text: str
    reasoning: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None  # the server's word on why the answer ended ("stop", "length"…)

    def usage(self) -> dict[str, Any]:
        """What a run records about the exchange besides its text: model, token counts, finish reason."""
        return {"model": self.model, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "finish_reason": self.finish_reason}


@runtime_checkable
class LLM(Protocol):
    def complete(self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None) -> Completion | str: ...


@runtime_checkable
class StreamingLLM(Protocol):
    def stream(self, prompt: str, *, system: str | None = None, on_delta: Callable[[str], None]) -> Completion: ...


_THINK_OPEN = re.compile(r"^\s*<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)


def split_reasoning(text: str) -> Completion:
    """Separate a leading ``<think>…</think>`` block from the answer.

    A reply that closes ``</think>`` without opening it (some chat templates put ``<think>`` in
    the prompt) is split at the close tag too; an unclosed ``<think>`` is all reasoning.
    """
    close = _THINK_CLOSE.search(text)
    opened = _THINK_OPEN.match(text)
    if close is None:
        if opened:
            return Completion(text="", reasoning=text[opened.end() :].strip())
        return Completion(text=text)
    start = opened.end() if opened else 0
    return Completion(text=text[close.end() :].strip(), reasoning=text[start : close.start()].strip())


def as_completion(reply: Completion | str) -> Completion:
    """Normalise what an LLM returned; a plain string has its ``<think>`` block split off."""
    if isinstance(reply, Completion):
        return reply
    if isinstance(reply, str):
        return split_reasoning(reply)
    raise TypeError(f"an LLM must return a Completion or a str, got {type(reply).__name__}")

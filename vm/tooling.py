"""What the VM needs from tools, as Protocols (the ``tools`` package implements them).

The VM never imports ``tools``: it sees a catalog of tool specs. A spec validates a call's
parameters (``bind``) before the VM calls it (``call``): async tools are awaited, sync tools run
in the VM's thread pool. A tool that declares a :class:`CallContext` parameter receives the
step's context: its ``seq_no``, the ``output_vars`` the plan asked for, and the run's LLM (every
call counted against the run's LLM budget and recorded in the step's trace).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from vm.errors import LLMCallFailed, LLMCallLimitExceeded, LLMNotConfigured, LLMUnavailable, RunError, ValueTooLarge
from vm.jsonsafe import text_size
from vm.llm import LLM, Completion, as_completion

__all__ = ["CallContext", "RunLLM", "StepLLM", "ToolCatalog", "ToolSpec"]


class ToolSpec(Protocol):
    name: str
    description: str
    is_async: bool

    @property
    def parameter_names(self) -> frozenset[str]: ...

    @property
    def required_parameters(self) -> frozenset[str]: ...

    def bind(self, params: dict[str, Any]) -> Any:
        """Validate ``params``; raise ``ToolParamsInvalid`` naming the parameter when they are wrong."""
        ...

    def call(self, bound: Any, ctx: CallContext) -> Any:
        """Run the tool on what ``bind`` returned (a coroutine when ``is_async``)."""
        ...


class ToolCatalog(Protocol):
    def get(self, name: str) -> ToolSpec | None: ...

    def names(self) -> list[str]: ...


class RunLLM:
    """The run's LLM with its call budget. Thread-safe: sync tools call it from worker threads."""

    def __init__(
        self,
        llm: LLM | None,
        max_calls: int | None,
        loop: asyncio.AbstractEventLoop | None = None,
        executor: Callable[[], Executor] | None = None,
        *,
        max_reply_bytes: int | None = None,
    ) -> None:
        self.llm = llm
        self.max_calls = max_calls
        self.max_reply_bytes = max_reply_bytes
        self.calls = 0
        self._lock = threading.Lock()
        self._loop = loop
        # Sync LLMs run in the VM's own pool, not asyncio's default one: asyncio.run() waits for
        # its default pool at exit, so a hung call there would outlive the run's deadline.
        self._executor = executor

    @property
    def available(self) -> bool:
        return self.llm is not None

    def _take(self, purpose: str) -> LLM:
        if self.llm is None:
            raise LLMUnavailable(purpose)
        with self._lock:
            if self.max_calls is not None and self.calls >= self.max_calls:
                raise LLMCallLimitExceeded(
                    self.max_calls,
                    f"LLM-call budget of {self.max_calls} exhausted ({purpose}); raise Limits.max_llm_calls "
                    f"or make the plan call the LLM less",
                )
            self.calls += 1
        return self.llm

    def _within_size(self, reply: Completion, purpose: str) -> Completion:
        """The reply, unless it is larger than a value may be (max_value_bytes)."""
        limit = self.max_reply_bytes
        if limit is not None:
            size = sum(text_size(part) for part in (reply.text, reply.reasoning or ""))
            if size > limit:
                raise ValueTooLarge(
                    limit,
                    f"the LLM reply for {purpose} is {size:,} bytes, more than max_value_bytes ({limit:,}); "
                    f"ask for a shorter answer (e.g. max tokens) or raise Limits.max_value_bytes",
                )
        return reply

    async def acomplete(self, prompt: str, *, purpose: str, system: str | None = None, json_schema: dict[str, Any] | None = None) -> Completion:
        llm = self._take(purpose)
        try:
            acomplete = getattr(llm, "acomplete", None)
            if acomplete is not None:
                reply = await acomplete(prompt, system=system, json_schema=json_schema)
            else:
                call = functools.partial(llm.complete, prompt, system=system, json_schema=json_schema)
                pool = self._executor() if self._executor is not None else None
                reply = await asyncio.get_running_loop().run_in_executor(pool, call)
            return self._within_size(as_completion(reply), purpose)
        except (RunError, asyncio.CancelledError):
            raise
        except LLMNotConfigured as exc:
            raise LLMUnavailable(purpose, str(exc)) from None
        except Exception as exc:
            raise LLMCallFailed(purpose, exc) from exc

    def complete(self, prompt: str, *, purpose: str, system: str | None = None, json_schema: dict[str, Any] | None = None) -> Completion:
        llm = self._take(purpose)
        try:
            if hasattr(llm, "complete"):
                return self._within_size(as_completion(llm.complete(prompt, system=system, json_schema=json_schema)), purpose)
            if self._loop is None:  # pragma: no cover - only reachable with an async-only LLM outside a run
                raise LLMUnavailable(purpose)
            future = asyncio.run_coroutine_threadsafe(llm.acomplete(prompt, system=system, json_schema=json_schema), self._loop)
            return self._within_size(as_completion(future.result()), purpose)
        except RunError:
            raise
        except LLMNotConfigured as exc:
            raise LLMUnavailable(purpose, str(exc)) from None
        except Exception as exc:
            raise LLMCallFailed(purpose, exc) from exc


class StepLLM:
    """The run's LLM as one step sees it: every call is recorded in ``records``."""

    def __init__(self, run_llm: RunLLM, purpose: str, records: list[dict[str, Any]]) -> None:
        self._run_llm = run_llm
        self._purpose = purpose
        self.records = records

    @property
    def available(self) -> bool:
        return self._run_llm.available

    @property
    def backend(self) -> Any:
        """The LLM object the run was given (to check for optional abilities)."""
        return self._run_llm.llm

    def note(self, prompt: str, text: str, reasoning: str | None, **extra: Any) -> None:
        """Record an exchange that did not go through ``complete`` (an offline backend's answer);
        ``extra`` facts about it (e.g. ``found=False``) are kept in the record too."""
        self.records.append({"prompt": prompt, "system": None, "text": text, "reasoning": reasoning, **extra})

    def _record(self, prompt: str, system: str | None, reply: Completion) -> Completion:
        self.records.append({"prompt": prompt, "system": system, "text": reply.text, "reasoning": reply.reasoning})
        return reply

    def complete(self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None) -> Completion:
        reply = self._run_llm.complete(prompt, purpose=self._purpose, system=system, json_schema=json_schema)
        return self._record(prompt, system, reply)

    async def acomplete(self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None) -> Completion:
        reply = await self._run_llm.acomplete(prompt, purpose=self._purpose, system=system, json_schema=json_schema)
        return self._record(prompt, system, reply)


@dataclass(slots=True)
class CallContext:
    """What a tool may know about the step that calls it."""

    seq_no: int
    tool_name: str
    output_vars: tuple[str, ...]
    llm: StepLLM

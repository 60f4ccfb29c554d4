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
from dataclasses import dataclass, field
from typing import Any, Protocol

from vm import telemetry
from vm.errors import (
    LLMCallFailed,
    LLMCallLimitExceeded,
    LLMNotConfigured,
    LLMUnavailable,
    RunError,
    TokenLimitExceeded,
    ValueTooLarge,
)
from vm.jsonsafe import text_size
from vm.llm import LLM, Completion, as_completion
from vm.redact import redact

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
    """The run's LLMs with the run's budgets. Thread-safe: sync tools call it from worker threads.

    Two roles: ``answer`` (tools such as ``llm_generate``) and ``condition`` (``jmp``), each its
    own LLM (the condition one defaults to the answer one); calls and tokens of both count
    against the same budgets. ``on_token(seq_no, delta)`` receives streamed answer text on the
    run's event loop when the LLM can stream.
    """

    def __init__(
        self,
        llm: LLM | None,
        max_calls: int | None,
        loop: asyncio.AbstractEventLoop | None = None,
        executor: Callable[[], Executor] | None = None,
        *,
        max_reply_bytes: int | None = None,
        condition_llm: LLM | None = None,
        max_tokens: int | None = None,
        on_token: Callable[[int, str], None] | None = None,
    ) -> None:
        self.llm = llm
        self.roles: dict[str, LLM | None] = {"answer": llm, "condition": condition_llm if condition_llm is not None else llm}
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.max_reply_bytes = max_reply_bytes
        self.on_token = on_token
        self.calls = 0
        self.tokens = 0
        self._lock = threading.Lock()
        self._loop = loop
        # Sync LLMs run in the VM's own pool, not asyncio's default one: asyncio.run() waits for
        # its default pool at exit, so a hung call there would outlive the run's deadline.
        self._executor = executor

    def available_for(self, role: str) -> bool:
        return self.roles.get(role) is not None

    @property
    def available(self) -> bool:
        return self.llm is not None

    def _take(self, purpose: str, role: str) -> LLM:
        llm = self.roles.get(role)
        if llm is None:
            raise LLMUnavailable(purpose)
        with self._lock:
            if self.max_calls is not None and self.calls >= self.max_calls:
                raise LLMCallLimitExceeded(
                    self.max_calls,
                    f"LLM-call budget of {self.max_calls} exhausted ({purpose}); raise Limits.max_llm_calls "
                    f"or make the plan call the LLM less",
                )
            if self.max_tokens is not None and self.tokens >= self.max_tokens:
                raise self._over_tokens(purpose)
            self.calls += 1
        return llm

    def _over_tokens(self, purpose: str) -> TokenLimitExceeded:
        return TokenLimitExceeded(
            self.max_tokens or 0,
            f"token budget of {self.max_tokens:,} spent ({self.tokens:,} tokens, at {purpose}); raise "
            f"Limits.max_tokens / --max-tokens, or ask for shorter replies",
        )

    def _checked(self, reply: Completion, purpose: str) -> Completion:
        """The reply, counted against the token budget, unless it is larger than a value may be.
        A reply whose server reported no usage (some streams) counts an estimate of its completion
        (about 4 characters a token), so a token budget is never blind."""
        completion = reply.completion_tokens
        if completion is None:
            completion = -(-(len(reply.text) + len(reply.reasoning or "")) // 4)
        spent = (reply.prompt_tokens or 0) + completion
        if spent:
            with self._lock:
                self.tokens += spent
                over = self.max_tokens is not None and self.tokens > self.max_tokens
            if over:
                raise self._over_tokens(purpose)
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

    def _streamer(self, llm: LLM, seq_no: int | None, stream: bool) -> Callable[[str], None] | None:
        """Where streamed text goes, when this call streams (someone listens and the LLM can)."""
        on_token, loop = self.on_token, self._loop
        if not stream or on_token is None or loop is None or seq_no is None or not hasattr(llm, "stream"):
            return None
        return lambda delta: loop.call_soon_threadsafe(on_token, seq_no, delta)

    async def acomplete(
        self,
        prompt: str,
        *,
        purpose: str,
        system: str | None = None,
        json_schema: dict[str, Any] | None = None,
        role: str = "answer",
        stream: bool = False,
        seq_no: int | None = None,
    ) -> Completion:
        llm = self._take(purpose, role)
        try:
            to = self._streamer(llm, seq_no, stream and json_schema is None)
            acomplete = getattr(llm, "acomplete", None)
            if to is not None:
                call = functools.partial(llm.stream, prompt, system=system, on_delta=to)  # type: ignore[attr-defined]
                pool = self._executor() if self._executor is not None else None
                reply = await asyncio.get_running_loop().run_in_executor(pool, call)
            elif acomplete is not None:
                reply = await acomplete(prompt, system=system, json_schema=json_schema)
            else:
                call = functools.partial(llm.complete, prompt, system=system, json_schema=json_schema)
                pool = self._executor() if self._executor is not None else None
                reply = await asyncio.get_running_loop().run_in_executor(pool, call)
            return self._checked(as_completion(reply), purpose)
        except (RunError, asyncio.CancelledError):
            raise
        except LLMNotConfigured as exc:
            raise LLMUnavailable(purpose, str(exc)) from None
        except Exception as exc:
            raise LLMCallFailed(purpose, exc) from exc

    def complete(
        self, prompt: str, *, purpose: str, system: str | None = None, json_schema: dict[str, Any] | None = None, role: str = "answer"
    ) -> Completion:
        llm = self._take(purpose, role)
        try:
            if hasattr(llm, "complete"):
                return self._checked(as_completion(llm.complete(prompt, system=system, json_schema=json_schema)), purpose)
            if self._loop is None:  # pragma: no cover - only reachable with an async-only LLM outside a run
                raise LLMUnavailable(purpose)
            future = asyncio.run_coroutine_threadsafe(llm.acomplete(prompt, system=system, json_schema=json_schema), self._loop)
            return self._checked(as_completion(future.result()), purpose)
        except RunError:
            raise
        except LLMNotConfigured as exc:
            raise LLMUnavailable(purpose, str(exc)) from None
        except Exception as exc:
            raise LLMCallFailed(purpose, exc) from exc

    def emit(self, seq_no: int | None, text: str) -> None:
        """Send ``text`` to the token listener, for an answer that was not streamed by an LLM."""
        if self.on_token is not None and self._loop is not None and seq_no is not None and text:
            self._loop.call_soon_threadsafe(self.on_token, seq_no, text)

    def model_of(self, role: str) -> str | None:
        llm = self.roles.get(role)
        model = getattr(llm, "model", None)
        return model if isinstance(model, str) else None


class StepLLM:
    """The run's LLM for one role, as one step sees it: every call is recorded in ``records``
    (prompt, reply, role, model, token counts)."""

    def __init__(self, run_llm: RunLLM, purpose: str, records: list[dict[str, Any]], *, role: str = "answer", seq_no: int | None = None) -> None:
        self._run_llm = run_llm
        self._purpose = purpose
        self._role = role
        self._seq_no = seq_no
        self.records = records

    @property
    def available(self) -> bool:
        return self._run_llm.available_for(self._role)

    @property
    def backend(self) -> Any:
        """The LLM object serving this role (to check for optional abilities)."""
        return self._run_llm.roles.get(self._role)

    def note(self, prompt: str, text: str, reasoning: str | None, **extra: Any) -> None:
        """Record an exchange that did not go through ``complete`` (an offline backend's answer);
        ``extra`` facts about it (e.g. ``found=False``) are kept in the record too."""
        self.records.append(
            {"prompt": prompt, "system": None, "text": text, "reasoning": reasoning, "role": self._role,
             "model": self._run_llm.model_of(self._role), "prompt_tokens": None, "completion_tokens": None, **extra}
        )

    def emit(self, text: str) -> None:
        """Stream ``text`` as part of this step's answer (for a backend that is not an LLM)."""
        self._run_llm.emit(self._seq_no, text)

    def adopt(self, records: list[dict[str, Any]]) -> None:
        """Take as this step's own the exchanges a call made before the run began (a call started
        while its plan was still being written): recorded here, and counted against the run's
        LLM-call and token budgets as if made now (``LLMCallLimitExceeded`` when over)."""
        run_llm = self._run_llm
        for record in records:
            run_llm._take(self._purpose, record.get("role") or self._role)
            spent = (record.get("prompt_tokens") or 0) + (record.get("completion_tokens") or 0)
            with run_llm._lock:
                run_llm.tokens += spent
            self.records.append(record)

    def _record(self, prompt: str, system: str | None, reply: Completion) -> Completion:
        self.records.append(
            {"prompt": prompt, "system": system, "text": redact(reply.text), "reasoning": redact(reply.reasoning or "") or None,
             "role": self._role,
             "model": reply.model or self._run_llm.model_of(self._role), "prompt_tokens": reply.prompt_tokens,
             "completion_tokens": reply.completion_tokens, "finish_reason": reply.finish_reason}
        )
        return reply

    def complete(self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None) -> Completion:
        if telemetry.tracer is not None:
            with telemetry.llm_span(self._role, self._run_llm.model_of(self._role), self._seq_no) as current:
                reply = self._run_llm.complete(prompt, purpose=self._purpose, system=system, json_schema=json_schema, role=self._role)
                telemetry.record_reply(current, reply)
                return self._record(prompt, system, reply)
        reply = self._run_llm.complete(prompt, purpose=self._purpose, system=system, json_schema=json_schema, role=self._role)
        return self._record(prompt, system, reply)

    async def acomplete(
        self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None, stream: bool = False
    ) -> Completion:
        """Ask the LLM; ``stream=True`` sends the answer's text to the run's token listener as it
        is written (when there is one and the LLM can stream)."""
        if telemetry.tracer is not None:
            with telemetry.llm_span(self._role, self._run_llm.model_of(self._role), self._seq_no) as current:
                reply = await self._run_llm.acomplete(
                    prompt, purpose=self._purpose, system=system, json_schema=json_schema, role=self._role, stream=stream, seq_no=self._seq_no
                )
                telemetry.record_reply(current, reply)
                return self._record(prompt, system, reply)
        reply = await self._run_llm.acomplete(
            prompt, purpose=self._purpose, system=system, json_schema=json_schema, role=self._role, stream=stream, seq_no=self._seq_no
        )
        return self._record(prompt, system, reply)


@dataclass(slots=True)
class CallContext:
    """What a tool may know about the step that calls it."""

    seq_no: int
    tool_name: str
    output_vars: tuple[str, ...]
    llm: StepLLM
    notes: list[str] = field(default_factory=list)  # said on the step's record (e.g. "called again after a restart")

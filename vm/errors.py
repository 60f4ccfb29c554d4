"""Every error planvm raises, in one hierarchy.

::

    PlanVMError
    ├── PlanError                      the plan cannot be run at all (nothing has executed)
    │   ├── PlanLoadError              missing file, not JSON, not a JSON array
    │   └── PlanValidationError        static problems; ``.problems`` lists all of them
    ├── ToolRegistrationError          a tool cannot be registered (duplicate name, bad signature)
    ├── StoreError                     the run store cannot be used (``path``)
    │   ├── StoreUnavailable           the database server cannot be reached (now; try again)
    │   ├── RunNotFound                no run with that id (``run_id``)
    │   ├── LeaseLost                  this process's lease on a run ran out; it must stop writing it
    │   ├── RunBusy                    another live process is executing that run
    │   ├── RunStateError              the run is not in a state the request can act on (``status``)
    │   │   └── RunCancelled           the run was cancelled (by any process): its executor stops
    │   └── ForkError                  a fork point the run never reached, or a plan that rewrites it
    ├── ReplayError                    a record that cannot be replayed (its plan no longer matches)
    ├── PlanningError                  the planner produced no valid plan (``attempts``)
    ├── LLMError                       an LLM backend failed or is not configured
    │   ├── LLMNotConfigured           the backend is no model (the offline extractive baseline)
    │   ├── LLMBadReply                a 200 reply that is not a chat completion (no message, text that is not text)
    │   ├── AnswerTruncated            the answer was cut: its token limit, or a stream that ended early
    │   └── EmptyAnswer                no answer text (nothing, or reasoning only)
    ├── BackendUnavailable             a built-in tool's backend (e.g. a knowledge base) is not set up
    └── RunError                       a step failed while the plan ran (``seq_no``, ``instruction_type``)
        ├── VariableUndefined          ``${x}`` read before anything assigned ``x``
        ├── ReferencePathError         ``${x.key}`` / ``${x[0]}`` reaches into something that is not there
        ├── ExpressionError            arithmetic on a non-number, division by zero, a result too large
        ├── ToolError                  (``tool_name``)
        │   ├── ToolNotFound           no tool of that name in the registry
        │   ├── ToolNotAllowed         the tool exists but the run's allow-list leaves it out
        │   ├── ToolParamsInvalid      a missing or wrong-typed ``tool_params`` entry (``parameter``)
        │   ├── ToolFailed             the tool raised; the tool's exception is ``__cause__``
        │   └── ToolRejected           a person rejected a call that needed approval
        ├── OutputMappingError         a tool result that cannot be mapped onto ``output_vars``
        ├── ConditionError             a ``jmp`` condition reply that is not ``{"result": bool, ...}``
        ├── LLMUnavailable             a step needs an LLM and the run has none
        ├── LLMCallFailed              the run's LLM raised; its exception is ``__cause__``
        ├── NoFinalAnswer              the plan ran off its end without assigning ``final_answer``
        ├── UnstorableValue            a value with no JSON form (an object, bytes, a 5,000-digit integer)
        └── LimitExceeded              a run budget ran out (``limit``, ``value``)
            ├── StepLimitExceeded
            ├── TimeLimitExceeded
            ├── LLMCallLimitExceeded
            ├── TokenLimitExceeded
            └── ValueTooLarge          a value over max_value_bytes or max_depth

Every message says what went wrong and what to do about it. Exceptions carry the same facts as
attributes, so callers never parse messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "AnswerTruncated",
    "ApprovalNeeded",
    "BackendUnavailable",
    "BadInput",
    "ConditionError",
    "EmptyAnswer",
    "ExpressionError",
    "ForkError",
    "LLMBadReply",
    "LLMCallFailed",
    "LLMCallLimitExceeded",
    "LLMError",
    "LLMNotConfigured",
    "LLMUnavailable",
    "LeaseLost",
    "LimitExceeded",
    "NoFinalAnswer",
    "OutputMappingError",
    "PlanError",
    "PlanLoadError",
    "PlanVMError",
    "PlanValidationError",
    "PlanningError",
    "Problem",
    "QuotaExceeded",
    "ReferencePathError",
    "ReplayError",
    "RunBusy",
    "RunCancelled",
    "RunError",
    "RunNotFound",
    "RunStateError",
    "StepLimitExceeded",
    "StoreError",
    "StoreUnavailable",
    "TimeLimitExceeded",
    "TokenLimitExceeded",
    "ToolError",
    "ToolFailed",
    "ToolNotAllowed",
    "ToolNotFound",
    "ToolParamsInvalid",
    "ToolRegistrationError",
    "ToolRejected",
    "UnstorableValue",
    "ValueTooLarge",
    "VariableUndefined",
]


class PlanVMError(Exception):
    """Base of every error planvm raises on purpose. Its message is masked here (configured keys
    and tokens, credential shapes; see :mod:`vm.redact`), before anything can print, store, log,
    send or shorten it."""

    def __init__(self, *args: Any) -> None:
        from vm.redact import redact

        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class BadInput(PlanVMError, ValueError):
    """What was asked for is not usable as given (an option, a request field, a setting): the
    message says what to change. Front ends answer it as bad input (HTTP 422, exit 2, an MCP tool
    error); any exception that is not a :class:`PlanVMError` is a bug."""


# --- before anything runs -------------------------------------------------------------------


class PlanError(PlanVMError):
    """The plan cannot be run at all."""


class PlanLoadError(PlanError):
    """The plan file is missing, is not JSON, or is not a JSON array of instructions."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


@dataclass(frozen=True, slots=True)
class Problem:
    """One static problem in a plan. ``seq_no`` is None when the problem is not tied to one step."""

    seq_no: int | None
    code: str
    message: str

    def __str__(self) -> str:
        where = "plan" if self.seq_no is None else f"seq_no {self.seq_no}"
        return f"{where}: {self.message}"


class PlanValidationError(PlanError):
    """Static validation found problems; ``problems`` holds every one of them, in plan order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"the plan has {n} problem{'s' if n != 1 else ''}; fix them and run again:\n{lines}")


class ToolRegistrationError(PlanVMError):
    """A tool cannot be registered: a duplicate name, or a signature that cannot be described."""

    def __init__(self, message: str, *, tool_name: str | None = None) -> None:
        super().__init__(message)
        self.tool_name = tool_name


class StoreError(PlanVMError):
    """The run store cannot be used: a corrupt or locked file, or a request it cannot serve."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StoreUnavailable(StoreError):
    """The run store's database server cannot be reached (it is down, or the network is cut)."""


class RunNotFound(StoreError):
    def __init__(self, run_id: str, path: str | None = None) -> None:
        super().__init__(f"no run with id '{run_id}' in {path or 'the run store'}; list runs with `planvm runs list`", path=path)
        self.run_id = run_id


class RunBusy(StoreError):
    def __init__(self, run_id: str, owner: str, path: str | None = None) -> None:
        super().__init__(
            f"run '{run_id}' is being executed by another live process ({owner}); wait for it to finish, "
            f"or stop that process first",
            path=path,
        )
        self.run_id = run_id
        self.owner = owner


class LeaseLost(StoreError):
    """This process no longer holds the run's lease (it ran out while the process was paused or
    cut off, and another worker may have taken the run): it must not write the run again."""

    def __init__(self, run_id: str, owner: str, path: str | None = None) -> None:
        super().__init__(
            f"this process ({owner}) lost its lease on run '{run_id}' (it ran out, so another worker may continue the "
            f"run); it stops without writing more",
            path=path,
        )
        self.run_id = run_id


class RunStateError(StoreError):
    """A request the run's status does not allow (approving a run that is not waiting, resuming a
    cancelled one): the lifecycle in :mod:`vm.store.lifecycle` says which transitions exist."""

    def __init__(self, message: str, *, run_id: str, status: str, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.run_id = run_id
        self.status = status


class QuotaExceeded(StoreError):
    """A namespace's quota does not allow this now: its runs at once, or its tokens of the day
    (HTTP 429). ``retry_after``: seconds after which trying again may succeed (None: unknown)."""

    def __init__(self, message: str, *, namespace: str, retry_after: float | None = None, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.namespace = namespace
        self.retry_after = retry_after


class RunCancelled(RunStateError):
    """The run was cancelled while this process executed it: it stops without writing more."""

    def __init__(self, run_id: str, path: str | None = None) -> None:
        super().__init__(
            f"run '{run_id}' was cancelled; it stops here and records nothing more (fork it to go on)",
            run_id=run_id, status="cancelled", path=path,
        )


class ForkError(StoreError):
    """A fork that cannot start: the fork point was never reached, or the new plan rewrites steps
    that were already executed before it."""


class ReplayError(PlanVMError):
    """A record cannot be replayed: its plan asks for a step or reply the record does not have."""

    def __init__(self, message: str, *, seq_no: int | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.seq_no = seq_no
        self.index = index


class PlanningError(PlanVMError):
    """The planner gave up: no reply parsed into a plan that validates, within its attempts.

    ``attempts`` keeps every try (prompt, reply, problems) for inspection.
    """

    def __init__(self, message: str, *, attempts: list[Any] | None = None) -> None:
        super().__init__(message)
        self.attempts = list(attempts or [])


class LLMError(PlanVMError):
    """An LLM backend failed (outside of a run step, or as the cause of one)."""


class LLMNotConfigured(LLMError):
    """The configured backend is not a language model (the offline extractive baseline): a step
    that needs judgement fails with :class:`LLMUnavailable`, saying once how to configure one."""


class LLMBadReply(LLMError):
    """The server answered 200 with something that is not a chat completion: no choices, a choice
    without a message, or content that is not text."""


class AnswerTruncated(LLMError):
    """The answer was cut: the model reached its token limit (``finish_reason: length``), or a
    streamed reply ended before the server said it was complete. A cut answer never passes as one."""


class EmptyAnswer(LLMError):
    """The reply had no answer text: nothing at all, or only a reasoning model's thinking."""


class BackendUnavailable(PlanVMError):
    """A built-in tool has no backend to serve it (a tool raising it fails its step)."""


# --- while a plan runs ----------------------------------------------------------------------


class RunError(PlanVMError):
    """A step failed while the plan ran. ``seq_no`` and ``instruction_type`` name the step."""

    def __init__(self, message: str, *, seq_no: int | None = None, instruction_type: str | None = None) -> None:
        super().__init__(message)
        self.seq_no = seq_no
        self.instruction_type = instruction_type
        self.detail = self.args[0] if self.args else message  # masked

    def locate(self, seq_no: int, instruction_type: str) -> RunError:
        """Attach the step's position if it is not known yet (errors raised deep inside evaluation)."""
        if self.seq_no is None:
            self.seq_no = seq_no
            self.instruction_type = instruction_type
        return self

    def __str__(self) -> str:
        if self.seq_no is None:
            return self.detail
        return f"seq_no {self.seq_no} ({self.instruction_type}): {self.detail}"


class VariableUndefined(RunError):
    def __init__(self, variable: str, **where: Any) -> None:
        super().__init__(
            f"variable '{variable}' is used before any step assigned it; assign it in an earlier step "
            f"(assign, or a calling step's output_vars) or fix the name",
            **where,
        )
        self.variable = variable


class ReferencePathError(RunError):
    def __init__(self, reference: str, message: str, *, variable: str, **where: Any) -> None:
        super().__init__(f"cannot resolve ${{{reference}}}: {message}", **where)
        self.variable = variable
        self.reference = reference


class ExpressionError(RunError):
    def __init__(self, expression: str, message: str, **where: Any) -> None:
        super().__init__(f"cannot evaluate {expression!r}: {message}", **where)
        self.expression = expression


class ToolError(RunError):
    def __init__(self, message: str, *, tool_name: str, **where: Any) -> None:
        super().__init__(message, **where)
        self.tool_name = tool_name


class ToolNotFound(ToolError):
    def __init__(self, tool_name: str, available: list[str], **where: Any) -> None:
        names = ", ".join(sorted(available)) or "none"
        super().__init__(
            f"no tool named '{tool_name}' is registered (registered: {names}); register it or fix the name",
            tool_name=tool_name,
            **where,
        )


class ToolNotAllowed(ToolError):
    def __init__(self, tool_name: str, allowed: list[str], **where: Any) -> None:
        names = ", ".join(sorted(allowed)) or "none"
        super().__init__(
            f"tool '{tool_name}' is not in this run's allow-list ({names}); add it to the allow-list "
            f"or change the plan",
            tool_name=tool_name,
            **where,
        )


class ToolParamsInvalid(ToolError):
    def __init__(self, tool_name: str, parameter: str | None, message: str, **where: Any) -> None:
        what = f"parameter '{parameter}'" if parameter else "its parameters"
        super().__init__(f"tool '{tool_name}' rejected {what}: {message}", tool_name=tool_name, **where)
        self.parameter = parameter


class ToolFailed(ToolError):
    def __init__(self, tool_name: str, cause: BaseException, **where: Any) -> None:
        if isinstance(cause, BackendUnavailable):  # not the call's fault: the message says what to set up
            message = f"tool '{tool_name}' cannot run: {cause}"
        else:
            message = (
                f"tool '{tool_name}' raised {type(cause).__name__}: {cause} (check the parameters this step passed, "
                f"shown in the trace, or the tool itself)"
            )
        super().__init__(message, tool_name=tool_name, **where)


class ToolRejected(ToolError):
    """A call to a tool that needs approval was rejected; the step fails."""

    def __init__(self, tool_name: str, reason: str | None = None, **where: Any) -> None:
        why = f": {reason}" if reason else ""
        super().__init__(
            f"the call to tool '{tool_name}' was rejected{why}; fork the run with a changed plan to go on without it",
            tool_name=tool_name,
            **where,
        )


class ApprovalNeeded(RunError):
    """Not a failure: the step calls a tool that needs approval, so the run waits for a decision.

    The VM stores the pending call (``tool_name``, resolved ``tool_params``) and the run's status
    becomes ``waiting``; :meth:`vm.VM.approve` continues it.
    """

    def __init__(self, tool_name: str, tool_params: dict[str, Any], **where: Any) -> None:
        super().__init__(f"the call to tool '{tool_name}' waits for approval", **where)
        self.tool_name = tool_name
        self.tool_params = tool_params


class OutputMappingError(RunError):
    def __init__(self, message: str, *, variable: str | None = None, keys: list[str] | None = None, **where: Any) -> None:
        super().__init__(message, **where)
        self.variable = variable
        self.keys = keys


class ConditionError(RunError):
    def __init__(self, message: str, *, reply: str, **where: Any) -> None:
        super().__init__(message, **where)
        self.reply = reply


class LLMUnavailable(RunError):
    def __init__(self, purpose: str, hint: str | None = None, **where: Any) -> None:
        super().__init__(
            f"{purpose} needs an LLM and this run has none; "
            + (hint or "pass one (VM(registry, llm=...)) or configure one for the command line"),
            **where,
        )


class LLMCallFailed(RunError):
    def __init__(self, purpose: str, cause: BaseException, **where: Any) -> None:
        super().__init__(
            f"the LLM call for {purpose} failed: {type(cause).__name__}: {cause}; check the LLM backend "
            f"(address, key, model) and try again",
            **where,
        )


class NoFinalAnswer(RunError):
    def __init__(self, **where: Any) -> None:
        super().__init__(
            "the plan ran past its last step without assigning 'final_answer'; make the last step "
            "on every path assign final_answer",
            **where,
        )


class LimitExceeded(RunError):
    limit_name = "limit"

    def __init__(self, value: float, message: str, **where: Any) -> None:
        super().__init__(message, **where)
        self.limit = self.limit_name
        self.value = value


class StepLimitExceeded(LimitExceeded):
    limit_name = "max_steps"


class TimeLimitExceeded(LimitExceeded):
    limit_name = "max_seconds"


class LLMCallLimitExceeded(LimitExceeded):
    limit_name = "max_llm_calls"


class TokenLimitExceeded(LimitExceeded):
    limit_name = "max_tokens"


class ValueTooLarge(LimitExceeded):
    """A value over ``Limits.max_value_bytes`` or deeper than ``Limits.max_depth`` (``limit`` says which)."""

    limit_name = "max_value_bytes"

    def __init__(self, value: float, message: str, *, limit: str = "max_value_bytes", **where: Any) -> None:
        super().__init__(value, message, **where)
        self.limit = limit


class UnstorableValue(RunError):
    """A value with no JSON form: the run could not record it, so the step fails."""

"""One table from an error to what each front end answers: the HTTP status, the exit code of the
command line, and the MCP reply. The CLI's error boundary, the service's exception handler and
the MCP server's all read it, and docs/architecture.md shows it (a test keeps them equal).

planvm's own errors (:class:`vm.PlanVMError`) carry a message a person can act on: it is shown
as it is. Any other exception is a bug: HTTP 500 and exit code 1, with an error id; the
traceback goes to the server's log (or ``errors.log``), never to the client.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from vm.errors import (
    BackendUnavailable,
    BadInput,
    ForkError,
    LLMError,
    PlanError,
    PlanningError,
    PlanValidationError,
    PlanVMError,
    QuotaExceeded,
    RunBusy,
    RunNotFound,
    RunStateError,
    StoreError,
    StoreUnavailable,
)

__all__ = ["Answer", "answer_for", "error_table", "markdown_table", "new_error_id"]


@dataclass(frozen=True)
class Answer:
    """What the front ends answer for one kind of error."""

    http: int
    exit: int
    meaning: str
    bug: bool = False  # an unexpected exception: the client gets an error id, not the message

    @property
    def mcp(self) -> str:
        return "tool error with an error id" if self.bug else "tool error with the message"


def _judge_errors() -> tuple[type[Exception], type[Exception]]:
    from planner.judge import JudgeError, NothingToJudge

    return NothingToJudge, JudgeError


def _table() -> list[tuple[tuple[type[BaseException], ...], Answer]]:
    nothing_to_judge, judge_error = _judge_errors()
    return [
        ((RunNotFound,), Answer(404, 2, "no run with that id (or prefix)")),
        ((QuotaExceeded,), Answer(429, 2, "the namespace's quota (runs at once, tokens a day) does not allow it now; try again later")),
        ((StoreUnavailable,), Answer(503, 2, "the run store's database cannot be reached now; try again")),
        ((RunStateError, RunBusy, ForkError), Answer(409, 2, "the run's state does not allow it (finished, cancelled, busy, a fork point it never reached)")),
        ((nothing_to_judge,), Answer(409, 2, "a run with no answer to judge")),
        ((judge_error,), Answer(502, 2, "the judge model's reply could not be used")),
        ((PlanValidationError, PlanError, PlanningError, BadInput), Answer(422, 2, "bad input: a plan, goal, setting or request that cannot be used")),
        ((LLMError,), Answer(502, 2, "a model server failed or answered something unusable")),
        ((BackendUnavailable,), Answer(503, 2, "a backend is not set up (knowledge base, model, MCP server, settings)")),
        ((StoreError,), Answer(409, 2, "the run store cannot do it (locked, read-only, not a store)")),
        ((PlanVMError,), Answer(422, 2, "any other planvm error (its message says what to do)")),
        ((BaseException,), Answer(500, 1, "a bug: the client gets an error id, the traceback goes to the log", bug=True)),
    ]


_TABLE: list[tuple[tuple[type[BaseException], ...], Answer]] | None = None


def error_table() -> list[tuple[tuple[type[BaseException], ...], Answer]]:
    """The table, most specific first (the first row whose classes match an error answers it)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _table()
    return _TABLE



def answer_for(exc: BaseException) -> Answer:
    """The row of the table that answers ``exc``."""
    for classes, answer in error_table():
        if isinstance(exc, classes):
            return answer
    raise AssertionError("the table's last row matches every exception")  # pragma: no cover


def new_error_id() -> str:
    """A short id tying a client's message to the traceback in the log."""
    return uuid.uuid4().hex[:10]


def markdown_table() -> str:
    """The table as docs/architecture.md shows it."""
    lines = ["| error | HTTP | exit code | MCP | meaning |", "| --- | --- | --- | --- | --- |"]
    for classes, answer in error_table():
        names = ", ".join(f"`{c.__name__}`" if c is not BaseException else "any other exception" for c in classes)
        lines.append(f"| {names} | {answer.http} | {answer.exit} | {answer.mcp} | {answer.meaning} |")
    return "\n".join(lines)


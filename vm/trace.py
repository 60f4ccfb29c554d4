"""What a run leaves behind: a :class:`StepRecord` per executed instruction, and a :class:`RunResult`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from vm.errors import RunError

__all__ = ["RunListener", "RunResult", "StepRecord"]

# Shared, read-only defaults: a step record allocates no container it does not fill, which keeps
# the garbage collector's work per step small (see bench/vm_overhead.py).
_NOTHING: Mapping[str, Any] = MappingProxyType({})


class StepRecord:
    """One executed instruction in a run's trace.

    ``inputs``: resolved tool parameters (``calling``), the rendered condition (``jmp``) or the
    reasoning text; ``outputs``: the variables the step set (only those: the state at any step is
    the run's initial variables plus the outputs of the steps before it); ``result``: the raw tool
    reply, or a jump's verdict ``{"result", "explanation"}``; ``llm_calls``: every LLM exchange
    the step made (prompt, text, reasoning); ``next_seq``: where a jump went; ``notes``: what
    happened on the way that the outcome does not show (a call made again after its MCP server
    restarted).
    """

    __slots__ = (
        "duration_s", "error", "inputs", "llm_calls", "next_seq", "notes", "outputs", "result", "seq_no", "started_at", "tool", "type",
    )

    def __init__(self, seq_no: int, type: str) -> None:  # noqa: A002 - the plan's own field name
        self.seq_no = seq_no
        self.type = type
        self.inputs: Mapping[str, Any] = _NOTHING
        self.outputs: Mapping[str, Any] = _NOTHING
        self.result: Any = None
        self.duration_s = 0.0
        self.started_at: float | None = None  # seconds since the epoch (steps that overlapped show it)
        self.tool: str | None = None
        self.next_seq: int | None = None
        self.error: str | None = None
        self.llm_calls: Sequence[dict[str, Any]] = ()
        self.notes: Sequence[str] = ()

    def __repr__(self) -> str:
        return f"StepRecord(seq_no={self.seq_no}, type={self.type!r}, tool={self.tool!r}, error={self.error!r})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq_no": self.seq_no,
            "type": self.type,
            "tool": self.tool,
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "result": self.result,
            "next_seq": self.next_seq,
            "duration_s": self.duration_s,
            "started_at": self.started_at,
            "error": self.error,
            "llm_calls": list(self.llm_calls),
            "notes": list(self.notes),
        }

    @classmethod
    def from_stored(cls, stored: Any) -> StepRecord:
        """A record rebuilt from the run store (a :class:`vm.store.StoredStep`)."""
        record = cls(stored.seq_no, stored.type)
        record.inputs = stored.inputs
        record.outputs = stored.outputs
        record.result = stored.result
        record.duration_s = stored.duration_s
        record.started_at = stored.started_at
        record.tool = stored.tool
        record.next_seq = stored.next_seq
        record.error = stored.error
        record.llm_calls = stored.llm_calls
        record.notes = stored.notes
        return record


@dataclass(slots=True)
class RunListener:
    """Who hears about one run as it goes (every callback optional, each called on the run's
    event loop): ``on_start(run_id)`` once the run is in the store; ``on_step_start(seq_no,
    type, tool)`` when a tool call or jump begins; ``on_step(record)`` as each step is committed;
    ``on_token(seq_no, text)`` with each piece of an answer streamed by ``llm_generate``."""

    on_start: Callable[[str], None] | None = None
    on_open: Callable[[str, int], None] | None = None  # (run_id, steps already committed) as it (re)starts here
    on_step: Callable[[StepRecord], None] | None = None
    on_step_start: Callable[[int, str, str | None], None] | None = None
    on_token: Callable[[int, str], None] | None = None


@dataclass(slots=True)
class RunResult:
    """What a run ended with. ``status`` is ``"completed"``, ``"failed"`` (then ``error`` says
    why), ``"waiting"`` (a tool call waits for approval: ``pending`` holds it) or ``"cancelled"``
    (cancelled in the store while it ran: nothing after the cancel was recorded).

    ``run_id`` names the run in the store (None when the VM has no store).
    """

    status: Literal["completed", "failed", "waiting", "cancelled"]
    final_answer: Any
    variables: dict[str, Any]
    trace: list[StepRecord]
    error: RunError | None = None
    llm_calls: int = 0
    duration_s: float = 0.0
    run_id: str | None = None
    pending: dict[str, Any] | None = None
    tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    @property
    def steps(self) -> int:
        """Number of executed instructions (a loop counts every pass)."""
        return len(self.trace)

    def raise_for_error(self) -> RunResult:
        """Raise the run's error, if it failed; return the result otherwise."""
        if self.error is not None:
            raise self.error
        return self

    def to_dict(self, *, trace: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "status": self.status,
            "final_answer": self.final_answer,
            "variables": self.variables,
            "steps": self.steps,
            "error": str(self.error) if self.error else None,
        }
        if self.pending is not None:
            data["pending"] = self.pending
        if trace:
            data["trace"] = [r.to_dict() for r in self.trace]
        return data

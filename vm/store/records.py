"""What the store keeps: a run and its steps as Python objects, and how values become stored text."""

from __future__ import annotations

import array
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import to_jsonable_python

from vm import bulk
from vm.errors import BadInput, StoreError
from vm.jsonsafe import clean_text
from vm.redact import mask_secrets

__all__ = ["StoredRun", "StoredStep"]


def _dumps(value: Any) -> str:
    # Values reach the store through vm.jsonsafe.storable; this is the last guard for the rest
    # (LLM exchanges, inputs): no NaN, no text SQLite cannot encode. A large plan is written a
    # slice at a time (vm.bulk: no thread holds the GIL for the whole text).
    text = bulk.dumps(value, ensure_ascii=False, default=to_jsonable_python) if bulk.sizeable(value) else _encode(value)
    return mask_secrets(clean_text(text))


# What json.dumps(value, ensure_ascii=False, default=to_jsonable_python) does, without making an
# encoder for each value (a run stores a few for every step).
_encode = json.JSONEncoder(ensure_ascii=False, default=to_jsonable_python).encode


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    if len(text) < bulk.LARGE_TEXT:
        return json.loads(text)
    with bulk.making():  # a large plan read back: its objects made with the collector paused
        return bulk.loads(text)


@dataclass(slots=True)
class StoredStep:
    index: int
    seq_no: int
    type: str
    tool: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    llm_calls: list[dict[str, Any]] = field(default_factory=list)
    next_seq: int | None = None
    duration_s: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    started_at: float | None = None  # seconds since the epoch (None for steps recorded before 0006)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seq_no": self.seq_no,
            "type": self.type,
            "tool": self.tool,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "result": self.result,
            "llm_calls": self.llm_calls,
            "next_seq": self.next_seq,
            "duration_s": self.duration_s,
            "error": self.error,
            "notes": self.notes,
            "started_at": self.started_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredStep:
        """A step from an export; raises ``ValueError`` naming the field that is not as written."""
        if not isinstance(data, dict):
            raise BadInput(f"a step is a JSON object, got {type(data).__name__}")

        def field_of(name: str, kind: type | tuple[type, ...], default: Any) -> Any:
            value = data.get(name)
            if value is None:
                return default
            if not isinstance(value, kind) or isinstance(value, bool):  # no field of a step is a bool
                kinds = kind if isinstance(kind, tuple) else (kind,)
                wanted = " or ".join(k.__name__ for k in kinds)
                raise BadInput(f"'{name}' should be {wanted}, got {type(value).__name__}")
            return value

        for name in ("index", "seq_no", "type"):
            if name not in data:
                raise BadInput(f"'{name}' is missing")
        calls = field_of("llm_calls", list, [])
        if not all(isinstance(c, dict) for c in calls):
            raise BadInput("'llm_calls' should be a list of objects")
        return cls(
            index=field_of("index", int, 0),
            seq_no=field_of("seq_no", int, 0),
            type=field_of("type", str, ""),
            tool=field_of("tool", str, None),
            inputs=field_of("inputs", dict, {}),
            outputs=field_of("outputs", dict, {}),
            result=data.get("result"),
            llm_calls=calls,
            next_seq=field_of("next_seq", int, None),
            duration_s=float(field_of("duration_s", (int, float), 0.0)),
            error=field_of("error", str, None),
            notes=[str(n) for n in field_of("notes", list, [])],
            started_at=float(started) if isinstance((started := data.get("started_at")), (int, float)) and not isinstance(started, bool) else None,
        )


@dataclass(slots=True)
class StoredRun:
    id: str
    status: str
    plan: list[Any]
    variables: dict[str, Any]
    steps: list[StoredStep]
    created_at: float = 0.0
    updated_at: float = 0.0
    goal: str | None = None
    metadata: dict[str, Any] | None = None
    parent_id: str | None = None
    fork_seq: int | None = None
    final_answer: Any = None
    error: str | None = None
    owner: str | None = None  # the worker whose lease it is, while a run is executed
    lease_expires_at: float | None = None
    limits: dict[str, Any] | None = None  # the run's Limits (None in runs recorded before they were kept)
    planning: dict[str, Any] | None = None  # how the plan was made (planner, reasoning, model, tokens)
    pending: dict[str, Any] | None = None  # a waiting run's call: {seq_no, tool, tool_params, index}
    approve_tools: list[str] | None = None
    judgement: dict[str, Any] | None = None  # the judge's grade (`planvm judge`), None until judged
    best_of: str | None = None  # set when a plan search from that run chose this one as its best
    tools: dict[str, Any] | None = None  # where its tools came from (plugins with their hashes, MCP servers, builtins)
    spent_s: float = 0.0  # execution seconds its kept steps do not show: failed steps dropped by a resume (0007)

    @property
    def score(self) -> float | None:
        value = (self.judgement or {}).get("score")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def token_totals(self) -> dict[str, dict[str, int]]:
        """Prompt and completion tokens per model role (planner, answer, condition), and in all."""
        totals: dict[str, dict[str, int]] = {}

        def add(role: str, prompt: Any, completion: Any) -> None:
            for key in (role, "total"):
                row = totals.setdefault(key, {"prompt_tokens": 0, "completion_tokens": 0})
                row["prompt_tokens"] += prompt if isinstance(prompt, int) else 0
                row["completion_tokens"] += completion if isinstance(completion, int) else 0

        if self.planning:
            add("planner", self.planning.get("prompt_tokens"), self.planning.get("completion_tokens"))
        for step in self.steps:
            for call in step.llm_calls:
                add(str(call.get("role") or ("condition" if step.type == "jmp" else "answer")),
                    call.get("prompt_tokens"), call.get("completion_tokens"))
        return totals

    def active_seconds(self, steps: int | None = None) -> float:
        """The seconds the run has spent executing over its life (what ``max_seconds`` counts):
        its planning, the steps kept (of its first ``steps`` when given; steps that overlapped
        counted once) and the steps a resume dropped. Time spent queued, stopped or waiting for
        an approval is not counted."""
        planned = (self.planning or {}).get("seconds")
        total = float(planned) if isinstance(planned, (int, float)) and not isinstance(planned, bool) else 0.0
        return total + self.spent_s + busy_seconds((s.started_at, s.duration_s) for s in self.steps[:steps])

    def variables_at(self, step: int | None = None) -> dict[str, Any]:
        """The variables before trace position ``step`` (None: after the last step)."""
        state = dict(self.variables)
        for s in self.steps[: step if step is not None else len(self.steps)]:
            state.update(s.outputs)
        return state

    def to_dict(self) -> dict[str, Any]:
        """The run as one JSON-ready document (the format ``planvm runs export`` writes)."""
        return {
            "format": "planvm-run/1",
            "run": {
                "id": self.id,
                "status": self.status,
                "goal": self.goal,
                "metadata": self.metadata,
                "parent_id": self.parent_id,
                "fork_seq": self.fork_seq,
                "created_at": self.created_at,
                "updated_at": self.updated_at,
                "final_answer": self.final_answer,
                "error": self.error,
                "variables": self.variables,
                "limits": self.limits,
                "planning": self.planning,
                "judgement": self.judgement,
                "best_of": self.best_of,
                "tools": self.tools,
            },
            "plan": self.plan,
            "steps": [s.to_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredRun:
        """A run from an export (``planvm runs export``); raises ``StoreError`` naming what is wrong."""
        if not isinstance(data, dict) or data.get("format") != "planvm-run/1":
            raise StoreError("not a planvm run export (expected a JSON object with \"format\": \"planvm-run/1\")")

        def bad(what: str) -> StoreError:
            return StoreError(f"not a usable planvm run export: {what}; export the run again with `planvm runs export`")

        run = data.get("run") or {}
        if not isinstance(run, dict):
            raise bad(f"'run' should be an object, got {type(run).__name__}")
        plan = data.get("plan") or []
        if isinstance(plan, str):
            try:
                plan = json.loads(plan)
            except (ValueError, RecursionError):
                raise bad("'plan' is text that is not a JSON array") from None
        if not isinstance(plan, list):
            raise bad(f"'plan' should be an array of instructions, got {type(plan).__name__}")
        variables = run.get("variables") or {}
        if not isinstance(variables, dict):
            raise bad(f"'run.variables' should be an object, got {type(variables).__name__}")
        metadata = run.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise bad(f"'run.metadata' should be an object, got {type(metadata).__name__}")
        raw_steps = data.get("steps") or []
        if not isinstance(raw_steps, list):
            raise bad(f"'steps' should be an array, got {type(raw_steps).__name__}")
        steps = []
        for i, raw in enumerate(raw_steps):
            try:
                steps.append(StoredStep.from_dict(raw))
            except (ValueError, TypeError) as exc:
                raise bad(f"steps[{i}]: {exc}") from None

        def text(name: str) -> str | None:
            value = run.get(name)
            return value if isinstance(value, str) else None

        def number(name: str) -> float:
            value = run.get(name)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

        fork_seq = run.get("fork_seq")
        limits = run.get("limits")
        if limits is not None and not isinstance(limits, dict):
            raise bad(f"'run.limits' should be an object, got {type(limits).__name__}")
        return cls(
            id=text("id") or "exported",
            status=text("status") or "unknown",
            plan=plan,
            variables=variables,
            steps=steps,
            created_at=number("created_at"),
            updated_at=number("updated_at"),
            goal=text("goal"),
            metadata=metadata,
            parent_id=text("parent_id"),
            fork_seq=fork_seq if isinstance(fork_seq, int) and not isinstance(fork_seq, bool) else None,
            final_answer=run.get("final_answer"),
            error=text("error"),
            limits=limits,
            planning=run.get("planning") if isinstance(run.get("planning"), dict) else None,
            judgement=run.get("judgement") if isinstance(run.get("judgement"), dict) else None,
            best_of=text("best_of"),
            tools=run.get("tools") if isinstance(run.get("tools"), dict) else None,
        )


def _floats_to_bytes(values: Any) -> bytes:
    """float32, little-endian: an embedding in a quarter of its JSON size, read back without parsing."""
    packed = array.array("f", (float(v) for v in values))
    if sys.byteorder == "big":  # pragma: no cover - the stored form is little-endian everywhere
        packed.byteswap()
    return packed.tobytes()


def _bytes_to_floats(data: bytes) -> list[float]:
    packed = array.array("f")
    packed.frombytes(bytes(data))
    if sys.byteorder == "big":  # pragma: no cover
        packed.byteswap()
    return packed.tolist()


def busy_seconds(spans: Any) -> float:
    """Seconds covered by ``(started_at, duration_s)`` spans, overlaps counted once (a span
    without a start, recorded before steps kept theirs, counts its duration)."""
    total, timed = 0.0, []
    for started, duration in spans:
        duration = max(float(duration or 0.0), 0.0)
        if started is None:
            total += duration
        else:
            timed.append((float(started), float(started) + duration))
    end = None
    for start, stop in sorted(timed):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total

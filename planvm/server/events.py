"""A run's events, derived from the run store, with live extras from this process.

Every event has an integer id ``A * 1_000_000 + B``, increasing along a run: ``A`` is the number
of steps committed when it happened, ``B`` its place among that moment's events:

* ``B = 0``: the ``step`` event (phase ``finished``) of the step that made the count ``A``;
* ``B = 1, 2, …``: events of this process while steps are in flight: ``step`` (phase
  ``started``), ``token`` (``llm_generate`` text as it is written), ``run`` (status ``running``);
* ``B = 900_000``: the ``run`` event of a run that stopped without ending (``waiting`` for an
  approval, or ``interrupted``); when it goes on, its events at the same ``A`` continue from
  ``900_001``;
* ``B = 999_998`` and ``999_999``: the final ``run`` event and ``done``.

Steps and statuses come from the store, so a client that reconnects with ``Last-Event-ID`` (or a
second server, or a run executed by another process) gets every step it has not seen; only the
live extras of the past (started steps, tokens) are not kept.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from planvm.engine import stored_json

__all__ = ["EventHub", "event_id", "run_events"]

STEP = 0
PAUSED = 900_000
FINAL = 999_998
DONE = 999_999
SPAN = 1_000_000
TERMINAL = frozenset({"completed", "failed", "cancelled"})
PAUSED_STATES = frozenset({"waiting", "interrupted"})
POLL_SECONDS = 0.5
RECENT_LIMIT = 10_000


def event_id(committed: int, place: int) -> int:
    return committed * SPAN + place


@dataclass(slots=True)
class Event:
    id: int
    event: str
    data: dict[str, Any]

    def sse(self) -> str:
        return f"id: {self.id}\nevent: {self.event}\ndata: {json.dumps(self.data, ensure_ascii=False, default=str)}\n\n"


def step_event(index: int, step: Any) -> Event:
    """The ``step`` event of a committed step (a ``StoredStep`` or a ``StepRecord``)."""
    calls = list(step.llm_calls)
    data = {
        "phase": "finished",
        "index": index,
        "seq_no": step.seq_no,
        "type": step.type,
        "tool": step.tool,
        "inputs": dict(step.inputs),
        "outputs": dict(step.outputs),
        "result": step.result,
        "next_seq": step.next_seq,
        "duration_s": step.duration_s,
        "error": step.error,
        "prompt_tokens": sum(c.get("prompt_tokens") or 0 for c in calls),
        "completion_tokens": sum(c.get("completion_tokens") or 0 for c in calls),
        "models": sorted({str(c["model"]) for c in calls if c.get("model")}),
    }
    return Event(event_id(index + 1, STEP), "step", data)


@dataclass
class _Live:
    """One run's live state in this process: where its ids are, and who listens."""

    committed: int = 0
    place: int = 0
    listeners: list[asyncio.Queue[Event | None]] = field(default_factory=list)
    recent: list[Event] = field(default_factory=list)  # live events since the last commit

    def next_id(self) -> int:
        self.place += 1
        return event_id(self.committed, self.place)


class EventHub:
    """Fans a run's live events out to the streams open on it (all on the server's event loop)."""

    def __init__(self) -> None:
        self._runs: dict[str, _Live] = {}
        self._active: set[str] = set()  # runs executing in this process

    def live(self, run_id: str) -> _Live:
        return self._runs.setdefault(run_id, _Live())

    def publish(self, run_id: str, event: Event) -> None:
        live = self.live(run_id)
        if event.event == "step" and event.data.get("phase") == "finished":
            live.recent.clear()
        elif len(live.recent) < RECENT_LIMIT:
            live.recent.append(event)  # a stream opened a moment later still gets them
        for queue in live.listeners:
            queue.put_nowait(event)

    def subscribe(self, run_id: str) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        live = self.live(run_id)
        for event in live.recent:
            queue.put_nowait(event)
        live.listeners.append(queue)
        return queue

    def unsubscribe(self, run_id: str, queue: asyncio.Queue[Event | None]) -> None:
        live = self._runs.get(run_id)
        if live is not None and queue in live.listeners:
            live.listeners.remove(queue)
            if not live.listeners and run_id not in self._active:
                self._runs.pop(run_id, None)

    # --- what the VM tells us (a vm.RunListener's callbacks, bound to a run) --------------------

    def started(self, run_id: str, committed: int, *, resumed: bool) -> None:
        """The run begins (id 0 is its ``run`` event, made by :func:`run_events`) or goes on
        after a pause (its ``running`` event comes after the paused one)."""
        self._active.add(run_id)
        live = self.live(run_id)
        live.committed = committed
        live.place = PAUSED if resumed else 0
        if resumed:
            self.publish(run_id, Event(live.next_id(), "run", {"run_id": run_id, "status": "running"}))

    def step_started(self, run_id: str, seq_no: int, kind: str, tool: str | None) -> None:
        live = self.live(run_id)
        self.publish(run_id, Event(live.next_id(), "step", {"phase": "started", "seq_no": seq_no, "type": kind, "tool": tool}))

    def step_finished(self, run_id: str, record: Any) -> None:
        live = self.live(run_id)
        index = live.committed
        live.committed += 1
        live.place = 0
        self.publish(run_id, step_event(index, record))

    def token(self, run_id: str, seq_no: int, delta: str) -> None:
        live = self.live(run_id)
        if live.place < PAUSED - 1:  # a step's tokens never reach the paused / final places
            self.publish(run_id, Event(live.next_id(), "token", {"seq_no": seq_no, "delta": delta}))

    def ended(self, run_id: str) -> None:
        """The run's task finished (or paused): wake every stream so it reads the store."""
        self._active.discard(run_id)
        live = self.live(run_id)
        live.recent.clear()
        for queue in live.listeners:
            queue.put_nowait(None)
        if not live.listeners:
            self._runs.pop(run_id, None)


def _status_events(run: Any, committed: int) -> list[Event]:
    status = run.status
    if status in TERMINAL:
        data = {"run_id": run.id, "status": status, "error": run.error}
        return [Event(event_id(committed, FINAL), "run", data), Event(event_id(committed, DONE), "done", stored_json(run))]
    if status in PAUSED_STATES:
        data = {"run_id": run.id, "status": status, "error": run.error, "pending": run.pending}
        return [Event(event_id(committed, PAUSED), "run", data)]
    return []


async def run_events(store: Any, hub: EventHub, run_id: str, after: int = -1) -> AsyncIterator[Event]:
    """Every event of ``run_id`` with an id above ``after``, in order, until ``done``.

    Steps and statuses are read from the store; live events of this process arrive through the
    hub in between. Ends after ``done``; a paused run keeps the stream open until it goes on.
    """
    queue = hub.subscribe(run_id)
    sent = after
    try:
        if sent < 0:
            sent = 0
            yield Event(0, "run", {"run_id": run_id, "status": "running"})
        while True:
            run = store.get(run_id)
            for index, step in enumerate(run.steps):
                event = step_event(index, step)
                if event.id > sent:
                    sent = event.id
                    yield event
            finished = False
            for event in _status_events(run, len(run.steps)):
                if event.id > sent:
                    sent = event.id
                    yield event
                finished = finished or event.event == "done"
            if finished:
                return
            # Wait for this process's live events, or poll the store (another process may run it).
            try:
                item = await asyncio.wait_for(queue.get(), POLL_SECONDS)
            except TimeoutError:
                continue
            while item is not None:
                if item.event == "step" and item.data.get("phase") == "finished":
                    break  # read it from the store, with everything before it
                if item.id > sent:
                    sent = item.id
                    yield item
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    item = await _next_or_none(queue)
                    if item is None:
                        break
    finally:
        hub.unsubscribe(run_id, queue)


async def _next_or_none(queue: asyncio.Queue[Event | None]) -> Event | None:
    try:
        return await asyncio.wait_for(queue.get(), POLL_SECONDS)
    except TimeoutError:
        return None

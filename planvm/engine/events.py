"""A run's events, derived from the run store, with live extras from this process.

Transport-neutral: the HTTP service frames them as Server-Sent Events (or the AI SDK's stream);
another front end (a WebSocket or gRPC API) frames the same events its own way.

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

**Cost.** However many streams are open on a run, this process holds one :class:`_Watch` for it:
one store poll (:meth:`RunStore.head`, a few columns) every ``POLL_SECONDS`` — none while the run
executes here, whose steps arrive as they are committed — and one bounded window of its newest
events, each serialised once. A stream keeps only a cursor (the last id it sent): one behind the
window, or opened on a finished run, reads the steps it lacks from the store a page at a time, so
a stream that never reads holds one page, not the run.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from planvm.engine.shapes import RunOutcome

__all__ = ["EventHub", "event_id", "run_events"]

STEP = 0
PAUSED = 900_000
FINAL = 999_998
DONE = 999_999
SPAN = 1_000_000
TERMINAL = frozenset({"completed", "failed", "cancelled"})
PAUSED_STATES = frozenset({"waiting", "interrupted"})
BEFORE_RUNNING = frozenset({"planning", "queued"})  # a stream's first event says so; a `running` event follows
POLL_SECONDS = 0.5
WINDOW_EVENTS = 4_096  # newest events kept per watched run (live tokens included)
WINDOW_BYTES = 8 * 1024 * 1024  # and their size as JSON
PAGE_BYTES = 1024 * 1024  # a stream reading history from the store reads about this much at a time
PAGE_STEPS = 64

Io = Callable[..., Awaitable[Any]]  # calls a store method off the event loop


def event_id(committed: int, place: int) -> int:
    return committed * SPAN + place


@dataclass(slots=True)
class Event:
    id: int
    event: str
    data: dict[str, Any]
    _text: str | None = None

    def json(self) -> str:
        """The event's data as JSON text (made once, however many streams send it)."""
        if self._text is None:
            self._text = _encode(self.data)
        return self._text


# json.dumps(data, ensure_ascii=False, default=str), with one encoder made once (not one per event)
_encode = json.JSONEncoder(ensure_ascii=False, default=str).encode


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
        "started_at": getattr(step, "started_at", None),
        "error": step.error,
        "notes": list(step.notes),
        "prompt_tokens": sum(c.get("prompt_tokens") or 0 for c in calls),
        "completion_tokens": sum(c.get("completion_tokens") or 0 for c in calls),
        "models": sorted({str(c["model"]) for c in calls if c.get("model")}),
    }
    return Event(event_id(index + 1, STEP), "step", data)


async def stored_outcome(io: Io, run_id: str) -> dict[str, Any]:
    """A run's outcome (the ``done`` event's data, what ``planvm exec --json`` prints), read a
    page of steps at a time: memory for the final variables, not for every step."""
    from tools.llm_extractive import NO_MODEL_NOTICE

    run = await io("get", run_id, steps=False)
    variables = dict(run.variables)
    extracted: list[dict[str, Any]] = []
    count = 0
    async for step in _history(io, run_id, 0):
        count += 1
        variables.update(step.outputs)
        extracted.extend(c for c in step.llm_calls if c.get("reasoning") == NO_MODEL_NOTICE)
    return RunOutcome.of(run.id, run.status, run.final_answer, variables, count, run.error, extracted, run.pending).dump()


async def _history(io: Io, run_id: str, start: int, stop: int | None = None) -> AsyncIterator[Any]:
    """Stored steps from trace position ``start`` (up to ``stop``), about PAGE_BYTES at a time (so
    a stream whose client stalls holds one such page, whatever the run's size)."""
    while stop is None or start < stop:
        limit = PAGE_STEPS if stop is None else min(PAGE_STEPS, stop - start)
        page = await io("steps_page", run_id, start, limit, max_bytes=PAGE_BYTES)
        if not page:
            return
        for step in page:
            yield step
        start = page[-1].index + 1


@dataclass
class _Watch:
    """One run as this process sees it: the newest events, shared by every stream open on it."""

    run_id: str
    events: list[Event] = field(default_factory=list)  # ascending ids
    size: int = 0
    floor: int = 0  # steps before this trace position are not in the window (read them from the store)
    committed: int = 0
    place: int = 0
    last_id: int = -1
    status: str | None = None
    readers: int = 0
    active: bool = False  # executing in this process: its steps arrive without polling
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    poller: asyncio.Task[Any] | None = None
    started: bool = False  # the first poll is done (floor, committed and status are known)

    def add(self, event: Event) -> None:
        if event.id <= self.last_id:
            return  # the same step, heard from the executor and read from the store
        self.last_id = event.id
        self.events.append(event)
        self.size += len(event.json())
        if event.event == "step" and event.data.get("phase") == "finished":
            self.committed = max(self.committed, event.data["index"] + 1)
        while len(self.events) > WINDOW_EVENTS or (self.size > WINDOW_BYTES and len(self.events) > 1):
            dropped = self.events.pop(0)
            self.size -= len(dropped.json())
            if dropped.event == "step" and dropped.data.get("phase") == "finished":
                self.floor = dropped.data["index"] + 1
        if self.readers:  # (only a stream waits on it)
            self.changed.set()
            self.changed = asyncio.Event()

    def after(self, sent: int) -> list[Event]:
        return self.events[bisect.bisect_right(self.events, sent, key=lambda e: e.id):]

    def next_id(self) -> int:
        self.place += 1
        return event_id(self.committed, self.place)


class EventHub:
    """The runs this process streams or executes, each watched once (all on the server's event loop).

    ``io(name, *args)`` calls the store method ``name`` off the event loop."""

    def __init__(self, io: Io) -> None:
        self.io = io
        self._runs: dict[str, _Watch] = {}

    def watch(self, run_id: str) -> _Watch:
        watch = self._runs.get(run_id)
        if watch is None:
            watch = self._runs[run_id] = _Watch(run_id)
        return watch

    def watching(self) -> int:
        return len(self._runs)

    def _forget(self, watch: _Watch) -> None:
        if watch.readers == 0 and not watch.active and self._runs.get(watch.run_id) is watch:
            del self._runs[watch.run_id]
            if watch.poller is not None:
                watch.poller.cancel()

    # --- what the VM tells us (a vm.RunListener's callbacks, bound to a run) --------------------

    def opened(self, run_id: str, committed: int, *, resumed: bool) -> None:
        """The run begins here with ``committed`` steps (id 0 is its ``run`` event, made by
        :func:`run_events`) or goes on after a pause (its ``running`` event follows the paused one)."""
        watch = self.watch(run_id)
        watch.active = True
        if not watch.started:
            watch.floor = watch.committed = committed
            watch.started = True
        watch.committed = committed  # the executor's count (a resume may have dropped a failed step)
        watch.place = PAUSED if resumed else 0
        was = watch.status
        watch.status = "running"
        if resumed or was in BEFORE_RUNNING:  # (streams opened while it was planned said `planning`)
            watch.add(Event(watch.next_id(), "run", {"run_id": run_id, "status": "running"}))

    def step_started(self, run_id: str, seq_no: int, kind: str, tool: str | None) -> None:
        watch = self.watch(run_id)
        watch.add(Event(watch.next_id(), "step", {"phase": "started", "seq_no": seq_no, "type": kind, "tool": tool}))

    def step_finished(self, run_id: str, record: Any) -> None:
        watch = self.watch(run_id)
        watch.place = 0
        if watch.readers == 0:
            # Nobody streams it: a stream opened later reads this step from the store.
            watch.committed += 1
            watch.floor = watch.committed
            watch.last_id = max(watch.last_id, event_id(watch.committed, STEP))
            watch.events.clear()
            watch.size = 0
            return
        watch.add(step_event(watch.committed, record))

    def token(self, run_id: str, seq_no: int, delta: str) -> None:
        watch = self.watch(run_id)
        if watch.place < PAUSED - 1:  # a step's tokens never reach the paused / final places
            watch.add(Event(watch.next_id(), "token", {"seq_no": seq_no, "delta": delta}))

    def ended(self, run_id: str) -> None:
        """The run's task here finished or paused (or it was cancelled): read its status now."""
        watch = self._runs.get(run_id)
        if watch is None:
            return
        watch.active = False
        watch.wake.set()
        self._forget(watch)

    # --- polling the store, once per run ---------------------------------------------------------

    def ensure_poller(self, watch: _Watch) -> None:
        if watch.poller is None or watch.poller.done():
            watch.poller = asyncio.create_task(self._poll(watch))

    async def _poll(self, watch: _Watch) -> None:
        run_id = watch.run_id
        while watch.readers > 0 or watch.active:
            try:
                head = await self.io("head", run_id)
            except Exception:  # the store is away: streams keep their cursor and wait
                await self._sleep(watch)
                continue
            if not watch.started:
                watch.floor = watch.committed = head["steps"]
                watch.started = True
            if head["steps"] > watch.committed and not watch.active:
                async for step in _history(self.io, run_id, watch.committed, head["steps"]):
                    watch.add(step_event(step.index, step))
            status = head["status"]
            if status != watch.status and not (watch.active and status == "running"):
                if status in PAUSED_STATES or status in TERMINAL:
                    await self._status_events(watch, head)
                elif status == "running" and watch.status in BEFORE_RUNNING:  # planned or taken elsewhere
                    watch.add(Event(watch.next_id(), "run", {"run_id": run_id, "status": "running"}))
                watch.status = status
            watch.changed.set()  # wake streams waiting for the first poll
            watch.changed = asyncio.Event()
            if status in TERMINAL and not watch.active:
                return
            await self._sleep(watch)

    async def _status_events(self, watch: _Watch, head: dict[str, Any]) -> None:
        status, committed = head["status"], head["steps"]
        if status in PAUSED_STATES:
            data = {"run_id": watch.run_id, "status": status, "error": head["error"], "pending": head["pending"]}
            watch.add(Event(event_id(committed, PAUSED), "run", data))
            return
        outcome = await stored_outcome(self.io, watch.run_id)
        watch.add(Event(event_id(committed, FINAL), "run", {"run_id": watch.run_id, "status": status, "error": head["error"]}))
        watch.add(Event(event_id(committed, DONE), "done", outcome))

    async def _sleep(self, watch: _Watch) -> None:
        """Until the next poll: POLL_SECONDS, or (a run executing here, which tells us of its
        steps itself) until it ends or pauses."""
        watch.wake.clear()
        try:
            await asyncio.wait_for(watch.wake.wait(), None if watch.active else POLL_SECONDS)
        except TimeoutError:
            pass


async def run_events(hub: EventHub, run_id: str, after: int = -1) -> AsyncIterator[Event]:
    """Every event of ``run_id`` with an id above ``after``, in order, until ``done``.

    Steps the shared window no longer holds (or never held: a stream opened late) are read from
    the store a page at a time; the rest come from the window. Ends after ``done``; a paused run
    keeps the stream open until it goes on."""
    watch = hub.watch(run_id)
    watch.readers += 1
    hub.ensure_poller(watch)
    sent = after
    exhausted = -1  # a window floor below which the store turned out to hold nothing more
    try:
        if sent < 0:
            sent = 0
            while not watch.started:  # the first poll says whether it is still being planned (or queued)
                await watch.changed.wait()
            status = watch.status if watch.status in BEFORE_RUNNING else "running"
            yield Event(0, "run", {"run_id": run_id, "status": status})
        while True:
            changed = watch.changed
            if not watch.started:
                await changed.wait()
                continue
            # Steps this stream lacks that the window does not hold: from the store.
            need = sent // SPAN
            if need < watch.floor and watch.floor != exhausted:
                before = sent
                async for step in _history(hub.io, run_id, need, watch.floor):
                    event = step_event(step.index, step)
                    if event.id > sent:
                        sent = event.id
                        yield event
                if sent == before:  # fewer steps than counted (a resume dropped a failed one): go on from the window
                    exhausted = watch.floor
                continue
            fresh = watch.after(sent)
            for event in fresh:
                sent = event.id
                yield event
                if event.event == "done":
                    return
            if not fresh:
                await changed.wait()
    finally:
        watch.readers -= 1
        hub._forget(watch)

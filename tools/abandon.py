"""Work nobody waits for any more stops asking models.

A planner runs in a thread of its own that is left behind when the run's budget runs out or the
user presses Ctrl-C (the engine cannot stop a thread). Without a word to it, it would go on:
the SDK's retries, then the planner's repair attempts, each a new request to a model server that
no one will read. The engine runs such work inside :func:`abandoned_when` with an event it sets
when it stops waiting; the LLM backends call :func:`check` before each request and on each read
of a reply, which raises :class:`Abandoned` once the event is set.

:class:`Abandoned` derives from ``BaseException``, as ``KeyboardInterrupt`` and
``asyncio.CancelledError`` do, so that no ``except Exception`` on the way (the SDK's retry loop,
the planner's attempts) takes it for a failure to retry: it ends the thread's work at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Abandoned", "abandoned_when", "check"]

_LOCAL = threading.local()


class Abandoned(BaseException):
    """The work this thread was doing is no longer awaited: it stops before its next request."""


@contextmanager
def abandoned_when(event: threading.Event) -> Iterator[None]:
    """In this thread, for the block: the work is abandoned once ``event`` is set."""
    previous = getattr(_LOCAL, "event", None)
    _LOCAL.event = event
    try:
        yield
    finally:
        _LOCAL.event = previous


def check() -> None:
    """Raise :class:`Abandoned` when the work this thread is doing is no longer awaited."""
    event = getattr(_LOCAL, "event", None)
    if event is not None and event.is_set():
        raise Abandoned("nobody waits for this work any more (the run's budget ran out, or it was interrupted)")

"""The VM's threads: a pool for sync tools and LLM calls, and the threads its store is called in
from an event loop.

Store calls are the hot path of a service (one per step commit), so they skip what
``loop.run_in_executor`` adds for a general executor (a ``concurrent.futures.Future`` with its lock
and condition, the chaining of two futures, the check that the function is no coroutine): each call
is an event-loop future, put on a queue that a few threads of their own take from, and resolved on
its loop when the call returns.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from queue import Empty, SimpleQueue
from typing import Any

__all__ = ["StoreThreads", "Threads"]


class Threads:
    """A thread pool (sync tools and LLMs), made on first use."""

    def __init__(self, size: int, name: str = "planvm-tool") -> None:
        self.size = size
        self.name = name
        self.executor: ThreadPoolExecutor | None = None

    def get(self) -> ThreadPoolExecutor:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix=self.name)
        return self.executor

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


_STOP = None  # what a thread takes from the queue to end


class StoreThreads:
    """``size`` threads (started on first use) that run store calls for event loops.

    :meth:`call` answers an ``asyncio.Future`` of the loop it is called on. A call whose future was
    cancelled before a thread took it is not run (as an executor's pending work is not); one under
    way runs to its end, its result let go. :meth:`close` cancels the calls no thread has taken
    and ends the threads once they are idle; a later call starts new ones.
    """

    def __init__(self, size: int, name: str = "planvm-store") -> None:
        self.size = max(1, size)
        self.name = name
        self._queue: SimpleQueue[Any] | None = None
        self._lock = threading.Lock()
        self._made = 0  # threads made so far (for their names)

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        queue = self._queue
        if queue is None:
            queue = self._start()
        queue.put((loop, future, function, args, kwargs))
        return future

    def _start(self) -> SimpleQueue[Any]:
        with self._lock:
            if self._queue is None:
                queue: SimpleQueue[Any] = SimpleQueue()
                for _ in range(self.size):
                    self._made += 1
                    # Daemon threads: one never holds up the interpreter's exit (a store call under
                    # way then is one transaction the database rolls back whole).
                    threading.Thread(target=_work, args=(queue,), name=f"{self.name}_{self._made - 1}", daemon=True).start()
                self._queue = queue
            return self._queue

    def close(self) -> None:
        with self._lock:
            queue, self._queue = self._queue, None
        if queue is None:
            return
        while True:
            try:
                item = queue.get_nowait()
            except Empty:
                break
            if item is not _STOP:
                _settle(item[0], item[1].cancel)
        for _ in range(self.size):
            queue.put(_STOP)


def _work(queue: SimpleQueue[Any]) -> None:
    while True:
        item = queue.get()
        if item is _STOP:
            return
        _run(*item)
        item = None  # (nothing of a call outlives it here)


def _run(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], function: Callable[..., Any], args: Any, kwargs: Any) -> None:
    if future.cancelled():  # its caller stopped waiting before it began (read across threads: a flag)
        return
    try:
        result = function(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - handed to the caller, as an executor does
        _settle(loop, _fail, future, exc)
    else:
        _settle(loop, _done, future, result)


def _settle(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # its loop is closed: nobody waits for it any more
        pass


def _done(future: asyncio.Future[Any], result: Any) -> None:
    if not future.cancelled():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.cancelled():
        future.set_exception(exc)

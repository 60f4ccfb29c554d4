"""Large JSON documents (a plan of 100,000 instructions is 7 MB) read, written and turned into
objects without any thread holding the GIL for long, so that a service's other threads (its
event loop, ``/healthz``) keep answering meanwhile.

Two things hold the GIL for the whole of a large document when nothing is done about them:

* **One C call over the whole text.** ``json.loads`` and ``json.dumps`` of 7 MB are one call each
  (100-300 ms). :func:`loads` and :func:`dumps` give exactly what ``json.loads`` / ``json.dumps``
  give (the same values, text and errors), walking the document's outer two levels in Python and
  leaving each value below them (an instruction, a step, a variable) to the C code: many short
  calls, between which other threads run.
* **The cyclic garbage collector.** Making a million objects that stay alive (parsed JSON,
  instruction models, compiled steps) triggers a full collection each time the objects kept grow
  by a quarter, and each one walks every object alive, plan included: 200-700 ms each, five to ten
  of them for a 100,000-instruction plan, none finding garbage. :func:`making` pauses automatic
  collection while such objects are made, then sets what is alive aside (``gc.freeze``) so later
  collections skip it; :func:`keeping` (or :func:`hold`) marks how long the large objects are
  in use: when the last such span ends, what was set aside goes back to the collector
  (``gc.unfreeze``), so garbage cycles made meanwhile are still collected in the end.

And freeing them: the last reference to a million objects dropped frees them all in one C call
(a fifth of a second), on whichever thread drops it, the event loop's included. :func:`discard`
takes the last references and frees them a slice at a time in a background thread.
"""

from __future__ import annotations

import gc
import json
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from json.decoder import JSONArray, JSONObject
from typing import Any

__all__ = ["LARGE_TEXT", "discard", "dumps", "hold", "keeping", "loads", "making", "sizeable"]

#: Text shorter than this (characters or bytes) is read by one ``json.loads``: under a few ms.
LARGE_TEXT = 256 * 1024
_OUTER = 2  # levels walked in Python: a request's object and its arrays (a plan's instructions below)
_PIECE = 64 * 1024  # characters of JSON a C call writes at a time, about (0.3 ms)
_DICT_BATCH = 256  # entries of a large object written per C call


# --- reading --------------------------------------------------------------------------------------


class _Decoder(json.JSONDecoder):
    """``json.JSONDecoder`` whose outer objects and arrays are parsed by the standard library's
    own Python functions (``JSONObject``, ``JSONArray``: the same values and error messages as the
    C scanner), each value inside them by the C scanner, one call a value."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._c_scan = self.scan_once
        self._memo: dict[str, str] = {}
        self.scan_once = self._outer(0)  # what raw_decode calls

    def _outer(self, depth: int) -> Any:
        inner = self._outer(depth + 1) if depth + 1 < _OUTER else self._c_scan

        def scan(text: str, at: int) -> tuple[Any, int]:
            try:
                char = text[at]
            except IndexError:
                raise StopIteration(at) from None
            if char == "{":
                return JSONObject((text, at + 1), self.strict, inner, self.object_hook, self.object_pairs_hook, self._memo)
            if char == "[":
                return JSONArray((text, at + 1), inner)
            return self._c_scan(text, at)

        return scan


def loads(text: str | bytes | bytearray, **kwargs: Any) -> Any:
    """``json.loads(text, **kwargs)``: the same value, or the same error (``JSONDecodeError`` with
    its message and position); a large text in many short C calls."""
    if len(text) < LARGE_TEXT:
        return json.loads(text, **kwargs)
    return json.loads(text, cls=_Decoder, **kwargs)


# --- writing --------------------------------------------------------------------------------------


def dumps(value: Any, *, ensure_ascii: bool = True, allow_nan: bool = True, separators: tuple[str, str] | None = None,
          default: Any = None) -> str:
    """``json.dumps(value, ...)`` with these options: the same text (or error); a large list or
    object at the outer two levels written a slice at a time."""
    if not _walkable(value):
        return json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=allow_nan, separators=separators, default=default)
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, allow_nan=allow_nan, separators=separators, default=default)
    return "".join(_pieces(value, encoder, 0))


def sizeable(value: Any) -> bool:
    """Whether :func:`dumps` would write ``value`` in slices: a list or object of more than a few
    hundred members at its outer two levels. The rest is one C call of ``json.dumps`` anyway."""
    if type(value) is dict:
        members: Any = value.values()
    elif type(value) is list:
        members = value
    else:
        return False
    if len(value) > _DICT_BATCH:
        return True
    return any(type(item) in (list, dict) and len(item) > _DICT_BATCH for item in members)


def _walkable(value: Any) -> bool:
    return (type(value) is list and len(value) > 1) or (type(value) is dict and len(value) > 0)


def _pieces(value: Any, encoder: json.JSONEncoder, depth: int) -> Iterator[str]:
    if depth >= _OUTER or not _walkable(value):
        yield encoder.encode(value)
    elif type(value) is list:
        yield from _list_pieces(value, encoder)
    elif len(value) > _DICT_BATCH or not all(type(key) is str for key in value):
        yield from _dict_pieces(value, encoder)
    else:  # a few named members (a run's record): each written apart, a large one in slices
        yield "{"
        for number, (key, item) in enumerate(value.items()):
            if number:
                yield encoder.item_separator
            yield encoder.encode(key)
            yield encoder.key_separator
            yield from _pieces(item, encoder, depth + 1)
        yield "}"


def _list_pieces(items: list[Any], encoder: json.JSONEncoder) -> Iterator[str]:
    """``[...]`` written a slice at a time, each slice sized from the last (about ``_PIECE`` characters)."""
    yield "["
    at, size = 0, 16
    while at < len(items):
        text = encoder.encode(items[at:at + size])  # "[a, b]": the slice's items, joined as the whole list's are
        if at:
            yield encoder.item_separator
        yield text[1:-1]
        at += size
        size = max(1, min(size * 4, size * _PIECE // max(len(text), 1)))
    yield "]"


def _dict_pieces(members: dict[Any, Any], encoder: json.JSONEncoder) -> Iterator[str]:
    """``{...}`` written ``_DICT_BATCH`` members at a time (keys converted as the C encoder does)."""
    yield "{"
    pairs = list(members.items())
    for at in range(0, len(pairs), _DICT_BATCH):
        text = encoder.encode(dict(pairs[at:at + _DICT_BATCH]))
        if at:
            yield encoder.item_separator
        yield text[1:-1]
    yield "}"


# --- the garbage collector ------------------------------------------------------------------------

_LOCK = threading.RLock()  # (an RLock: a span may end in a finalizer, on a thread inside this lock)
_state = {"making": 0, "keeping": 0, "resume": False}


@contextmanager
def making() -> Iterator[None]:
    """Around work that makes many objects meant to outlive it (a large plan parsed, checked,
    compiled): automatic collection is paused (in the whole process: it is one collector) while
    any such work runs; when the last one ends inside a span (:func:`keeping`, :func:`hold`: the
    objects' owner), every object alive is set aside from later collections (``gc.freeze``), and
    collection resumes. Objects set aside are freed as usual when no longer referred to; garbage
    cycles among them wait until the last span ends (``gc.unfreeze``). Nothing is set aside
    outside a span."""
    with _LOCK:
        if _state["making"] == 0:
            _state["resume"] = gc.isenabled()
            gc.disable()
        _state["making"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _state["making"] -= 1
            if _state["making"] == 0:
                if _state["keeping"]:
                    gc.freeze()
                else:  # nothing marked in use: nothing kept aside (no garbage cycle kept from the collector)
                    gc.unfreeze()
                if _state["resume"]:
                    gc.enable()


@contextmanager
def keeping() -> Iterator[None]:
    """A span in which large objects made by :func:`making` are in use (a request): when the
    last span ends, what was set aside goes back to the collector (``gc.unfreeze``)."""
    release = hold()
    try:
        yield
    finally:
        release()


def hold() -> Callable[[], None]:
    """A span (see :func:`keeping`) for an owner that is not a block of code (a compiled plan):
    the function returned ends it (once)."""
    with _LOCK:
        _state["keeping"] += 1
    ended = []

    def release() -> None:
        with _LOCK:
            if ended:
                return
            ended.append(True)
            _state["keeping"] -= 1
            if _state["keeping"] == 0 and _state["making"] == 0:
                gc.unfreeze()

    return release


# --- freeing ----------------------------------------------------------------------------------------

_SLICE = 512  # list items freed per C call (an instruction's objects: about 10)
_queue: queue.SimpleQueue[tuple[list[Any], Callable[[], None] | None]] = queue.SimpleQueue()
_disposer: list[threading.Thread] = []


def discard(parts: list[Any], then: Callable[[], None] | None = None) -> None:
    """Free the containers in ``parts`` a slice at a time, in a background thread, then call
    ``then``. ``parts`` holds the caller's last references (moved into it, none kept in a
    variable): freeing a million objects at once is one C call holding the GIL for a fifth of a
    second, wherever it happens (the event loop's thread, when the last reference goes there). A
    container something else still refers to is left whole: only the reference is dropped."""
    with _LOCK:
        if not _disposer:
            try:
                thread = threading.Thread(target=_dispose, name="planvm-discard", daemon=True)
                thread.start()
            except RuntimeError:  # the interpreter is shutting down: let them go at once
                parts.clear()
                if then is not None:
                    then()
                return
            _disposer.append(thread)
    _queue.put((parts, then))


def _dispose() -> None:
    while True:
        parts, then = _queue.get()
        try:
            _free(parts, _OUTER + 1)
        finally:
            del parts
            if then is not None:
                then()


def _free(parts: list[Any], depth: int, top: bool = True) -> None:
    """Empty ``parts`` (ours alone), taking apart each container in it that nothing else refers
    to, ``depth`` levels down: a list a slice at a time, an object ``_SLICE`` members at a time.
    Below the top, only large containers are taken apart (a small one goes with its members)."""
    while parts:
        value = parts.pop()
        kind = type(value)
        if depth == 0 or kind not in (list, dict) or (len(value) <= _SLICE and not (top and kind is dict)):
            continue
        if sys.getrefcount(value) > 2:  # (here: `value`, and the call's argument)
            continue  # shared: only this reference dropped
        if kind is list:
            while value:
                tail = value[-_SLICE:]
                del value[-_SLICE:]
                _free(tail, depth - 1, top=False)
        else:
            take = value.popitem
            while value:
                _free([take()[1] for _ in range(min(len(value), _SLICE))], depth - 1, top=False)

"""A planner's reply read while it is written: each instruction as soon as its JSON object closes.

:class:`PlanStream` is fed the reply's text in pieces, as a model streams it. It skips a leading
``<think>`` block (emitting nothing until it closes) and whatever comes before the plan (prose, a
code fence, an ``<answer>`` tag, the ``{"plan":`` of a schema-constrained reply), then finds the
plan's JSON array: the first ``[`` whose next non-blank character is ``{``. Inside it, it only
finds the boundaries of the top-level objects (tracking strings, escapes and nesting); each
object is then parsed with :func:`json.loads` and returned from :meth:`PlanStream.feed`.

What it emits is a preview: the plan that runs is always the one read from the whole reply
(:func:`planner.planner.parse_reply`) and validated as a whole. A reply it cannot follow (an
element that is not an object, an object that is not JSON) makes it stop emitting, nothing more.

:class:`PlanListener` is what a :class:`~planner.planner.Planner` tells about a streamed attempt.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

__all__ = ["PlanListener", "PlanStream"]

_THINK_OPEN = "<think>"
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_BLANK = " \t\r\n"


class PlanListener(Protocol):
    """Hears one planning: each attempt's instructions as they arrive (called from the planner's
    thread)."""

    def begin(self) -> None:
        """An attempt starts: what earlier attempts sent is void."""

    def instruction(self, data: Any) -> None:
        """One instruction of the plan, parsed (any JSON object: it is not validated yet)."""

    def end(self) -> None:
        """The attempt's reply is complete: no more instructions come."""


class PlanStream:
    """Incremental reader of one reply (see the module docstring)."""

    def __init__(self) -> None:
        self.text = ""
        self.pos = 0  # next character to look at
        self.state = "start"  # start, think, seek, between, object, done
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.start = 0  # where the current object began

    def feed(self, piece: str) -> list[Any]:
        """Add ``piece`` to the reply; return the instructions it completed, in order."""
        self.text += piece
        found: list[Any] = []
        while self.state != "done":
            before = (self.state, self.pos)
            self._step(found)
            if (self.state, self.pos) == before:
                break  # needs more text
        return found

    def _step(self, found: list[Any]) -> None:
        text, n = self.text, len(self.text)
        if self.state == "start":
            head = text[self.pos:].lstrip(_BLANK)
            if not head:
                return
            if head[: len(_THINK_OPEN)].lower() == _THINK_OPEN:
                self.state = "think"
            elif _THINK_OPEN.startswith(head.lower()):
                return  # "<thi": wait to see whether it is a think block
            else:
                self.state = "seek"
        elif self.state == "think":
            close = _THINK_CLOSE.search(text, self.pos)
            if close is None:
                self.pos = max(self.pos, n - len("</think>"))  # a closing tag may be split across pieces
                return
            self.pos, self.state = close.end(), "seek"
        elif self.state == "seek":
            bracket = text.find("[", self.pos)
            if bracket < 0:
                self.pos = n
                return
            after = bracket + 1
            while after < n and text[after] in _BLANK:
                after += 1
            if after >= n:
                self.pos = bracket  # is the next non-blank a '{'? not known yet
                return
            if text[after] == "{":
                self.pos, self.state = after, "between"
            else:
                self.pos = bracket + 1  # a '[' of the prose: look further
        elif self.state == "between":
            while self.pos < n and (text[self.pos] in _BLANK or text[self.pos] == ","):
                self.pos += 1
            if self.pos >= n:
                return
            char = text[self.pos]
            if char == "{":
                self.start, self.depth, self.in_string, self.escape = self.pos, 1, False, False
                self.pos += 1
                self.state = "object"
            else:
                self.state = "done"  # ']' ends the plan; anything else is not a plan we can follow
        elif self.state == "object":
            self._scan_object(found)

    def _scan_object(self, found: list[Any]) -> None:
        text, n = self.text, len(self.text)
        pos, depth, in_string, escape = self.pos, self.depth, self.in_string, self.escape
        while pos < n:
            char = text[pos]
            pos += 1
            if in_string:
                if escape:
                    escape = False
                elif char == "\\":
                    escape = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth == 0:
                    try:
                        found.append(json.loads(text[self.start:pos], strict=False))  # as the whole reply is read
                    except ValueError:
                        self.pos, self.state = pos, "done"
                        return
                    self.pos, self.state = pos, "between"
                    return
        self.pos, self.depth, self.in_string, self.escape = pos, depth, in_string, escape

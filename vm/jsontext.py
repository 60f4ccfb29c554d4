"""Find the JSON value in an LLM's reply: inside a fence, bare, or surrounded by prose.

Uses the standard library's JSON decoder on candidate start positions, so braces and brackets
inside string values are handled by a real parser, not by counting characters.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["extract_json", "strip_think"]

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|jsonc)?[ \t]*\n(.*?)```", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_DECODER = json.JSONDecoder()
# Candidate start positions tried before giving up; bounds the work on long, brace-heavy prose.
_MAX_STARTS = 200


def strip_think(text: str) -> str:
    """Remove ``<think>…</think>`` blocks (a reasoning model's scratch text)."""
    return _THINK.sub("", text) if "<think>" in text else text


def _candidates(text: str, kinds: tuple[type, ...]):
    for block in _FENCE.findall(text):
        yield block.strip()
    yield text.strip()
    openers = "".join(o for o, k in (("{", dict), ("[", list)) if k in kinds) or "{["
    tried = 0
    for i, ch in enumerate(text):
        if ch in openers:
            tried += 1
            if tried > _MAX_STARTS:
                return
            yield text[i:]


def extract_json(text: str, kinds: tuple[type, ...] = (dict, list)) -> Any:
    """Return the first JSON value of one of ``kinds`` found in ``text``.

    Order: fenced blocks, then the whole text, then every ``{`` / ``[`` position (first wins;
    a value may be followed by prose). Raises ``ValueError`` when there is none.
    """
    text = strip_think(text)
    for candidate in _candidates(text, kinds):
        try:
            value, _end = _DECODER.raw_decode(candidate)
        except (ValueError, RecursionError):  # not JSON, a 5,000-digit number, nesting too deep to read
            continue
        if isinstance(value, kinds):
            return value
    names = ["JSON object" if k is dict else "JSON array" for k in kinds]
    wanted = f"neither a {names[0]} nor a {names[1]}" if len(names) == 2 else f"no {names[0]}"
    raise ValueError(f"found {wanted} in the text")

"""Values the run can keep: bounded in size and depth, and always storable as JSON.

Every value a step produces (an ``assign`` value, a tool's result, an LLM reply) passes through
:func:`storable` before the run keeps it. It returns the value in a form JSON holds exactly:

* tuples and sets become lists, non-string dict keys become strings (as JSON writes them);
* other objects (dataclasses, Pydantic models, dates, UUIDs, paths…) take the JSON form
  ``pydantic_core.to_jsonable_python`` gives them; ``bytes`` that are UTF-8 become text;
* floats that JSON cannot write (NaN, ±infinity) become the strings ``"NaN"``, ``"Infinity"``
  and ``"-Infinity"``;
* text with lone surrogates (not valid Unicode, e.g. from ``"\\ud800"`` in JSON or undecodable
  bytes on a command line) gets U+FFFD in their place.

It refuses, with :class:`ValueLimitError`, a value larger than ``max_bytes`` (measured as the
length of its JSON text, stopping as soon as the budget is spent), nested deeper than
``max_depth`` (a value that contains itself is infinitely deep), an integer of more than 4,300
digits (Python will not even print it), or an object with no JSON form. The walk is iterative:
no input can make it recurse.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["MAX_INT_DIGITS", "ValueLimitError", "clean_text", "storable", "text_size"]

#: Python refuses to turn larger integers into text (``sys.get_int_max_str_digits``).
MAX_INT_DIGITS = 4300
_MAX_INT_BITS = int(MAX_INT_DIGITS * math.log2(10))
_SURROGATE = re.compile("[\ud800-\udfff]")
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
_SCALAR_SIZE = 8


class ValueLimitError(ValueError):
    """A value that breaks a bound. ``limit`` names it: max_value_bytes, max_depth or json."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def text_size(text: str) -> int:
    """Bytes of ``text`` as UTF-8 (counted without encoding ASCII text)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def clean_text(text: str) -> str:
    """``text`` itself, or a copy with U+FFFD for each lone surrogate."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub("\ufffd", text)


def _key(key: Any) -> str:
    """A dict key as JSON writes it."""
    if type(key) is str:
        return clean_text(key)
    if key is None or isinstance(key, bool):
        return "null" if key is None else ("true" if key else "false")
    if isinstance(key, (str, int, float)):
        ready = _scalar(key)[1]
        return ready if isinstance(ready, str) else str(ready)
    raise ValueLimitError("json", f"a dict key of type {type(key).__name__} cannot be a JSON key; use text keys")


def _scalar(value: Any) -> tuple[bool, Any, int]:
    """(is a scalar, its JSON-ready form, its size)."""
    kind = type(value)
    if kind is str:
        return True, clean_text(value), text_size(value) + 2
    if value is None or kind is bool:
        return True, value, 5
    if kind is int or (isinstance(value, int) and not isinstance(value, bool)):
        if value.bit_length() > _MAX_INT_BITS:
            raise ValueLimitError(
                "json", f"an integer of over {MAX_INT_DIGITS} digits cannot be stored; return it as text or round it"
            )
        return True, int(value), max(_SCALAR_SIZE, value.bit_length() // 3)
    if kind is float or isinstance(value, float):
        if math.isfinite(value):
            return True, float(value), _SCALAR_SIZE
        return True, ("NaN" if math.isnan(value) else _NON_FINITE[value]), _SCALAR_SIZE
    if isinstance(value, str):
        return True, clean_text(str(value)), text_size(value) + 2
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueLimitError(
                "json", f"{len(raw)} bytes that are not UTF-8 text cannot be stored as JSON; return text (e.g. base64)"
            ) from None
        return True, text, len(raw) + 2
    return False, None, 0


def _as_container(value: Any) -> Any:
    """A dict or list for ``value``, converting what JSON has no type for; raises when impossible."""
    if isinstance(value, (dict, list)):
        return value
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    from pydantic_core import PydanticSerializationError, to_jsonable_python

    try:
        converted = to_jsonable_python(value, serialize_unknown=False)
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        raise ValueLimitError(
            "json", f"a {type(value).__name__} has no JSON form ({str(exc)[:120]}); return dicts, lists, text and numbers"
        ) from None
    return converted


def storable(value: Any, *, max_bytes: int | None = None, max_depth: int | None = None) -> Any:
    """``value`` in a form JSON holds exactly, within the bounds (see the module docstring).

    Returns the value itself when nothing needed converting.
    """
    budget = max_bytes if max_bytes is not None else math.inf
    depth_limit = max_depth if max_depth is not None else math.inf
    is_scalar, ready, size = _scalar(value)
    if is_scalar:
        if size > budget:
            raise _too_large(max_bytes)
        return ready
    root = _as_container(value)
    if root is not value:
        return storable(root, max_bytes=max_bytes, max_depth=max_depth)
    used = 0
    changed = False
    # Each entry: (container, its depth). Containers are rebuilt only when something inside changed.
    # The common items (text keys, ASCII text, None, bools, plain numbers) are measured inline:
    # every value a run keeps passes here.
    stack: list[tuple[Any, int]] = [(root, 1)]
    replacements: dict[int, Any] = {}
    while stack:
        container, depth = stack.pop()
        if depth > depth_limit:
            raise ValueLimitError(
                "max_depth",
                f"the value is nested deeper than max_depth ({max_depth} levels), or contains itself; "
                f"flatten it or raise Limits.max_depth",
            )
        used += 2
        keyed = isinstance(container, dict)
        for key, item in container.items() if keyed else enumerate(container):
            if keyed:
                if type(key) is str and key.isascii():
                    used += len(key) + 3
                else:
                    text = _key(key)
                    changed = changed or text is not key
                    used += text_size(text) + 3
            kind = type(item)
            if kind is str and item.isascii():
                used += len(item) + 2
            elif item is None or kind is bool:
                used += 5
            elif kind is float and item - item == 0.0:  # finite
                used += _SCALAR_SIZE
            elif kind is int and -_SMALL_INT < item < _SMALL_INT:
                used += _SCALAR_SIZE
            elif kind is dict or kind is list:
                stack.append((item, depth + 1))
            else:
                is_scalar, ready, size = _scalar(item)
                if is_scalar:
                    used += size
                    changed = changed or ready is not item
                else:
                    inner = _as_container(item)
                    if inner is not item:
                        changed = True
                        replacements[id(item)] = inner
                        is_scalar, ready, size = _scalar(inner)
                        if is_scalar:  # a date, a UUID, an enum...: text or a number
                            used += size
                            replacements[id(item)] = ready
                            if used > budget:
                                raise _too_large(max_bytes)
                            continue
                    stack.append((inner, depth + 1))
            if used > budget:
                raise _too_large(max_bytes)
        if used > budget:
            raise _too_large(max_bytes)
    if not changed:
        return value
    return _json_ready(root, replacements)


_SMALL_INT = 2**24  # an int this small measures _SCALAR_SIZE, as _scalar says


def _too_large(max_bytes: int | None) -> ValueLimitError:
    return ValueLimitError(
        "max_value_bytes",
        f"the value is larger than max_value_bytes ({max_bytes:,} bytes as JSON); produce less "
        f"(fewer or shorter items) or raise Limits.max_value_bytes / --max-value-bytes",
    )


def _json_ready(value: Any, replacements: dict[int, Any] | None = None) -> Any:
    """A converted copy of a value already checked by :func:`storable` (iterative, no recursion)."""
    replacements = replacements or {}

    def fresh(item: Any) -> Any:
        item = replacements.get(id(item), item)
        if not isinstance(item, (dict, list)):
            item = _as_container(item)
        return {} if isinstance(item, dict) else [], item

    top, source = fresh(value)
    stack = [(top, source)]
    while stack:
        target, source = stack.pop()
        pairs = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in pairs:
            item = replacements.get(id(item), item)
            is_scalar, ready, _ = _scalar(item)
            if not is_scalar:
                ready, inner_source = fresh(item)
                stack.append((ready, inner_source))
            if isinstance(target, dict):
                target[_key(key)] = ready
            else:
                target.append(ready)
    return top

"""Parameter values: references, templates and arithmetic, compiled once per plan.

A value in a plan is compiled into a small tree of nodes when the plan is loaded; running a step
only evaluates the nodes against the variable store. The rules:

* **Reference** — a string that is exactly ``"${x}"`` (or ``"${x.key}"``, ``"${x[0]}"``,
  ``"${x['a key']}"``) becomes the referenced value itself, with its type.
* **Template** — a string containing references among other text renders each value as text:
  strings as they are, everything else as JSON. A rendered value is never scanned again, so a
  ``${...}`` inside a variable's value stays literal text.
* **Arithmetic** (``assign`` values only) — a string made only of references, numbers,
  parentheses and the operators ``+ - * / ** %``, with at least one operator, where every binary
  ``-`` and ``/`` has a space on each side (those two also join the parts of dates, phone numbers
  and fractions): ``"${a} + ${b} / 3"``, ``"-${x} * 2"``, ``"${n}**2"``. Operands must be numbers
  or strings that are exactly a number (``"42"``, ``" 8.10 "``); the result is a number. When an
  operand is not a number, the value is rendered as a template instead (``"${title} - ${sub}"``
  with text values gives ``"Intro - Part 1"``). Anything else is text: ``"${y}-${m}-${d}"`` renders ``"2024-10-15"``, and literals such as
  ``"2024-10-15"``, ``"555-1234"``, ``"10/15/2024"``, ``"8.10"`` or ``"v7.5.0"`` stay unchanged.

Arithmetic is evaluated by simpleeval over a pre-parsed tree, with bounded powers and products:
a result over ~3,300 bits (about 1,000 decimal digits) is an error, raised before computing it.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import operator
import re
import threading
from contextvars import ContextVar
from typing import Any

import pydantic_core
from simpleeval import InvalidExpression, SimpleEval

from vm.errors import (
    ExpressionError,
    ReferencePathError,
    ValueTooLarge,
    VariableUndefined,
)

__all__ = [
    "Arithmetic",
    "Const",
    "DictValue",
    "ListValue",
    "Ref",
    "TEXT_LIMIT",
    "Template",
    "Value",
    "ConditionSyntaxError",
    "ValueSyntaxError",
    "compile_value",
    "render_text",
    "shorten",
    "to_number",
]

# Largest integer result, in bits, that arithmetic may produce (2**3322 ~ 10**1000).
MAX_RESULT_BITS = 3322
#: Operators and parentheses one arithmetic value may hold (deeper trees are refused, not recursed).
MAX_ARITHMETIC_TOKENS = 200
#: Longest text a template may render, in characters (set by the run from Limits.max_value_bytes),
#: checked while rendering so that "${s}${s}${s}..." stops at the limit instead of building it.
TEXT_LIMIT: ContextVar[int | None] = ContextVar("planvm_text_limit", default=None)

_REF = re.compile(r"\$\{([^{}]*)\}")
_REF_INNER = re.compile(
    r"\s*([A-Za-z_][A-Za-z0-9_]*)((?:\.[\w-]+|\[\s*-?\d+\s*\]|\[\s*'[^']*'\s*\]|\[\s*\"[^\"]*\"\s*\])*)\s*"
)
_PATH_STEP = re.compile(r"\.([\w-]+)|\[\s*(-?\d+)\s*\]|\[\s*'([^']*)'\s*\]|\[\s*\"([^\"]*)\"\s*\]")
_NUMBER = re.compile(r"\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*")
_INT = re.compile(r"\s*[-+]?\d+\s*")
# Tokens of an arithmetic candidate after references were replaced by \x00<index>\x00 markers.
_TOKEN = re.compile(r"(?P<ref>\x00\d+\x00)|(?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)|(?P<op>\*\*|[-+*/%])|(?P<lp>\()|(?P<rp>\))|(?P<ws>[ \t]+)")
_ASCII_INT = re.compile(r"-?[0-9]+")


# Binary operators that also separate the parts of dates, phone numbers and fractions: they are
# arithmetic only with a space on each side.
_SPACED_OPERATORS = ("-", "/")


class ValueSyntaxError(ValueError):
    """A value in the plan cannot be compiled (a malformed ``${...}`` reference)."""

    kind = "bad_reference"  # the validation problem it becomes


class ConditionSyntaxError(ValueSyntaxError):
    """A ``jmp``'s ``condition`` expression cannot be compiled."""

    kind = "bad_condition"


class Value:
    """A compiled parameter value. ``refs`` names every variable it reads."""

    __slots__ = ("refs",)
    refs: frozenset[str]

    def evaluate(self, store: dict[str, Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class Const(Value):
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value
        self.refs = frozenset()

    def evaluate(self, store: dict[str, Any]) -> Any:
        return self.value


class Ref(Value):
    """``${name}`` or ``${name.key[0]}``: the value itself, with its type."""

    __slots__ = ("name", "path", "text")

    def __init__(self, text: str, name: str, path: tuple[str | int, ...]) -> None:
        self.text = text
        self.name = name
        self.path = path
        self.refs = frozenset((name,))

    def evaluate(self, store: dict[str, Any]) -> Any:
        try:
            value = store[self.name]
        except KeyError:
            raise VariableUndefined(self.name) from None
        for step in self.path:
            value = self._step(value, step)
        return value

    def _step(self, value: Any, step: str | int) -> Any:
        if isinstance(value, dict):
            key = step if isinstance(step, str) else str(step)
            if key in value:
                return value[key]
            keys = ", ".join(map(str, list(value)[:20])) or "none"
            raise ReferencePathError(self.text, f"no key {key!r} (keys: {keys})", variable=self.name)
        if isinstance(value, (list, tuple)):
            if isinstance(step, str) and not _ASCII_INT.fullmatch(step):
                raise ReferencePathError(
                    self.text, f"{step!r} is a key, but the value there is a list; use [index]", variable=self.name
                )
            index = int(step)
            if -len(value) <= index < len(value):
                return value[index]
            raise ReferencePathError(
                self.text, f"index {index} is out of range for a list of {len(value)}", variable=self.name
            )
        kind = type(value).__name__
        raise ReferencePathError(
            self.text,
            f"the value there is a {kind}, not an object or list; reference it whole or map its keys with output_vars",
            variable=self.name,
        )


class Template(Value):
    """Text with references; every value is rendered as text."""

    __slots__ = ("parts",)

    def __init__(self, parts: tuple[str | Ref, ...]) -> None:
        self.parts = parts
        refs = [p for p in parts if isinstance(p, Ref)]
        # One reference (the common case): share its set instead of building another.
        self.refs = refs[0].refs if len(refs) == 1 else frozenset(r.name for r in refs)

    def evaluate(self, store: dict[str, Any]) -> str:
        limit = TEXT_LIMIT.get()
        if limit is None:
            return "".join(p if type(p) is str else render_text(p.evaluate(store)) for p in self.parts)
        pieces = []
        size = 0
        for p in self.parts:
            piece = p if type(p) is str else render_text(p.evaluate(store))
            size += len(piece)
            if size > limit:
                raise ValueTooLarge(
                    limit,
                    f"a template renders to more than max_value_bytes ({limit:,}); produce less text, or raise "
                    f"Limits.max_value_bytes / --max-value-bytes",
                )
            pieces.append(piece)
        return "".join(pieces)


class Arithmetic(Value):
    """A numeric expression over references, evaluated by simpleeval on a tree parsed once.

    When an operand is not a number the value is text after all, rendered like a template.
    """

    __slots__ = ("expression", "operands", "tree", "text")

    def __init__(self, expression: str, operands: tuple[Ref, ...], tree: Any, text: Template) -> None:
        self.expression = expression
        self.text = text
        self.operands = operands
        self.tree = tree
        self.refs = text.refs

    def evaluate(self, store: dict[str, Any]) -> int | float | str:
        names = {}
        for i, ref in enumerate(self.operands):
            raw = ref.evaluate(store)
            number = to_number(raw)
            if number is None:
                # "${title} - ${subtitle}" with text values: the value is text, as a template.
                return self.text.evaluate(store)
            names[f"_v{i}"] = number
        result = eval_tree(_evaluator(), self.tree, names, self.expression)
        if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(result)):
            raise ExpressionError(self.expression, f"the result ({result}) is not a finite real number")
        return result


class ListValue(Value):
    __slots__ = ("items",)

    def __init__(self, items: tuple[Value, ...]) -> None:
        self.items = items
        self.refs = frozenset().union(*(i.refs for i in items))

    def evaluate(self, store: dict[str, Any]) -> list[Any]:
        return [i.evaluate(store) for i in self.items]


class DictValue(Value):
    __slots__ = ("items",)

    def __init__(self, items: tuple[tuple[str, Value], ...]) -> None:
        self.items = items
        self.refs = frozenset().union(*(v.refs for _, v in items))

    def evaluate(self, store: dict[str, Any]) -> dict[str, Any]:
        return {k: v.evaluate(store) for k, v in self.items}


# --- rendering and numbers --------------------------------------------------------------------


# One encoder for every render (json.dumps with options builds a new encoder on each call).
_JSON = json.JSONEncoder(ensure_ascii=False, default=pydantic_core.to_jsonable_python)
_SCALARS = {True: "true", False: "false", None: "null"}


def render_text(value: Any) -> str:
    """A value as text inside a template: strings as they are, everything else as JSON."""
    kind = type(value)
    if kind is str:
        return value
    if kind is int:
        return str(value)
    if kind is bool or value is None:
        return _SCALARS[value]
    if isinstance(value, str):
        return str(value)
    return _JSON.encode(value)


def shorten(value: Any, limit: int = 200) -> str:
    """A value as one line of text (whitespace collapsed), cut to ``limit`` characters with "…".
    Credentials are masked first (:func:`vm.redact.redact`): a cut never leaves part of a key."""
    from vm.redact import redact

    text = " ".join(redact(render_text(value)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_number(value: Any) -> int | float | None:
    """A number, or a string that is exactly one (surrounding spaces allowed); otherwise None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and len(value) <= 400 and _NUMBER.fullmatch(value):
        return int(value) if _INT.fullmatch(value) else float(value)
    return None


# --- safe operators ---------------------------------------------------------------------------


class _TooLarge(ArithmeticError):
    pass


def _safe_mult(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_RESULT_BITS:
        raise _TooLarge(f"a product over {MAX_RESULT_BITS} bits")
    return a * b


def _safe_pow(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        # bits of a**b ~= b * log2|a|; refuse before computing anything that large.
        if b * math.log2(abs(a)) > MAX_RESULT_BITS:
            raise _TooLarge(f"{a} ** {b} has over {MAX_RESULT_BITS} bits")
    return a**b


_LOCAL = threading.local()


def _evaluator(conditions: bool = False) -> SimpleEval:
    """This thread's evaluator for arithmetic, or (``conditions``) for a jmp's deterministic
    condition (building one costs ~4 µs; its only state is ``names``)."""
    key = "conditions" if conditions else "arithmetic"
    evaluator = getattr(_LOCAL, key, None)
    if evaluator is None:
        evaluator = _new_evaluator(conditions)
        setattr(_LOCAL, key, evaluator)
    return evaluator


def _new_evaluator(conditions: bool = False) -> SimpleEval:
    operators: dict[Any, Any] = {
        ast.Add: operator.add,
        ast.Sub: operator.sub,
        ast.Mult: _safe_mult,
        ast.Div: operator.truediv,
        ast.Pow: _safe_pow,
        ast.Mod: operator.mod,
        ast.USub: operator.neg,
        ast.UAdd: operator.pos,
    }
    functions: dict[str, Any] = {}
    if conditions:  # comparisons, not, in and len() besides arithmetic (and/or are simpleeval's own)
        operators.update({
            ast.Not: operator.not_, ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
        })
        functions = {"len": len}
    return SimpleEval(operators=operators, functions=functions, names={})


def eval_tree(evaluator: SimpleEval, tree: Any, names: dict[str, Any], text: str) -> Any:
    """``tree`` (parsed by ``evaluator``) evaluated with ``names``; what can go wrong on the way is an
    ``ExpressionError`` naming the expression ``text``. Names are set and used with no await in
    between: safe per thread."""
    evaluator.names = names
    try:
        return evaluator.eval("", previously_parsed=tree)
    except ZeroDivisionError:
        raise ExpressionError(text, "division by zero") from None
    except (OverflowError, _TooLarge) as exc:
        raise ExpressionError(text, f"the result is too large ({exc})") from None
    except TypeError as exc:  # a condition comparing text with a number, say
        raise ExpressionError(text, f"the values cannot be compared or combined this way ({exc})") from None
    except InvalidExpression as exc:
        raise ExpressionError(text, str(exc)) from None


# --- compiling --------------------------------------------------------------------------------


def _parse_ref(inner: str, whole: str) -> Ref:
    match = _REF_INNER.fullmatch(inner)
    if not match:
        raise ValueSyntaxError(
            f"'{whole}' is not a valid reference; write ${{name}}, ${{name.key}} or ${{name[0]}} "
            f"with a variable name made of letters, digits and _"
        )
    name, path_text = match.group(1), match.group(2)
    path: list[str | int] = []
    for step in _PATH_STEP.finditer(path_text):
        dotted, index, single, double = step.groups()
        if index is not None:
            path.append(int(index))
        elif dotted is not None:
            if not (_ASCII_INT.fullmatch(dotted) or dotted[0].isalpha() or dotted[0] == "_"):
                raise ValueSyntaxError(
                    f"'{whole}' is not a valid reference: '.{dotted}' is neither a key (starting with a letter "
                    f"or _) nor an index (.0, .-1); for any other key write ${{{name}['{dotted}']}}"
                )
            path.append(dotted)
        else:
            path.append(single if single is not None else double)
    return Ref(inner.strip(), name, tuple(path))


def _split(text: str) -> list[str | Ref]:
    parts: list[str | Ref] = []
    pos = 0
    for match in _REF.finditer(text):
        if match.start() > pos:
            parts.append(text[pos : match.start()])
        parts.append(_parse_ref(match.group(1), match.group(0)))
        pos = match.end()
    if pos < len(text):
        parts.append(text[pos:])
    for part in parts:
        if type(part) is str and "${" in part:
            start = part.index("${")
            raise ValueSyntaxError(
                f"'{shorten(part[start:], 40)}' opens a reference with ${{ but never closes it; write ${{name}}"
            )
    return parts


def _arithmetic(text: str, parts: list[str | Ref]) -> Arithmetic | None:
    """Compile ``text`` as arithmetic if it follows the arithmetic rule; otherwise None."""
    refs = [p for p in parts if isinstance(p, Ref)]
    marked = "".join(p if isinstance(p, str) else f"\x00{refs.index(p)}\x00" for p in parts)
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(marked):
        match = _TOKEN.match(marked, pos)
        if not match:
            return None  # a letter, a comma, a second dot...: text
        tokens.append((match.lastgroup or "", match.group()))
        pos = match.end()
    if sum(kind in ("op", "lp", "rp") for kind, _ in tokens) > MAX_ARITHMETIC_TOKENS:
        raise ValueSyntaxError(
            f"arithmetic with more than {MAX_ARITHMETIC_TOKENS} operators and parentheses; split it over "
            f"several assign steps"
        )
    has_operator = False
    previous = ""  # kind of the previous non-space token
    for i, (kind, tok) in enumerate(tokens):
        if kind == "op":
            has_operator = True
            if previous in ("ref", "num", "rp"):  # a binary operator
                if tok in _SPACED_OPERATORS:
                    before = tokens[i - 1][0] if i else ""
                    after = tokens[i + 1][0] if i + 1 < len(tokens) else ""
                    if before != "ws" or after != "ws":
                        return None  # "${y}-${m}-${d}", "10/15/2024": text
            elif tok not in ("+", "-"):
                return None  # only + and - can be unary
        if kind != "ws":
            previous = kind
    if not has_operator:
        return None
    expression = "".join(f"_v{tok.strip(chr(0))}" if kind == "ref" else tok for kind, tok in tokens)
    try:
        tree = _parse_expression(expression.strip())
    except SyntaxError:
        return None  # "${a} + (": text
    return Arithmetic(text, tuple(refs), tree, Template(tuple(parts)))


@functools.lru_cache(maxsize=4096)
def _parse_expression(expression: str) -> Any:
    """The syntax tree of an arithmetic expression over ``_v0``, ``_v1``…; plans repeat the same
    shapes ("${a} + 1" and "${b} + 1" are both "_v0 + 1"), so trees are shared, never modified."""
    return _evaluator().parse(expression)


def compile_value(value: Any, *, arithmetic: bool = False) -> Value:
    """Compile a plan value. ``arithmetic`` enables the arithmetic rule (``assign`` values)."""
    if isinstance(value, str):
        if "${" not in value:
            if arithmetic:
                compiled = _arithmetic(value, [value])
                if compiled is not None:
                    return compiled
            return Const(value)
        parts = _split(value)
        if len(parts) == 1 and isinstance(parts[0], Ref):
            return parts[0]
        if arithmetic:
            compiled = _arithmetic(value, parts)
            if compiled is not None:
                return compiled
        return Template(tuple(parts))
    if isinstance(value, list):
        return ListValue(tuple(compile_value(v, arithmetic=arithmetic) for v in value))
    if isinstance(value, dict):
        return DictValue(tuple((str(k), compile_value(v, arithmetic=arithmetic)) for k, v in value.items()))
    return Const(value)

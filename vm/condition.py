"""Evaluating a conditional ``jmp``: ask the run's LLM a yes/no question, read a JSON verdict.

The LLM is asked for ``{"result": bool, "explanation": str}`` (with the schema passed on, for
backends with a JSON mode). The reply is read tolerantly (fences, prose, ``"true"`` as a string);
a reply that still cannot be read is asked again once, then fails the step quoting the reply.
"""

from __future__ import annotations

import ast
from typing import Any

from vm.errors import ConditionError, ExpressionError
from vm.jsontext import extract_json
from vm.tooling import StepLLM
from vm.values import ConditionSyntaxError, Ref, _evaluator, _split, eval_tree, to_number

__all__ = ["CONDITION_SCHEMA", "evaluate_condition", "parse_verdict"]

CONDITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"result": {"type": "boolean"}, "explanation": {"type": "string"}},
    "required": ["result", "explanation"],
    "additionalProperties": False,
}

_INSTRUCTIONS = (
    "Decide whether the statement or question above holds, using the context if there is one. "
    'Reply with one JSON object and nothing else: {"result": true or false, "explanation": "one short sentence"}.'
)
_RETRY = (
    'Your last reply could not be read as {"result": true or false, "explanation": "..."}. '
    "Reply again with only that JSON object."
)
_TRUTHY = {"true": True, "yes": True, "false": False, "no": False}


def parse_verdict(text: str) -> tuple[bool, str] | None:
    """``(result, explanation)`` from a reply, or None when it holds no readable verdict."""
    try:
        obj = extract_json(text, (dict,))
    except ValueError:
        return None
    result = obj.get("result")
    if isinstance(result, str):
        result = _TRUTHY.get(result.strip().lower())
    if not isinstance(result, bool):
        return None
    explanation = obj.get("explanation")
    return result, explanation if isinstance(explanation, str) else ""


def build_condition_prompt(condition: str, context: str | None) -> str:
    parts = [condition.strip()]
    if context:
        parts.append(f"Context:\n{context}")
    parts.append(_INSTRUCTIONS)
    return "\n\n".join(parts)


async def evaluate_condition(llm: StepLLM, condition: str, context: str | None) -> tuple[bool, str]:
    prompt = build_condition_prompt(condition, context)
    reply_text = ""
    for attempt in range(2):
        reply = await llm.acomplete(prompt if attempt == 0 else f"{prompt}\n\n{reply_text}\n\n{_RETRY}", json_schema=CONDITION_SCHEMA)
        reply_text = reply.text
        verdict = parse_verdict(reply_text)
        if verdict is not None:
            return verdict
    shown = reply_text if len(reply_text) <= 300 else reply_text[:300] + "..."
    raise ConditionError(
        f'the LLM\'s answer to the jump condition is not {{"result": true|false, ...}} (asked twice); '
        f"last reply: {shown!r}. Check the model, or rephrase condition_prompt as a yes/no question",
        reply=reply_text,
    )


# --- deterministic conditions -------------------------------------------------------------------
#
# ``"condition": "${count} < 3 and ${status} != 'done'"``: a safe expression over references,
# compiled once with the plan and evaluated by simpleeval (no ``eval``). It may hold references,
# numbers, quoted strings, true/false/null, the operators of assign arithmetic, comparisons
# (== != < <= > >=, in, not in), and/or/not, parentheses and len(). A referenced value that is a
# string holding exactly a number ("3", " 8.10 ") counts as that number, as in assign arithmetic.
# The result must be true or false.

_CONDITION_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_MAX_CONDITION_LENGTH = 2000


class DeterministicCondition:
    """A compiled ``condition`` of a ``jmp``: evaluated against the variables, no LLM involved."""

    __slots__ = ("text", "operands", "tree", "refs")

    def __init__(self, text: str) -> None:
        if len(text) > _MAX_CONDITION_LENGTH:
            raise ConditionSyntaxError(f"a condition longer than {_MAX_CONDITION_LENGTH} characters; split the test over assign steps")
        parts = _split(text)
        operands: list[Ref] = []
        pieces: list[str] = []
        for part in parts:
            if isinstance(part, Ref):
                pieces.append(f" _v{len(operands)} ")
                operands.append(part)
            else:
                pieces.append(part)
        expression = "".join(pieces).strip()
        if not expression:
            raise ConditionSyntaxError("the condition is empty; write an expression such as \"${count} < 3\"")
        try:
            tree = _evaluator(conditions=True).parse(expression)
        except SyntaxError as exc:
            raise ConditionSyntaxError(
                f"condition {text!r} is not a valid expression ({exc.msg}); use references, numbers, quoted "
                f"strings, comparisons (== != < <= > >= in), and/or/not and parentheses"
            ) from None
        allowed_names = {f"_v{i}" for i in range(len(operands))} | set(_CONDITION_NAMES)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id not in allowed_names and node.id != "len":
                raise ConditionSyntaxError(
                    f"condition {text!r} names {node.id!r}; variables are written as references (${{{node.id}}}) "
                    f"and text in quotes ('{node.id}')"
                )
            if isinstance(node, (ast.Attribute, ast.Subscript, ast.Lambda, ast.ListComp, ast.DictComp, ast.SetComp,
                                 ast.GeneratorExp, ast.NamedExpr, ast.IfExp)):
                raise ConditionSyntaxError(
                    f"condition {text!r} uses {type(node).__name__.lower()}; reach into values with ${{x.key}} or "
                    f"${{x[0]}} and keep to comparisons, and/or/not and arithmetic"
                )
        self.text = text
        self.operands = tuple(operands)
        self.tree = tree
        self.refs = frozenset().union(*(r.refs for r in operands)) if operands else frozenset()

    def evaluate(self, store: dict[str, Any]) -> bool:
        names: dict[str, Any] = dict(_CONDITION_NAMES)
        for i, ref in enumerate(self.operands):
            raw = ref.evaluate(store)
            number = to_number(raw) if isinstance(raw, str) else None
            names[f"_v{i}"] = number if number is not None else raw
        result = eval_tree(_evaluator(conditions=True), self.tree, names, self.text)
        if not isinstance(result, bool):
            raise ExpressionError(
                self.text, f"it gives {result!r}, not true or false; compare the value, e.g. \"${{x}} > 0\" or \"len(${{x}}) > 0\""
            )
        return result

"""Evaluating a conditional ``jmp``: ask the run's LLM a yes/no question, read a JSON verdict.

The LLM is asked for ``{"result": bool, "explanation": str}`` (with the schema passed on, for
backends with a JSON mode). The reply is read tolerantly (fences, prose, ``"true"`` as a string);
a reply that still cannot be read is asked again once, then fails the step quoting the reply.
"""

from __future__ import annotations

from typing import Any

from vm.errors import ConditionError
from vm.jsontext import extract_json
from vm.tooling import StepLLM

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

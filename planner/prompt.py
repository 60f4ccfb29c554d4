"""The planner's prompt: one builder for inference and for training, so the two never drift.

Templates live in ``planner/prompts/*.md.j2`` and render with strict undefined variables: a
missing value is an error, never a silently empty line.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jinja2 import Environment, StrictUndefined, Template

from vm.errors import BadInput

__all__ = [
    "build_prompt",
    "build_training_example",
    "describe_goal",
    "format_completion",
    "parse_metadata",
    "prompt_version",
    "render",
    "tool_descriptions",
]


@cache
def _template(name: str) -> Template:
    text = resources.files("planner.prompts").joinpath(name).read_text(encoding="utf-8")
    env = Environment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)
    return env.from_string(text)


@cache
def prompt_version() -> str:
    """A short digest of the planner's prompt templates: runs record it, so plans made with
    different prompts (and rows trained on them) can be told apart."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("planner.md.j2", "repair.md.j2", "update.md.j2"):
        digest.update(resources.files("planner.prompts").joinpath(name).read_bytes())
    return digest.hexdigest()[:12]


def render(name: str, **values: Any) -> str:
    return _template(name).render(**values).strip() + "\n"


def parse_metadata(metadata: Any) -> dict[str, Any]:
    """Metadata as a dict: a dict, a JSON object string, or nothing. Anything else is an error."""
    if metadata is None or metadata == "":
        return {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError as exc:
            raise BadInput(f"metadata is not valid JSON ({exc.msg}, column {exc.colno}); pass a JSON object") from None
    if not isinstance(metadata, dict):
        raise BadInput(f"metadata must be a JSON object, got {type(metadata).__name__}")
    return metadata


def _get(mapping: dict[str, Any], *names: str) -> Any:
    """The first value among ``names``, matching keys in any letter case."""
    lowered = {str(k).lower(): v for k, v in mapping.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value not in (None, "", [], {}):
            return value
    return None


def _label_path(labels: Any) -> str | None:
    if not isinstance(labels, list) or not labels:
        return None
    names = []
    for item in labels:
        if isinstance(item, dict):
            item = _get(item, "label", "name")
        if item:
            names.append(str(item))
    return " > ".join(names) or None


def response_language(metadata: Any) -> str | None:
    meta = parse_metadata(metadata)
    response_format = _get(meta, "response_format")
    fmt = response_format if isinstance(response_format, dict) else {}
    value = _get(fmt, "lang", "language") or _get(meta, "lang", "language")
    return str(value) if value else None


def describe_goal(goal: str, metadata: Any = None) -> str:
    """The goal and what its metadata says about the answer, one line each."""
    goal = goal.strip()
    if not goal:
        raise BadInput("the goal is empty; say what the plan should achieve")
    meta = parse_metadata(metadata)
    lines = [f"Goal: {goal}"]
    response_format = _get(meta, "response_format")
    fmt = response_format if isinstance(response_format, dict) else {}
    for label, keys in (
        ("Background", ("background",)),
        ("Annotations", ("annotations",)),
        ("Response language", ("lang", "language")),
        ("Response format", ("format",)),
    ):
        value = _get(fmt, *keys) or _get(meta, *keys)
        if value:
            lines.append(f"{label}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}")
    path = _label_path(_get(meta, "label_path"))
    if path:
        lines.append(f"Label path: {path}")
    return "\n".join(lines)


def _type_name(schema: dict[str, Any]) -> str:
    if "type" in schema:
        kind = schema["type"]
        if kind == "array" and isinstance(schema.get("items"), dict):
            return f"list of {_type_name(schema['items'])}"
        return str(kind)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            names = [_type_name(s) for s in schema[key] if s.get("type") != "null"]
            return " or ".join(dict.fromkeys(names)) or "any"
    return "any"


def tool_descriptions(registry: Any) -> list[dict[str, Any]]:
    """Name, description and parameters of every tool in ``registry``, for the prompt."""
    tools = []
    for name in registry.names():
        spec = registry.get(name)
        schema = spec.parameters_schema() if hasattr(spec, "parameters_schema") else {"properties": {}}
        required = set(schema.get("required", []))
        params = []
        for pname, pschema in schema.get("properties", {}).items():
            params.append(
                {
                    "name": pname,
                    "type": _type_name(pschema),
                    "required": pname in required,
                    "default": json.dumps(pschema.get("default"), ensure_ascii=False),
                    "description": " ".join((pschema.get("description") or "").split()),
                }
            )
        tools.append({"name": name, "description": (spec.description or "").strip(), "parameters": params})
    return tools


def build_prompt(goal: str, metadata: Any, registry: Any, examples: list[dict[str, Any]] | None = None) -> str:
    """The planner prompt for ``goal``: goal description, the VM's rules, the tools, examples."""
    return render(
        "planner.md.j2",
        goal_description=describe_goal(goal, metadata),
        language=response_language(metadata),
        tools=tool_descriptions(registry),
        examples=[
            {"goal": e["goal"], "plan": json.dumps(e["plan"], ensure_ascii=False, indent=2)} for e in (examples or [])
        ],
    )


def format_completion(reasoning: str, plan: list[Any]) -> str:
    """What the planner writes: its reasoning in <think>, then the plan in a fenced JSON block.

    The JSON is on one line with ``", "`` and ``": "`` separators: exactly the form constrained
    decoding produces, so a trained model meets at inference the text it learned from.
    """
    return f"<think>\n{reasoning.strip()}\n</think>\n```json\n{json.dumps(plan, ensure_ascii=False)}\n```"


def build_training_example(goal: str, metadata: Any, reasoning: str, plan: list[Any], registry: Any) -> dict[str, str]:
    """``{"prompt", "completion"}`` for supervised fine-tuning, from the same builder as inference."""
    return {"prompt": build_prompt(goal, metadata, registry), "completion": format_completion(reasoning, plan)}

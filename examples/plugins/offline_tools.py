"""Offline stand-ins for the three built-in tools, so the example plans run with no model and no
knowledge base. Use with ``--no-builtins``:

    planvm exec examples/plans/retrieval_answer.json --plugin examples/plugins/offline_tools.py --no-builtins

The "documents" are a few paragraphs about planvm below. ``vector_search`` ranks them by shared
words, ``retrieve_knowledge_graph`` returns the relationships that mention query words, and
``llm_generate`` is extractive: it answers with the context sentences that best match the prompt.
"""

from __future__ import annotations

import re
from typing import Any

from tools import tool
from vm import CallContext

DOCUMENTS = [
    ("docs/runs.md", "A run ends as soon as a step assigns the variable named final_answer. "
     "A plan that runs past its last step without assigning final_answer fails with NoFinalAnswer."),
    ("docs/limits.md", "Every run has a step budget of 1000 executed instructions by default. "
     "A plan that loops forever stops with StepLimitExceeded when the budget runs out; raise max_steps to allow more."),
    ("docs/outputs.md", "With one name in output_vars the whole tool result is stored. "
     "With several names, each takes the same-named key of a JSON object result. "
     "A pitfall: a name that is not a key of the result fails the step, naming the keys that were there."),
    ("docs/references.md", "A parameter that is exactly ${x} keeps the type of x. "
     "Inside longer text a value is rendered as text, and JSON for anything but a string."),
]

GRAPH = [
    ("final_answer", "run", "assigning final_answer ends the run"),
    ("step budget", "loop", "the step budget stops a loop that never ends"),
    ("output_vars", "tool result", "output_vars store the tool result or its keys"),
]

_WORD = re.compile(r"[a-z_]+")


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2}


@tool
def vector_search(query: str, top_k: int = 10) -> list[dict[str, Any]]:
    """Rank the example documents by the words they share with the query.

    Args:
        query: What to look for.
        top_k: How many chunks to return.
    """
    q = _words(query)
    scored = [(len(q & _words(text)) / (len(q) or 1), uri, text) for uri, text in DOCUMENTS]
    scored.sort(key=lambda item: -item[0])
    return [{"content": text, "source_uri": uri, "score": round(score, 3)} for score, uri, text in scored[:top_k]]


@tool
def retrieve_knowledge_graph(query: str) -> dict[str, Any]:
    """Return the example graph's relationships that share words with the query.

    Args:
        query: What to look for.
    """
    q = _words(query)
    hits = [r for r in GRAPH if q & _words(" ".join(r))]
    entities = sorted({name for s, t, _ in hits for name in (s, t)})
    return {
        "entities": [{"name": e, "description": ""} for e in entities],
        "relationships": [{"source_entity": s, "target_entity": t, "relationship": r} for s, t, r in hits],
    }


def _text(value: Any) -> str:
    """The prose in a context: strings as they are, the string leaves of lists and objects."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(_text(v) for v in value.values())
    if isinstance(value, list):
        return "\n".join(_text(v) for v in value)
    return ""


@tool
def llm_generate(prompt: str, ctx: CallContext, context: Any = None) -> Any:
    """Answer with the context sentences that share the most words with the prompt.

    Args:
        prompt: The question.
        context: Text to pick sentences from.
    """
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n", _text(context)) if s.strip()]
    q = _words(prompt)
    # Shared words, discounted for long sentences, so a pasted JSON blob does not win.
    ranked = sorted(sentences, key=lambda s: -len(q & _words(s)) / (1 + len(s) / 200))
    if len(ctx.output_vars) > 1:
        return {name: (ranked[i] if i < len(ranked) else "") for i, name in enumerate(ctx.output_vars)}
    return ranked[0] if ranked else ""

"""The built-in tools plans call: ``llm_generate``, ``vector_search``, ``retrieve_knowledge_graph``.

``llm_generate`` uses the run's LLM (whatever the VM was given). The two retrieval tools ask a
:class:`KnowledgeBase` backend; without one they fail their step with a message saying so.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Protocol

from tools.registry import Tool, ToolRegistry
from vm.errors import BackendUnavailable
from vm.jsontext import extract_json
from vm.tooling import CallContext
from vm.values import render_text

__all__ = ["KnowledgeBase", "builtin_tools", "default_registry"]


class KnowledgeBase(Protocol):
    """What the retrieval tools need; every backend returns the same shapes."""

    def search(self, query: str, top_k: int) -> list[dict[str, Any]]:
        """Chunks ``{content, source_uri, score}``, best first."""
        ...

    def graph(self, query: str) -> dict[str, Any]:
        """``{entities: [{name, description}], relationships: [{source_entity, target_entity, relationship}]}``."""
        ...


_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")
_JSON_REPLY = "Reply with one JSON object and nothing else. Its keys are exactly: {keys}."


def _object_schema(keys: tuple[str, ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {k: {} for k in keys},
        "required": list(keys),
        "additionalProperties": False,
    }


async def llm_generate(prompt: str, ctx: CallContext, context: Any = None) -> Any:
    """Ask the LLM to write text: summarise, reason over, or answer from what earlier steps found.

    With several output_vars, the LLM is asked for a JSON object with exactly those keys, and
    each key fills the output variable of the same name.

    Args:
        prompt: The instruction for the LLM. Include the goal and the language of the answer.
        context: Material the answer should draw on, such as retrieved chunks or earlier results
            (text, or any value, which is given to the LLM as JSON).
    """
    keys = ctx.output_vars
    extract = getattr(ctx.llm.backend, "extract_found", None)
    if extract is not None:  # the offline extractive baseline: no model, sentences from the context
        from tools.llm_extractive import NO_MODEL_NOTICE

        answer, found = await asyncio.to_thread(extract, prompt, context, keys)
        ctx.llm.note(prompt, render_text(answer), NO_MODEL_NOTICE, found=found)
        if isinstance(answer, str):  # streamed sentence by sentence, as a model's answer would be
            start = 0  # each piece keeps the space or line break after it: the pieces join to the answer
            for end in _SENTENCE_END.finditer(answer):
                ctx.llm.emit(answer[start:end.end()])
                start = end.end()
            ctx.llm.emit(answer[start:])
        return answer
    if context is not None and not isinstance(context, str):
        context = render_text(context)  # retrieved chunks, a graph...: as JSON text
    text = prompt if not context else f"{context}\n\n{prompt}"
    if len(keys) > 1:
        text = f"{text}\n\n{_JSON_REPLY.format(keys=', '.join(keys))}"
        reply = await ctx.llm.acomplete(text, json_schema=_object_schema(keys))
        try:
            return extract_json(reply.text, (dict,))
        except ValueError:
            return reply.text  # the VM's output mapping reports what is missing
    reply = await ctx.llm.acomplete(text, stream=True)
    return reply.text


def builtin_tools(knowledge_base: KnowledgeBase | None = None) -> list[Tool]:
    """The built-in tools, the retrieval ones served by ``knowledge_base``."""

    def _kb() -> KnowledgeBase:
        if knowledge_base is None:
            raise BackendUnavailable(
                "no knowledge base is configured for the retrieval tools; give one to builtin_tools(knowledge_base=...) "
                "or register your own vector_search / retrieve_knowledge_graph tools"
            )
        return knowledge_base

    def vector_search(query: str, top_k: int = 10) -> list[dict[str, Any]]:
        """Find the document chunks most similar to the query.

        Returns a list of {content, source_uri, score}, best first.

        Args:
            query: What to look for, as a question or key phrase.
            top_k: How many chunks to return.
        """
        return _kb().search(query, top_k)

    def retrieve_knowledge_graph(query: str) -> dict[str, Any]:
        """Find entities and relationships of the knowledge graph related to the query.

        Returns {entities: [{name, description}], relationships: [{source_entity, target_entity, relationship}]}.

        Args:
            query: What to look for, as a question or key phrase.
        """
        return _kb().graph(query)

    return [Tool(llm_generate), Tool(vector_search), Tool(retrieve_knowledge_graph)]


def default_registry(knowledge_base: KnowledgeBase | None = None) -> ToolRegistry:
    """A registry holding the built-in tools."""
    return ToolRegistry(builtin_tools(knowledge_base))

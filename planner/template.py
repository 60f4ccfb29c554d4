"""The ``template`` planner: the canonical retrieval plan, with no model.

Knowledge graph and vector search on the goal, then ``llm_generate`` over both into
``final_answer``, with the generation prompt written in the goal's language. It is the baseline
every trained planner is compared with, and the offline default.
"""

from __future__ import annotations

import re
from typing import Any

from planner.planner import PlanResult
from planner.prompt import describe_goal, response_language
from vm.validate import compile_plan

__all__ = ["TemplatePlanner", "goal_language"]

# The generation prompt in a few languages; others get the English one with the language named.
_PROMPTS = {
    "English": "Answer this goal using the knowledge graph and the documents in the context. Be specific, and cite the sources you use.\n{goal}",
    "Chinese": "请根据上下文中的知识图谱和文档回答以下目标。回答要具体，并注明所引用的来源。\n{goal}",
    "Japanese": "コンテキストのナレッジグラフと文書を使って、次の目標に答えてください。具体的に書き、使った出典を示してください。\n{goal}",
    "Spanish": "Responde a este objetivo usando el grafo de conocimiento y los documentos del contexto. Sé concreto y cita las fuentes que uses.\n{goal}",
    "French": "Réponds à cet objectif à l'aide du graphe de connaissances et des documents du contexte. Sois précis et cite les sources utilisées.\n{goal}",
    "German": "Beantworte dieses Ziel mit dem Wissensgraphen und den Dokumenten im Kontext. Sei konkret und nenne die verwendeten Quellen.\n{goal}",
}
_ALIASES = {"en": "English", "zh": "Chinese", "ja": "Japanese", "es": "Spanish", "fr": "French", "de": "German", "中文": "Chinese", "简体中文": "Chinese"}


def goal_language(goal: str, metadata: Any = None) -> str:
    """The response language: the metadata's, else guessed from the goal's script."""
    declared = response_language(metadata)
    if declared:
        return _ALIASES.get(declared.strip().lower(), _ALIASES.get(declared.strip(), declared.strip().title()))
    if re.search(r"[\u3040-\u30ff]", goal):
        return "Japanese"
    if re.search(r"[\u4e00-\u9fff]", goal):
        return "Chinese"
    return "English"


class TemplatePlanner:
    """Plans without a model: the canonical retrieval plan for any goal."""

    name = "template"

    def __init__(self, registry: Any = None, *, top_k: int = 5) -> None:
        self.registry = registry
        self.top_k = top_k

    def plan(self, goal: str, metadata: Any = None) -> PlanResult:
        description = describe_goal(goal, metadata)  # also rejects an empty goal
        language = goal_language(goal, metadata)
        template = _PROMPTS.get(language)
        prompt = template.format(goal=description) if template else (
            _PROMPTS["English"].format(goal=description) + f"\nWrite the answer in {language}."
        )
        query = goal.strip()
        plan = [
            {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "retrieve_knowledge_graph", "tool_params": {"query": query}, "output_vars": ["graph"]}},
            {"seq_no": 1, "type": "calling", "parameters": {"tool_name": "vector_search", "tool_params": {"query": query, "top_k": self.top_k}, "output_vars": ["chunks"]}},
            {
                "seq_no": 2,
                "type": "calling",
                "parameters": {
                    "tool_name": "llm_generate",
                    "tool_params": {"prompt": prompt, "context": {"knowledge_graph": "${graph}", "documents": "${chunks}"}},
                    "output_vars": ["final_answer"],
                },
            },
        ]
        program = compile_plan(plan, self.registry)
        reasoning = (
            f"Template plan (no model): look the goal up in the knowledge graph and in the documents, then "
            f"write the answer in {language} from both."
        )
        return PlanResult(plan=program.to_data(), program=program, reasoning=reasoning, planner=self.name)

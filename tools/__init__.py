"""Tools for plans: the registry, the ``@tool`` decorator and the built-in tools."""

from tools.builtins import KnowledgeBase, builtin_tools, default_registry
from tools.registry import Tool, ToolRegistry, load_plugin, tool

__all__ = [
    "KnowledgeBase",
    "Tool",
    "ToolRegistry",
    "builtin_tools",
    "default_registry",
    "load_plugin",
    "tool",
]

"""The tools an engine runs with, and where they came from.

A run keeps its tool sources (plugin files with their SHA-256, the MCP servers named on the
command line, whether the built-ins were left out): going on with it later — resume, fork,
approve, a live replay — takes the same tools unless the command names others, and a plugin that
is gone or changed is one clear error instead of "unknown tool" on every step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from planvm.engine.config import EngineConfig
from vm.errors import BadInput

__all__ = ["make_registry", "options_for_run", "tool_sources"]

# The options that choose tools: a command giving any of them says which tools it wants.
TOOL_OPTIONS = ("plugins", "mcp_commands", "mcp_urls", "no_builtins", "mcp_prefix")


def make_registry(config: EngineConfig) -> Any:
    """The built-in tools (unless ``no_builtins``), every plugin's tools and the MCP servers' tools."""
    from tools import ToolRegistry, load_plugin
    from tools.backends import make_registry as builtin_registry

    registry = ToolRegistry() if config.no_builtins else builtin_registry(config)
    try:
        for path in config.plugins:
            for t in load_plugin(path):
                registry.register(t)
        if config.mcp_commands or config.mcp_urls or config.mcp:
            from tools.mcp_tools import add_mcp_tools, parse_specs

            add_mcp_tools(registry, parse_specs(config.mcp_commands, config.mcp_urls, config.mcp, prefix=config.mcp_prefix, timeout=config.mcp_timeout))
    except BaseException:
        registry.close()
        raise
    return registry


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def tool_sources(config: EngineConfig) -> dict[str, Any]:
    """What a run keeps of where its tools came from (``[[mcp]]`` tables stay in planvm.toml)."""
    return {
        "plugins": [{"path": str(Path(p).resolve()), "sha256": _sha256(Path(p))} for p in config.plugins],
        "mcp_commands": list(config.mcp_commands),
        "mcp_urls": list(config.mcp_urls),
        "mcp_prefix": config.mcp_prefix,
        "no_builtins": config.no_builtins,
    }


def options_for_run(options: Mapping[str, Any], run: Any) -> dict[str, Any]:
    """The options of a command going on with the stored ``run``: its own, when it names tools;
    else the tools the run was started with, checked (``BadInput`` naming a plugin that is gone
    or changed, and what to pass)."""
    given = dict(options)
    sources = getattr(run, "tools", None)
    if not sources or any(given.get(name) for name in TOOL_OPTIONS):
        return given
    plugins = []
    for plugin in sources.get("plugins") or ():
        path = Path(str(plugin.get("path")))
        digest = _sha256(path)
        if digest is None:
            raise BadInput(
                f"run {run.id} was started with the plugin {path}, which is not there any more; pass --plugin FILE with the "
                f"tools its plan calls (or give every tool option anew)"
            )
        if plugin.get("sha256") and digest != plugin["sha256"]:
            raise BadInput(
                f"the plugin {path} changed since run {run.id} was started with it; pass --plugin {path} to go on with it as "
                f"it is now"
            )
        plugins.append(str(path))
    return {**given, "plugins": plugins, "mcp_commands": list(sources.get("mcp_commands") or ()),
            "mcp_urls": list(sources.get("mcp_urls") or ()), "mcp_prefix": bool(sources.get("mcp_prefix")),
            "no_builtins": bool(sources.get("no_builtins"))}

"""The command line's shared options, in one place.

Options that are also settings (the store, limits, concurrency, the planner, tools) have no
default and read no variable here: a flag left out falls through to ``PLANVM_*`` and
``planvm.toml`` in :class:`planvm.engine.EngineConfig`, so every source works the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

__all__ = ["engine_options", "json_option", "kb_option", "metadata_option", "no_library_option", "planner_option", "run_options", "store_option", "tool_options"]


def _stack(fn: Callable[..., Any], options: list[Callable[..., Any]]) -> Callable[..., Any]:
    for option in reversed(options):
        fn = option(fn)
    return fn


def tool_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Where the tools come from: plugins, MCP servers, the built-ins."""
    return _stack(fn, [
        click.option("--plugin", "plugins", multiple=True, type=click.Path(dir_okay=False),
                     help="A Python file whose @tool functions are registered (repeatable; planvm.toml: plugins)."),
        click.option("--no-builtins", is_flag=True, help="Leave out the built-in tools (a plugin may then define its own)."),
        click.option("--mcp", "mcp_commands", multiple=True, metavar="'COMMAND ARGS'",
                     help="Start this MCP server (stdio) and take its tools (repeatable)."),
        click.option("--mcp-url", "mcp_urls", multiple=True, metavar="URL",
                     help="Take the tools of the MCP server at this streamable-HTTP address (repeatable)."),
        click.option("--mcp-prefix", is_flag=True, help="Name MCP servers' tools SERVER_TOOL (when names clash with other tools)."),
    ])


def store_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store", "store_path",
        help="Run store: an SQLite file or sqlite:///path, postgresql://…, mysql://… (MariaDB, TiDB) (PLANVM_STORE, "
        "planvm.toml: store; default: $PLANVM_HOME/runs.sqlite, or runs.sqlite in the user data folder).",
    )(fn)


def kb_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--kb", "kb_path", type=click.Path(file_okay=False),
        help="Knowledge-base folder (default: PLANVM_KB, planvm.toml, or $PLANVM_HOME/kb).",
    )(fn)


def engine_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What every command that builds an engine takes: its tools, knowledge base and run store."""
    return tool_options(kb_option(store_option(fn)))


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Budgets, tool lists, concurrency and the output format of commands that execute plans."""
    return _stack(fn, [
        click.option("--max-steps", type=click.IntRange(min=1), help="Step budget (PLANVM_MAX_STEPS; default 1000)."),
        click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True),
                     help="Wall-clock budget in seconds, planning included (PLANVM_MAX_SECONDS; default 600)."),
        click.option("--max-llm-calls", type=click.IntRange(min=0), help="LLM calls a run may make (PLANVM_MAX_LLM_CALLS; default 200)."),
        click.option("--max-tokens", type=click.IntRange(min=1),
                     help="Token budget of a run's LLM exchanges, prompt and completion (PLANVM_MAX_TOKENS; default: none)."),
        click.option("--max-value-bytes", type=click.IntRange(min=1024),
                     help="Largest value a step may produce, as JSON text (PLANVM_MAX_VALUE_BYTES; default 4 MiB)."),
        click.option("--max-plan-bytes", type=click.IntRange(min=1024), help="Largest plan file (PLANVM_MAX_PLAN_BYTES; default 32 MiB)."),
        click.option("--allow-tool", "allow_tools", multiple=True, help="Limit the run to these tools (repeatable)."),
        click.option("--approve-tool", "approve_tools", multiple=True,
                     help="Calls to this tool wait for `planvm approve` before they run (repeatable)."),
        click.option("--concurrency", type=click.IntRange(min=1),
                     help="Tool calls that may overlap when steps are independent (PLANVM_CONCURRENCY; default 8; 1: one at a time)."),
    ])


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON object: run_id, status, final_answer, variables, steps, error."
    )(fn)


planner_option = click.option(
    "--planner", "planner_kind", type=click.Choice(["auto", "llm", "template"]),
    help="llm: the configured LLM plans; template: the canonical retrieval plan, no model; auto (default): llm when an "
    "LLM is configured (PLANVM_PLANNER, planvm.toml: planner).",
)
metadata_option = click.option("--metadata", help="Goal metadata as a JSON object (response_format, label_path...).")
no_library_option = click.option(
    "--no-library", is_flag=True, help="Neither reuse a best plan kept for this goal nor show similar ones to the planner."
)

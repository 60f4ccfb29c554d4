"""``planvm``: validate and execute plans from the command line.

Exit codes: 0 success; 1 the plan is invalid (``validate``) or the run failed (``exec``);
2 unusable input (a missing file, text that is not JSON, a plan that cannot run, a bad plugin).
Each subcommand imports what it needs when it runs, so ``planvm --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

EXIT_FAILED = 1
EXIT_UNUSABLE = 2


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


def _registry(plugins: tuple[str, ...], no_builtins: bool) -> Any:
    from tools import ToolRegistry, default_registry, load_plugin

    registry = ToolRegistry() if no_builtins else default_registry()
    for path in plugins:
        for t in load_plugin(path):
            registry.register(t)
    return registry


def _as_text(value: Any) -> str:
    from vm.values import render_text

    return render_text(value)


plugin_option = click.option(
    "--plugin",
    "plugins",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="A Python file whose @tool functions are registered (repeatable).",
)
no_builtins_option = click.option(
    "--no-builtins", is_flag=True, help="Leave out the built-in tools (a plugin may then define its own)."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="planvm")
def cli() -> None:
    """planvm: plan with an LLM, execute the plan in a validated VM."""


@cli.command()
def schema() -> None:
    """Print the JSON Schema of a plan."""
    from vm import plan_json_schema

    click.echo(json.dumps(plan_json_schema(), indent=2))


@cli.command()
@click.argument("plan_file", type=click.Path(dir_okay=False))
@plugin_option
@no_builtins_option
def validate(plan_file: str, plugins: tuple[str, ...], no_builtins: bool) -> None:
    """Check PLAN_FILE without running it; list every problem, one per line."""
    from vm import PlanVMError, validate_plan

    try:
        registry = _registry(plugins, no_builtins)
        _program, problems = validate_plan(plan_file, registry)
    except PlanVMError as exc:
        _echo_err(f"error: {exc}")
        sys.exit(EXIT_UNUSABLE)
    if problems:
        for problem in problems:
            click.echo(str(problem))
        sys.exit(EXIT_FAILED)
    click.echo("valid")


def _progress_printer() -> Any:
    from rich.console import Console

    console = Console(stderr=True, highlight=False)

    def show(record: Any) -> None:
        tool = f" {record.tool}" if record.tool else ""
        status = "[red]failed[/red]" if record.error else "[green]ok[/green]"
        console.print(f"seq_no {record.seq_no:>3}  {record.type}{tool}  {record.duration_s * 1000:.1f} ms  {status}")

    return show


@cli.command(name="exec")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@plugin_option
@no_builtins_option
@click.option("--max-steps", type=click.IntRange(min=1), envvar="PLANVM_MAX_STEPS", help="Step budget (default 1000).")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), envvar="PLANVM_MAX_SECONDS", help="Wall-clock budget in seconds (default 600).")
@click.option("--allow-tool", "allow_tools", multiple=True, help="Limit the run to these tools (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: status, final_answer, variables, steps, error.")
def exec_(
    plan_file: str,
    plugins: tuple[str, ...],
    no_builtins: bool,
    max_steps: int | None,
    max_seconds: float | None,
    allow_tools: tuple[str, ...],
    as_json: bool,
) -> None:
    """Validate and run PLAN_FILE; print its final answer."""
    from vm import VM, Limits, PlanValidationError, PlanVMError

    overrides = {k: v for k, v in (("max_steps", max_steps), ("max_seconds", max_seconds)) if v is not None}
    on_step = _progress_printer() if sys.stderr.isatty() else None
    try:
        registry = _registry(plugins, no_builtins)
        vm = VM(registry, limits=Limits(**overrides), allowed_tools=allow_tools or None, on_step=on_step)
        with vm:
            result = vm.run(plan_file)
    except PlanValidationError as exc:
        if as_json:
            click.echo(json.dumps({"status": "invalid", "error": str(exc), "problems": [str(p) for p in exc.problems]}))
        else:
            _echo_err("error: the plan is not valid:")
            for problem in exc.problems:
                _echo_err(f"  {problem}")
        sys.exit(EXIT_UNUSABLE)
    except PlanVMError as exc:
        if as_json:
            click.echo(json.dumps({"status": "invalid", "error": str(exc)}))
        else:
            _echo_err(f"error: {exc}")
        sys.exit(EXIT_UNUSABLE)
    code = 0 if result.ok else EXIT_FAILED
    if as_json:
        from pydantic_core import to_jsonable_python

        click.echo(json.dumps(result.to_dict(), ensure_ascii=False, default=to_jsonable_python))
    elif result.ok:
        click.echo(_as_text(result.final_answer))
    if not result.ok and not as_json:
        _echo_err(f"error: {result.error}")
        cause = result.error.__cause__ if result.error else None
        if cause is not None:
            _echo_err(f"  caused by {type(cause).__name__}: {cause}")
    _exit(code)


def _exit(code: int) -> None:
    """Exit, even if a sync tool cut off by the time budget is still running in its thread
    (Python would otherwise wait for it at exit)."""
    import os
    import threading

    if any(t.name.startswith("planvm-tool") and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main() -> None:
    cli(prog_name="planvm")

"""``planvm schema``, ``validate``, ``exec``, ``resume``, ``fork``, ``approve`` and ``config``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from planvm.cli.common import (
    executes,
    guarded,
    make_engine,
    namespaced,
    print_queued,
    with_run_tools,
)
from planvm.cli.options import (
    engine_options,
    json_option,
    run_options,
    tool_options,
)
from planvm.cli.render import EXIT_FAILED, echo_err, print_json


@click.command()
def schema() -> None:
    """Print the JSON Schema of a plan."""
    from vm import plan_json_schema

    click.echo(json.dumps(plan_json_schema(), indent=2))


@click.command()
@click.argument("plan_file", type=click.Path(dir_okay=False))
@tool_options
@click.option("--allow-tool", "allow_tools", multiple=True,
              help="Only these tools may be called (repeatable; with PLANVM_ALLOW_TOOLS or planvm.toml: those in both).")
@guarded
def validate(plan_file: str, allow_tools: tuple[str, ...], **options: Any) -> None:
    """Check PLAN_FILE without running it, as a run would (its tools, allowed tools and plan limits); list every problem, one per line."""
    with make_engine(options, record=False, quiet=True) as engine:
        problems = engine.validate(plan_file, allow_tools=allow_tools or None)
    if problems:
        for problem in problems:
            click.echo(str(problem))
        sys.exit(EXIT_FAILED)
    click.echo("valid")


def _run(work: Any) -> Any:
    import asyncio

    return asyncio.run(work)


@click.command(name="exec")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@engine_options
@click.option("--no-store", is_flag=True, help="Do not record the run.")
@click.option("--queue", is_flag=True, help="Only validate and store the run as queued for `planvm worker`; print its id.")
@run_options
@json_option
@executes
def exec_(plan_file: str, no_store: bool, queue: bool, **options: Any) -> Any:
    """Validate and run PLAN_FILE; print its final answer (and, on stderr, the run id)."""
    from vm import BadInput

    if queue and no_store:
        raise BadInput("--queue stores the run for a worker; it cannot go with --no-store")
    with make_engine(options, record=not no_store) as engine:
        if queue:
            from vm import load_plan_data

            plan = load_plan_data(plan_file, max_bytes=engine.limits.max_plan_bytes)
            run_id = engine.enqueue(None, metadata={"plan_file": plan_file}, plan=plan)
            print_queued(run_id, options.get("as_json", False))
            sys.exit(0)
        return _run(engine.exec_plan(plan_file, metadata={"plan_file": plan_file}))


@click.command()
@click.argument("run_id")
@engine_options
@run_options
@json_option
@executes
def resume(run_id: str, **options: Any) -> Any:
    """Continue RUN_ID (killed or failed) from its last completed step, with the same tools."""
    with make_engine(with_run_tools(run_id, options)) as engine:
        return _run(engine.resume(run_id))


@click.command()
@click.argument("run_id")
@click.option("--from", "from_seq", type=int, required=True, help="The seq_no the new run continues from.")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False), help="The new plan (JSON).")
@click.option("--suggestion", help="Instead of --plan: ask the planner (the configured LLM) to change the plan from --from on.")
@engine_options
@run_options
@json_option
@executes
def fork(run_id: str, from_seq: int, plan_file: str | None, suggestion: str | None, **options: Any) -> Any:
    """Start a new run from RUN_ID's steps before --from, continuing with --plan (or a re-plan)."""
    from vm import BadInput

    if (plan_file is None) == (suggestion is None):
        raise BadInput("give either --plan FILE or --suggestion TEXT")
    with make_engine(with_run_tools(run_id, options)) as engine:
        return _run(engine.fork(run_id, from_seq, plan=plan_file, suggestion=suggestion))


@click.command()
@click.argument("run_id")
@click.option("--seq", "seq_no", type=int, required=True, help="The seq_no of the call the run waits for.")
@click.option("--reject", is_flag=True, help="Reject the call: the step fails with ToolRejected.")
@click.option("--params", "tool_params", help="Run the call with these parameters instead (a JSON object).")
@click.option("--reason", help="Why the call is rejected (kept with the run).")
@engine_options
@run_options
@json_option
@executes
def approve(run_id: str, seq_no: int, reject: bool, tool_params: str | None, reason: str | None, **options: Any) -> Any:
    """Approve (or --reject) the tool call RUN_ID waits for, and continue the run."""
    from vm import BadInput

    params = None
    if tool_params is not None:
        try:
            params = json.loads(tool_params)
        except ValueError:
            raise BadInput("--params is not JSON; give the tool's parameters as a JSON object") from None
        if not isinstance(params, dict):
            raise BadInput("--params must be a JSON object of the tool's parameters")
    with make_engine(with_run_tools(run_id, options)) as engine:
        return _run(engine.approve(run_id, seq_no, not reject, tool_params=params, reason=reason))


@click.command()
@engine_options
@run_options
@json_option
@guarded
def config(as_json: bool, **options: Any) -> None:
    """Print the resolved configuration: every setting, its value (keys masked) and where it came from.

    Sources, strongest first: this command's flags, PLANVM_* variables, planvm.toml (or the file
    PLANVM_CONFIG names), defaults."""
    from planvm.engine import EngineConfig
    from planvm.engine.config import config_file

    rows = EngineConfig.explain(namespaced(options))
    if as_json:
        print_json({"config_file": str(config_file()), "settings": rows})
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("setting", "value", "source", box=None, pad_edge=False)
    for row in rows:
        value = row["value"]
        shown = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
        table.add_row(row["key"], escape(shown), escape(row["source"]))  # ("[namespaces.a]" is text, not markup)
    Console().print(table)
    echo_err(f"config file: {config_file()}" + ("" if config_file().exists() else " (not there)"))

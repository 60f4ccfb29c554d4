"""``planvm``: validate, execute, resume, fork and replay plans from the command line.

Exit codes: 0 success; 1 the plan is invalid (``validate``), the run failed, or a replay did not
reproduce its record; 2 unusable input (a missing file, text that is not JSON, a plan that cannot
run, a bad plugin, an unusable run store or run id); 130 interrupted by Ctrl-C (a run in progress is
stored as interrupted: resume it). Each subcommand imports what it needs when
it runs, so ``planvm --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import click

from planvm.render import (
    EXIT_FAILED,
    EXIT_UNUSABLE,
    announce_run,
    echo_err,
    exit_now,
    print_json,
    progress_printer,
    report_run,
)

# --- options shared by the commands that execute plans -------------------------------------------


def tool_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--mcp-prefix", is_flag=True, help="Name MCP servers' tools SERVER_TOOL (when names clash with other tools)."
    )(fn)
    fn = click.option(
        "--mcp-url", "mcp_urls", multiple=True, metavar="URL", help="Take the tools of the MCP server at this streamable-HTTP address (repeatable)."
    )(fn)
    fn = click.option(
        "--mcp", "mcp_commands", multiple=True, metavar="'COMMAND ARGS'", help="Start this MCP server (stdio) and take its tools (repeatable)."
    )(fn)
    fn = click.option(
        "--no-builtins", is_flag=True, help="Leave out the built-in tools (a plugin may then define its own)."
    )(fn)
    return click.option(
        "--plugin",
        "plugins",
        multiple=True,
        type=click.Path(dir_okay=False),
        help="A Python file whose @tool functions are registered (repeatable).",
    )(fn)


def store_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store",
        "store_path",
        envvar="PLANVM_STORE",
        help="Run store: an SQLite file or sqlite:///path, postgresql://…, mysql://… (MariaDB, TiDB) "
        "(default: $PLANVM_HOME/runs.sqlite, or runs.sqlite in the user data folder).",
    )(fn)


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Budgets, concurrency and output format for commands that execute a plan."""
    for option in reversed(
        [
            click.option("--max-steps", type=click.IntRange(min=1), envvar="PLANVM_MAX_STEPS", help="Step budget (default 1000)."),
            click.option(
                "--max-seconds",
                type=click.FloatRange(min=0, min_open=True),
                envvar="PLANVM_MAX_SECONDS",
                help="Wall-clock budget in seconds (default 600).",
            ),
            click.option(
                "--max-value-bytes",
                type=click.IntRange(min=1024),
                envvar="PLANVM_MAX_VALUE_BYTES",
                help="Largest value a step may produce, as JSON text (default 4 MiB).",
            ),
            click.option(
                "--max-plan-bytes",
                type=click.IntRange(min=1024),
                envvar="PLANVM_MAX_PLAN_BYTES",
                help="Largest plan file (default 32 MiB).",
            ),
            click.option(
                "--max-tokens",
                type=click.IntRange(min=1),
                envvar="PLANVM_MAX_TOKENS",
                help="Token budget of a run's LLM exchanges, prompt and completion (default: none).",
            ),
            click.option("--allow-tool", "allow_tools", multiple=True, help="Limit the run to these tools (repeatable)."),
            click.option(
                "--approve-tool",
                "approve_tools",
                multiple=True,
                help="Calls to this tool wait for `planvm approve` before they run (repeatable).",
            ),
            click.option(
                "--concurrency",
                type=click.IntRange(min=1),
                default=8,
                show_default=True,
                envvar="PLANVM_CONCURRENCY",
                help="Tool calls that may overlap when steps are independent (1: one step at a time).",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print one JSON object: run_id, status, final_answer, variables, steps, error."),
        ]
    ):
        fn = option(fn)
    return fn


def kb_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--kb",
        "kb_path",
        type=click.Path(file_okay=False),
        help="Knowledge-base folder (default: PLANVM_KB, planvm.toml, or $PLANVM_HOME/kb).",
    )(fn)


def load_settings(options: dict[str, Any]) -> Any:
    """Settings from planvm.toml and PLANVM_* variables, with the command's flags on top."""
    from pydantic import ValidationError

    from tools.settings import Settings
    from vm import BackendUnavailable

    flags = {"kb": options["kb_path"]} if options.get("kb_path") else {}
    try:
        return Settings(**flags)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BackendUnavailable(f"the settings (PLANVM_* variables or planvm.toml) are not valid: {problems}") from None


def make_registry_for(options: dict[str, Any], settings: Any) -> Any:
    """The built-in tools (unless --no-builtins) plus every --plugin's tools."""
    from tools import ToolRegistry, load_plugin
    from tools.backends import make_registry

    registry = ToolRegistry() if options.get("no_builtins") else make_registry(settings)
    for path in options.get("plugins", ()):
        for t in load_plugin(path):
            registry.register(t)
    commands, urls, tables = options.get("mcp_commands") or (), options.get("mcp_urls") or (), settings.mcp
    if commands or urls or tables:
        from tools.mcp_tools import add_mcp_tools, parse_specs

        add_mcp_tools(registry, parse_specs(commands, urls, tables, prefix=bool(options.get("mcp_prefix"))))
    return registry


def make_engine(options: dict[str, Any], *, record: bool = True) -> Any:
    """The engine (tools, store, model roles, limits) the command-line options describe, its VM
    printing progress on a terminal (raises PlanVMError for unusable input)."""
    from planvm.engine import Engine

    engine = Engine(options, record=record, notify=lambda message: echo_err(f"note: {message}"))
    engine.vm.on_step = progress_printer() if sys.stderr.isatty() else None
    engine.vm.on_start = announce_run
    return engine


def make_vm(options: dict[str, Any], *, record: bool = True) -> Any:
    """The VM the command-line options describe."""
    return make_engine(options, record=record).vm


def executes(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command that returns a RunResult; render it; turn planvm errors into exit code 2."""

    @functools.wraps(fn)
    def wrapper(**options: Any) -> None:
        from vm import PlanValidationError, PlanVMError

        as_json = options.get("as_json", False)
        try:
            result = fn(**options)
        except PlanValidationError as exc:
            if as_json:
                print_json({"status": "invalid", "error": str(exc), "problems": [str(p) for p in exc.problems]})
            else:
                echo_err("error: the plan is not valid:")
                for problem in exc.problems:
                    echo_err(f"  {problem}")
            sys.exit(EXIT_UNUSABLE)
        except (PlanVMError, ValueError) as exc:
            if as_json:
                print_json({"status": "invalid", "error": str(exc)})
            else:
                echo_err(f"error: {exc}")
            sys.exit(EXIT_UNUSABLE)
        exit_now(report_run(result, as_json))

    return wrapper


# --- commands ----------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120, "terminal_width": 120})
@click.version_option(package_name="planvm")
def cli() -> None:
    """planvm: plan with an LLM, execute the plan in a validated VM."""
    from planvm.render import note_threads

    note_threads()


@cli.command()
def schema() -> None:
    """Print the JSON Schema of a plan."""
    from vm import plan_json_schema

    click.echo(json.dumps(plan_json_schema(), indent=2))


@cli.command()
@click.argument("plan_file", type=click.Path(dir_okay=False))
@tool_options
def validate(plan_file: str, **options: Any) -> None:
    """Check PLAN_FILE without running it; list every problem, one per line."""
    from vm import PlanVMError, validate_plan

    try:
        registry = make_registry_for(options, load_settings(options))
    except (PlanVMError, ValueError) as exc:
        echo_err(f"error: {exc}")
        sys.exit(EXIT_UNUSABLE)
    try:
        _program, problems = validate_plan(plan_file, registry)
    except PlanVMError as exc:
        echo_err(f"error: {exc}")
        sys.exit(EXIT_UNUSABLE)
    finally:
        registry.close()
    if problems:
        for problem in problems:
            click.echo(str(problem))
        sys.exit(EXIT_FAILED)
    click.echo("valid")


@cli.command(name="exec")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@tool_options
@kb_option
@store_option
@click.option("--no-store", is_flag=True, help="Do not record the run.")
@click.option("--queue", is_flag=True, help="Only validate and store the run as queued for `planvm worker`; print its id.")
@run_options
@executes
def exec_(plan_file: str, no_store: bool, queue: bool, **options: Any) -> Any:
    """Validate and run PLAN_FILE; print its final answer (and, on stderr, the run id)."""
    if queue:
        if no_store:
            raise ValueError("--queue stores the run for a worker; it cannot go with --no-store")
        from vm import load_plan_data

        with make_engine(options) as engine:
            plan = load_plan_data(plan_file, max_bytes=engine.limits.max_plan_bytes)
            run_id = engine.enqueue(None, metadata={"plan_file": plan_file}, plan=plan)
        print_queued(run_id, options.get("as_json", False))
        sys.exit(0)
    with make_vm(options, record=not no_store) as vm:
        return vm.run(plan_file, metadata={"plan_file": plan_file})


def print_queued(run_id: str, as_json: bool) -> None:
    if as_json:
        print_json({"run_id": run_id, "status": "queued"})
    else:
        click.echo(run_id)
        echo_err("queued: a `planvm worker` on this store will run it")


@cli.command()
@click.argument("run_id")
@tool_options
@kb_option
@store_option
@run_options
@executes
def resume(run_id: str, **options: Any) -> Any:
    """Continue RUN_ID (killed or failed) from its last completed step, with the same tools."""
    with make_vm(options) as vm:
        return vm.resume(run_id)


@cli.command()
@click.argument("run_id")
@click.option("--from", "from_seq", type=int, required=True, help="The seq_no the new run continues from.")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False), help="The new plan (JSON).")
@click.option("--suggestion", help="Instead of --plan: ask the planner (the configured LLM) to change the plan from --from on.")
@tool_options
@kb_option
@store_option
@run_options
@executes
def fork(run_id: str, from_seq: int, plan_file: str | None, suggestion: str | None, **options: Any) -> Any:
    """Start a new run from RUN_ID's steps before --from, continuing with --plan (or a re-plan)."""
    if (plan_file is None) == (suggestion is None):
        raise ValueError("give either --plan FILE or --suggestion TEXT")
    with make_engine(options) as engine:
        if suggestion is not None:
            replanned = engine.replan(run_id, from_seq, suggestion)
            return engine.vm.fork(run_id, from_seq, replanned.plan, planning={**replanned.record(), "suggestion": suggestion})
        return engine.vm.fork(run_id, from_seq, plan_file)


@cli.command()
@click.argument("run_id")
@click.option("--seq", "seq_no", type=int, required=True, help="The seq_no of the call the run waits for.")
@click.option("--reject", is_flag=True, help="Reject the call: the step fails with ToolRejected.")
@click.option("--params", "tool_params", help="Run the call with these parameters instead (a JSON object).")
@click.option("--reason", help="Why the call is rejected (kept with the run).")
@tool_options
@kb_option
@store_option
@run_options
@executes
def approve(run_id: str, seq_no: int, reject: bool, tool_params: str | None, reason: str | None, **options: Any) -> Any:
    """Approve (or --reject) the tool call RUN_ID waits for, and continue the run."""
    params = None
    if tool_params is not None:
        try:
            params = json.loads(tool_params)
        except ValueError:
            raise ValueError("--params is not JSON; give the tool's parameters as a JSON object") from None
        if not isinstance(params, dict):
            raise ValueError("--params must be a JSON object of the tool's parameters")
    with make_vm(options) as vm:
        return vm.approve(run_id, seq_no, not reject, tool_params=params, reason=reason)


def _quiet_third_parties() -> None:
    """planvm's output is planvm's: other libraries' deprecation notices and info logs stay out."""
    import os
    import warnings

    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!vm|tools|planner|training|planvm)")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_cli() -> click.Group:
    """The ``planvm`` command with every subcommand added."""
    from planvm.improve_cli import judge, library, optimize
    from planvm.kb_cli import index, kg, search
    from planvm.mcp_cli import mcp_command
    from planvm.plan_cli import plan, run
    from planvm.runs_cli import replay, runs, store_group
    from planvm.serve_cli import serve
    from planvm.train_cli import datagen, eval_, tiny_model, train
    from planvm.worker_cli import worker

    for command in (plan, run, runs, store_group, replay, serve, worker, index, kg, search, train, eval_, datagen, tiny_model,
                    judge, optimize, library, mcp_command):
        cli.add_command(command)
    return cli


_INTERRUPTED = threading.Event()
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C
INTERRUPT_GRACE_SECONDS = 1.0


def _on_interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C: stop as Python does (KeyboardInterrupt: a run in progress is stored as
    interrupted), and be gone within a second even if a model call holds a thread."""
    if not _INTERRUPTED.is_set():
        _INTERRUPTED.set()

        def gone() -> None:
            time.sleep(INTERRUPT_GRACE_SECONDS)
            sys.stderr.write("interrupted\n")
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)

        threading.Thread(target=gone, name="planvm-interrupt", daemon=True).start()
    signal.default_int_handler(signum, frame)


def main() -> None:
    from vm.redact import mask_log_records

    _quiet_third_parties()
    mask_log_records()  # keys never reach a log line, a traceback included
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_interrupt)
    try:
        build_cli()(prog_name="planvm")
    except SystemExit:
        if _INTERRUPTED.is_set():  # not the generic "Aborted!" exit 1, and no wait for a model call's thread
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        raise

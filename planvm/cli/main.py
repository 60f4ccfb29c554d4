"""``planvm``: the command group. Each subcommand's module is imported only when that subcommand
runs (``planvm --help`` imports none of them).

Exit codes: 0 success; 1 the plan is invalid (``validate``), the run failed, a replay did not
reproduce its record, or an unexpected error (a bug: one line with an error id); 2 unusable input
(a missing file, text that is not JSON, a plan that cannot run, a bad plugin, an unusable run
store or run id); 3 the run waits for an approval; 130 interrupted by Ctrl-C (a run in progress
is stored as interrupted: resume it).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
from typing import Any

import click

# name: (module:attribute, one-line help shown by `planvm --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("planvm.cli.plan:run", "Plan GOAL, run the plan, and print the answer."),
    "plan": ("planvm.cli.plan:plan", "Write a plan for GOAL and print the planner's reasoning and the plan."),
    "exec": ("planvm.cli.commands:exec_", "Validate and run PLAN_FILE; print its final answer."),
    "validate": ("planvm.cli.commands:validate", "Check PLAN_FILE without running it; list every problem."),
    "schema": ("planvm.cli.commands:schema", "Print the JSON Schema of a plan."),
    "resume": ("planvm.cli.commands:resume", "Continue RUN_ID (killed or failed) from its last completed step."),
    "fork": ("planvm.cli.commands:fork", "Start a new run from RUN_ID's steps before --from, with a new plan."),
    "approve": ("planvm.cli.commands:approve", "Approve (or --reject) the tool call RUN_ID waits for."),
    "replay": ("planvm.cli.runs:replay", "Re-execute a recorded run from its record and compare every step."),
    "runs": ("planvm.cli.runs:runs", "List, show, export, import, cancel and delete recorded runs."),
    "store": ("planvm.cli.runs:store_group", "Manage the run store (schema upgrades)."),
    "config": ("planvm.cli.commands:config", "Print the resolved configuration and where each value came from."),
    "serve": ("planvm.cli.serve:serve", "Serve planvm over HTTP (API, event streams, a page at /)."),
    "worker": ("planvm.cli.worker:worker", "Run queued runs from a shared store until stopped."),
    "mcp": ("planvm.cli.mcp:mcp_command", "Serve planvm to MCP clients (stdio or streamable HTTP)."),
    "index": ("planvm.cli.kb:index", "Build the knowledge base from a folder of documents."),
    "kg": ("planvm.cli.kb:kg", "Build or import the knowledge graph."),
    "search": ("planvm.cli.kb:search", "Search the knowledge base."),
    "judge": ("planvm.cli.improve:judge", "Grade runs' answers with the judge model."),
    "optimize": ("planvm.cli.improve:optimize", "Search for a better plan by forking a run with the judge's suggestions."),
    "library": ("planvm.cli.improve:library", "The plan library: kept best plans."),
    "train": ("planvm.cli.train:train", "Fine-tune the planner with LoRA."),
    "eval": ("planvm.cli.train:eval_", "Evaluate a planner on a dataset."),
    "datagen": ("planvm.cli.train:datagen", "Generate training rows from documents."),
    "tiny-model": ("planvm.cli.train:tiny_model", "Build a tiny model to try training offline."),
}


NAMESPACE_HELP = ("The namespace to work in: its runs, tools, knowledge base, models and limits ([namespaces.NAME] in "
                  "planvm.toml; PLANVM_NAMESPACE; default: default).")


def _chose_namespace(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--namespace NAME`` (before the command's name or after it): kept for the engine the
    command builds (see :func:`planvm.cli.common.namespaced`); a namespace that is not declared is
    one line and exit code 2, whatever the command."""
    if value is None:
        return value
    chosen = ctx.meta.get(NAMESPACE_KEY)
    if chosen is not None and chosen != value:
        raise click.UsageError(f"--namespace is given twice ({chosen}, {value}); give one")
    if chosen is None:
        from planvm.cli.render import EXIT_UNUSABLE, echo_err
        from planvm.engine import EngineConfig
        from vm import PlanVMError

        try:
            EngineConfig.load({"namespace": value})
        except PlanVMError as exc:
            echo_err(f"error: {exc}")
            ctx.exit(EXIT_UNUSABLE)
    ctx.meta[NAMESPACE_KEY] = value
    return value


#: Where --namespace is kept in the command line's context (shared by a group and its commands).
NAMESPACE_KEY = "planvm.namespace"


def namespace_option() -> click.Option:
    return click.Option(["--namespace"], metavar="NAME", expose_value=False, callback=_chose_namespace,
                        help=NAMESPACE_HELP)


def _with_namespace_option(command: click.Command) -> click.Command:
    """``command`` (and a group's commands) taking ``--namespace`` unless it has an option of its own by that name."""
    if not any(p.name == "namespace" for p in command.params):
        command.params.append(namespace_option())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_namespace_option(sub)
    return command


class LazyGroup(click.Group):
    """A group whose subcommands are imported when one is run (or its help shown); each takes the
    global ``--namespace`` after its name too."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = COMMANDS.get(cmd_name)
        if found is None:
            return None
        module, _, attribute = found[0].partition(":")
        return _with_namespace_option(getattr(importlib.import_module(module), attribute))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120, "terminal_width": 120})
@click.version_option(package_name="planvm")
@click.option("--namespace", metavar="NAME", expose_value=False, callback=_chose_namespace, help=NAMESPACE_HELP)
def cli() -> None:
    """planvm: plan with an LLM, execute the plan in a validated VM."""
    from planvm.cli.render import note_threads

    note_threads()


def build_cli() -> click.Group:
    """The ``planvm`` command (its subcommands load when used)."""
    return cli


def _quiet_third_parties() -> None:
    """planvm's output is planvm's: other libraries' deprecation notices and info logs stay out."""
    import os
    import warnings

    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!vm|tools|planner|training|planvm)")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
    from planvm.cli.render import standalone
    from vm.redact import mask_log_records

    standalone()
    _quiet_third_parties()
    mask_log_records()  # keys never reach a log line, a traceback included
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_interrupt)
    try:
        cli(prog_name="planvm")
    except SystemExit:
        if _INTERRUPTED.is_set():  # not the generic "Aborted!" exit 1, and no wait for a model call's thread
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        raise

"""What the commands share: the engine their options describe, and one error boundary.

The boundary: planvm's own errors (bad input, an unusable store, a plan that cannot run) are one
line on stderr and exit code 2 (``{"status": "invalid", "error": …}`` with ``--json``); any other
exception is a bug: exit 1 with one line naming an error id, its traceback kept in
``errors.log`` beside the run store.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import click

from planvm.cli.render import (
    EXIT_FAILED,
    EXIT_UNUSABLE,
    announce_run,
    echo_err,
    exit_now,
    print_json,
    progress_printer,
    report_run,
)

__all__ = ["executes", "guarded", "load_settings", "make_engine", "namespaced", "print_queued", "reader", "store_location", "with_run_tools"]


def namespaced(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the namespace given as ``--namespace`` (before or after the command's
    name) unless they name one; without it, ``PLANVM_NAMESPACE`` or ``default`` applies through the
    settings."""
    from planvm.cli.main import NAMESPACE_KEY

    ctx = click.get_current_context(silent=True)
    chosen = ctx.meta.get(NAMESPACE_KEY) if ctx is not None else None
    if chosen is None or options.get("namespace"):
        return options
    return {**options, "namespace": chosen}


def make_engine(options: dict[str, Any], *, record: bool = True, quiet: bool = False, readonly: bool = False,
                role: str = "local") -> Any:
    """The engine the command's options describe (over ``PLANVM_*`` and planvm.toml), printing
    progress on a terminal (``quiet``: printing nothing per run or step, for commands whose output
    is a protocol, a service or a log). ``readonly``: it only reads the run store (builds no
    tools, models or VM); ``role``: ``service`` or ``worker`` (see :class:`planvm.engine.Engine`)."""
    from planvm.engine import Engine

    progress = {} if quiet or readonly else {"on_step": progress_printer() if sys.stderr.isatty() else None, "on_start": announce_run}
    return Engine(namespaced(options), record=record, readonly=readonly, role=role, notify=lambda message: echo_err(f"note: {message}"), **progress)


def reader(store_path: str | None) -> Any:
    """An engine that only reads the run store (``--store``, else the configured one): cheap, and
    it works on a store in a read-only folder."""
    return make_engine({"store_path": store_path}, readonly=True)


def print_queued(run_id: str, as_json: bool) -> None:
    if as_json:
        print_json({"run_id": run_id, "status": "queued"})
    else:
        click.echo(run_id)
        echo_err("queued: a `planvm worker` on this store will run it")


def _keep_traceback(exc: BaseException) -> tuple[str, str | None]:
    """An id for an unexpected error, and the file its traceback was appended to (None when it could not be written)."""
    import time
    import traceback

    from vm.redact import redact
    from vm.store import default_store_path

    from planvm.engine.errors import new_error_id

    error_id = new_error_id()
    path = default_store_path().parent / "errors.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} error {error_id}: planvm {' '.join(sys.argv[1:])}\n")
            log.write(redact("".join(traceback.format_exception(exc))))
        return error_id, str(path)
    except OSError:
        return error_id, None


def grouped_problems(problems: Any) -> list[str]:
    """One line per problem: the same problem at several steps is one line naming them all."""
    by_message: dict[str, list[Any]] = {}
    for problem in problems:
        by_message.setdefault(problem.message, []).append(problem.seq_no)
    lines = []
    for message, seqs in by_message.items():
        where = [str(s) for s in seqs if s is not None]
        lines.append((f"seq_no {', '.join(where)}" if where else "plan") + f": {message}")
    return lines


def fail(exc: BaseException, as_json: bool) -> None:
    """The one error boundary of the command line (see the module's docstring)."""
    from vm import PlanValidationError

    if isinstance(exc, PlanValidationError):
        if as_json:
            print_json({"status": "invalid", "error": str(exc), "problems": [str(p) for p in exc.problems]})
        else:
            echo_err("error: the plan is not valid:")
            for line in grouped_problems(exc.problems):
                echo_err(f"  {line}")
            if any(p.code == "unknown_tool" for p in exc.problems):
                echo_err("  (pass the tools it calls with --plugin or --mcp; going on with a stored run, leave every tool option "
                         "out to take the tools it was started with)")
        sys.exit(EXIT_UNUSABLE)
    from planvm.engine.errors import answer_for

    answer = answer_for(exc)
    if not answer.bug:
        if as_json:
            print_json({"status": "invalid", "error": str(exc)})
        else:
            echo_err(f"error: {exc}")
        sys.exit(answer.exit)
    from vm.redact import redact

    error_id, kept = _keep_traceback(exc)
    where = f"; its traceback is in {kept}" if kept else ""
    message = f"unexpected {type(exc).__name__}: {redact(str(exc))} (error id {error_id}{where}); please report it"
    if as_json:
        print_json({"status": "error", "error": message, "error_id": error_id})
    else:
        echo_err(f"error: {message}")
    sys.exit(EXIT_FAILED)


def guarded(fn: Any) -> Any:
    """Run a command inside the error boundary."""
    import logging

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            fail(exc, bool(kwargs.get("as_json")))

    return wrapper


def executes(fn: Any) -> Any:
    """A command that returns a RunResult: rendered, inside the error boundary."""

    @functools.wraps(fn)
    def wrapper(**options: Any) -> None:
        result = guarded(fn)(**options)
        exit_now(report_run(result, options.get("as_json", False)))

    return wrapper


def load_settings(options: dict[str, Any]) -> Any:
    """The configuration (model roles, knowledge base…) the command's options describe."""
    from planvm.engine import EngineConfig

    return EngineConfig.load(namespaced(options))


def store_location(store_path: str | None) -> str | None:
    """The run store a command uses: --store, else PLANVM_STORE, else planvm.toml's ``store``, else the default (None)."""
    if store_path:
        return store_path
    from planvm.engine import EngineConfig

    return EngineConfig.load(namespaced({})).store


def with_run_tools(run_id: str, options: dict[str, Any]) -> dict[str, Any]:
    """A command's options for going on with ``run_id``: the tools the run was started with
    unless the command names tools itself (see :func:`planvm.engine.options_for_run`)."""
    from planvm.engine import options_for_run
    from vm.store import store_missing

    if store_missing(store_location(options.get("store_path"))):
        return options
    with reader(options.get("store_path")) as engine:
        run = engine.stored(run_id, steps=False)
    return options_for_run(options, run)


def service_token(given: str | None, options: dict[str, Any], setting: str) -> str | None:
    """A service's bearer token: its --token flag, else the ``setting`` (``serve_token`` or
    ``mcp_token``: PLANVM_SERVE_TOKEN, PLANVM_MCP_TOKEN, planvm.toml). A blank one is refused."""
    from planvm.engine import EngineConfig
    from vm import BadInput

    if given is None:
        kept = getattr(EngineConfig.load(namespaced(options)), setting)
        given = kept.get_secret_value() if kept is not None else None
    if given is not None and not given.strip():
        raise BadInput(f"the token is blank (--token or PLANVM_{setting.upper()}); give a real secret, or none on a loopback address")
    return given

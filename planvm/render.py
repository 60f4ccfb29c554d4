"""What the command line prints: final answers, progress lines, tables, JSON."""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import click

EXIT_FAILED = 1
EXIT_UNUSABLE = 2


def echo_err(message: str) -> None:
    click.echo(message, err=True)


def as_text(value: Any) -> str:
    from vm.values import render_text

    return render_text(value)


def print_json(data: Any) -> None:
    from pydantic_core import to_jsonable_python

    click.echo(json.dumps(data, ensure_ascii=False, default=to_jsonable_python))


def preview(value: Any, limit: int = 60) -> str:
    from vm.values import shorten

    return shorten(value, limit)


def progress_printer() -> Any:
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False)

    def show(record: Any) -> None:
        tool = f" {record.tool}" if record.tool else ""
        status = "[red]failed[/red]" if record.error else "[green]ok[/green]"
        shown = escape(preview(dict(record.outputs), 60)) if record.outputs else ""
        console.print(f"seq_no {record.seq_no:>3}  {record.type}{tool}  {record.duration_s * 1000:.1f} ms  {status}  {shown}")

    return show


def report_run(result: Any, as_json: bool) -> int:
    """Print a run's outcome; return the exit code."""
    if as_json:
        print_json(result.to_dict())
    else:
        if result.ok:
            click.echo(as_text(result.final_answer))
        else:
            echo_err(f"error: {result.error}")
            cause = result.error.__cause__ if result.error else None
            if cause is not None:
                echo_err(f"  caused by {type(cause).__name__}: {cause}")
        if result.run_id:
            echo_err(f"run_id: {result.run_id}")
    from tools.llm_extractive import NO_MODEL_NOTICE

    if any(call.get("reasoning") == NO_MODEL_NOTICE for step in result.trace for call in step.llm_calls):
        echo_err(f"note: {NO_MODEL_NOTICE}")
    return 0 if result.ok else EXIT_FAILED


def guarded(fn: Any) -> Any:
    """Turn planvm errors (and ValueError from bad options) into one line on stderr and exit code 2;
    with ``--json`` the line is ``{"status": "invalid", "error": ...}`` on stdout."""
    import functools
    import logging

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from vm import PlanVMError

        logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
        try:
            return fn(*args, **kwargs)
        except (PlanVMError, ValueError) as exc:
            if kwargs.get("as_json"):
                print_json({"status": "invalid", "error": str(exc)})
            else:
                echo_err(f"error: {exc}")
            sys.exit(EXIT_UNUSABLE)

    return wrapper


def exit_now(code: int) -> None:
    """Exit, even if a sync tool cut off by the time budget is still running in its thread
    (Python would otherwise wait for it at exit)."""
    if any(t.name.startswith("planvm-tool") and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)

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
EXIT_WAITING = 3


def echo_err(message: str) -> None:
    """One line on stderr, with credentials masked (see vm.redact)."""
    from vm.redact import redact

    click.echo(redact(message), err=True)


def as_text(value: Any) -> str:
    from vm.values import render_text

    return render_text(value)


def print_json(data: Any) -> None:
    """One JSON document on stdout: always valid JSON (NaN and infinities are written as text),
    credentials masked in every string at any depth."""
    from vm.jsonsafe import ValueLimitError, storable
    from vm.redact import redact_all

    try:
        data = storable(data)
    except ValueLimitError:
        pass  # an object with no JSON form: written with str() below
    click.echo(json.dumps(redact_all(data), ensure_ascii=False, default=str))


def preview(value: Any, limit: int = 60) -> str:
    from vm.values import shorten

    return shorten(value, limit)


_announced: set[str] = set()


def announce_run(run_id: str) -> None:
    """Print a run's id on stderr when it starts, so a killed run can be resumed without a search."""
    _announced.add(run_id)
    echo_err(f"run_id: {run_id}")


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
    """Print a run's outcome; return the exit code (0 done, 1 failed, 3 waiting for an approval).

    Answers of the extractive baseline say so: in ``--json``, ``"model_used": false`` and
    ``"answer_found"`` (false when the knowledge base held nothing close to the question).
    """
    from planvm.engine.shapes import RunOutcome
    from tools.llm_extractive import NO_MODEL_NOTICE

    extracted = [call for step in result.trace for call in step.llm_calls if call.get("reasoning") == NO_MODEL_NOTICE]
    if as_json:
        print_json(RunOutcome.from_result(result).dump())
    else:
        if result.status == "waiting":
            pending = result.pending or {}
            echo_err(
                f"waiting: the call to tool '{pending.get('tool')}' at seq_no {pending.get('seq_no')} needs approval, with "
                f"parameters {preview(pending.get('tool_params'), 200)}\n  approve it: planvm approve {result.run_id} --seq "
                f"{pending.get('seq_no')}   (or --reject)"
            )
        elif result.ok:
            click.echo(as_text(result.final_answer))
        elif result.status == "cancelled":
            echo_err("cancelled: the run was cancelled (by `planvm runs cancel` or the service) and stopped; fork it to go on")
        else:
            echo_err(f"error: {result.error}")
            cause = result.error.__cause__ if result.error else None
            if cause is not None and str(cause) not in str(result.error):
                echo_err(f"  caused by {type(cause).__name__}: {cause}")
        if result.run_id and result.run_id not in _announced:
            echo_err(f"run_id: {result.run_id}")
    if extracted:
        echo_err(f"note: {NO_MODEL_NOTICE}")
    if result.status == "waiting":
        return EXIT_WAITING
    return 0 if result.ok else EXIT_FAILED


_BEFORE: set[int] = set()  # threads alive when the command began (an embedding process's own)


def note_threads() -> None:
    """Remember the threads alive as a command begins: :func:`exit_now` leaves those alone."""
    _BEFORE.clear()
    _BEFORE.update(t.ident for t in threading.enumerate() if t.ident is not None)


_STANDALONE = [False]  # set by planvm.cli.main.main: this process is the `planvm` command itself


def standalone() -> None:
    """Say that this process is the ``planvm`` command (not a program running its click group in
    process, such as a test runner or an application): :func:`exit_now` may then end it at once."""
    _STANDALONE[0] = True


def exit_now(code: int) -> None:
    """Exit when the run has ended, even if a thread is still running: a sync tool cut off by the
    time budget, or a thread a tool started and left behind (Python would wait for it at exit).
    Only in the ``planvm`` command itself (:func:`standalone`), and only for threads that began
    during this command: a process that runs planvm's click group in process, such as a test
    runner or an application, is never ended this way."""
    main = threading.main_thread()
    if _STANDALONE[0] and any(t is not main and t.is_alive() and t.ident not in _BEFORE and (not t.daemon or t.name.startswith("planvm-tool"))
           for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)

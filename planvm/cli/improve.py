"""``planvm judge``, ``planvm optimize`` and ``planvm library``: runs that make the planner better."""

from __future__ import annotations

import sys
from typing import Any

import click

from planvm.cli.common import guarded, make_engine, reader
from planvm.cli.options import engine_options, kb_option, store_option
from planvm.cli.render import EXIT_FAILED, echo_err, preview, print_json

_TOOL_DEFAULTS = {"plugins": (), "no_builtins": False, "kb_path": None}  # judging needs no tools of its own


@click.command()
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN_ID...")
@kb_option
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print {run_id: judgement or {error}} as JSON.")
@guarded
def judge(run_ids: tuple[str, ...], kb_path: str | None, store_path: str | None, as_json: bool) -> None:
    """Grade runs' answers with the judge model and keep the grades.

    Each grade: score 0-10, accept, a suggestion and notes on steps. Exit code 1 when a run could not be judged (it is named, with why); the others are still judged.
    """
    from planner.judge import JudgeError
    from vm.errors import RunNotFound

    results: dict[str, Any] = {}
    with make_engine({**_TOOL_DEFAULTS, "kb_path": kb_path, "store_path": store_path}) as engine:
        for run_id in run_ids:
            try:
                results[run_id] = engine.judge(run_id)
            except (JudgeError, RunNotFound) as exc:
                results[run_id] = {"error": str(exc)}
    failed = [r for r, j in results.items() if "error" in j]
    if as_json:
        print_json(results)
    else:
        for run_id, j in results.items():
            if "error" in j:
                echo_err(f"error: {j['error']}")
                continue
            verdict = "accepted" if j["accept"] else "not accepted"
            click.echo(f"{run_id}: score {j['score']:g}/10, {verdict}" + (f"; suggestion: {j['suggestion']}" if j["suggestion"] else ""))
            for n in j["step_notes"]:
                click.echo(f"  seq_no {n['seq_no']}: {n['note']}")
    if failed:
        sys.exit(EXIT_FAILED)


@click.command()
@click.argument("run_id")
@click.option("--rounds", type=int, default=3, show_default=True, help="Runs to expand at most (each: re-plan, run and judge --width branches).")
@click.option("--width", type=int, default=2, show_default=True, help="Branches per round.")
@engine_options
@click.option("--json", "as_json", is_flag=True, help="Print the search as JSON.")
@guarded
def optimize(run_id: str, rounds: int, width: int, as_json: bool, **options: Any) -> None:
    """Search forks of RUN_ID for an answer the judge accepts.

    Judge the run, re-plan it from the step the judge points at with its suggestion, run and judge
    the branches, expand the best, and so on. Stops when a run is accepted or the rounds are spent. Every branch stays in the store (see
    `planvm runs show RUN_ID`); the best is marked. Exit code 1 when no run was accepted.
    """
    from planvm.improve import optimize as search

    with make_engine(options) as engine:
        report = search(engine, run_id, rounds=rounds, width=width, progress=None if as_json else echo_err)
    if as_json:
        print_json(report.to_dict())
    else:
        for b in report.branches:
            what = f"score {b.score:g}" + (" (accepted)" if b.accept else "") if b.score is not None else (b.error or b.status)
            click.echo(f"round {b.round}: {b.run_id or '-'} from {b.parent_id} @ seq_no {b.from_seq}: {b.status}, {preview(what, 100)}")
        t = report.tokens
        click.echo(
            f"best: {report.best} (score {report.best_score:g}{', accepted' if report.accepted else ', not accepted'}) after "
            f"{report.rounds} round(s), {len(report.branches)} branch(es); tokens spent {t['prompt_tokens']:,} + "
            f"{t['completion_tokens']:,} (prompt + completion)"
        )
    if not report.accepted:
        sys.exit(EXIT_FAILED)


@click.group()
def library() -> None:
    """The plan library: best plans reused for the same goal and shown as examples for similar ones."""


@library.command(name="list")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@guarded
def library_list(store_path: str | None, as_json: bool) -> None:
    """Every kept best plan: id, goal, language, label, tools, score, the run it came from."""
    with reader(store_path) as engine:
        entries = engine.library_entries()
    if as_json:
        print_json(entries)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Column, Table

    table = Table(Column("id", no_wrap=True), "goal", "language", "label", "tools", "score", Column("run", no_wrap=True))
    for e in entries:
        table.add_row(e["id"], escape(preview(e["goal"], 50)), e.get("language") or "", escape(e.get("label") or ""),
                      ", ".join(e.get("tools") or ()), "" if e.get("score") is None else f"{e['score']:g}", e.get("run_id") or "")
    Console(width=max(Console().width, 120)).print(table)
    if not entries:
        click.echo("the library is empty; keep a run's plan with `planvm runs best RUN_ID`")


@library.command(name="remove")
@click.argument("entry_id")
@store_option
@guarded
def library_remove(entry_id: str, store_path: str | None) -> None:
    """Remove a best plan (ENTRY_ID from `planvm library list`, or a unique prefix of it)."""
    with make_engine({"store_path": store_path}, quiet=True) as engine:
        removed = engine.library_remove(entry_id)
    click.echo(f"removed best plan {removed}")

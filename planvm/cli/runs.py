"""``planvm runs …`` (list, show, export, import, best, cancel, delete) and ``planvm replay``: reading the run store."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

import click

from planvm.cli.common import guarded, make_engine, reader
from planvm.cli.options import store_option, tool_options
from planvm.cli.render import EXIT_FAILED, as_text, echo_err, preview, print_json


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


@click.group()
def runs() -> None:
    """List, show, export, import, cancel and delete recorded runs."""


@runs.command(name="list")
@store_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs, newest first.")
@click.option("--judged", is_flag=True, help="Only runs the judge has graded (`planvm judge`).")
@click.option("--min-score", type=click.FloatRange(0, 10), help="Only judged runs scoring at least this (0-10).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@guarded
def list_(store_path: str | None, limit: int, judged: bool, min_score: float | None, as_json: bool) -> None:
    """The newest runs: id, status, time, steps, goal, parent, judge's score."""
    with reader(store_path) as engine:
        page = engine.list_runs(limit, judged=judged, min_score=min_score)
    rows = page.dump()["runs"]  # RunSummary each (what GET /v1/runs answers)
    if as_json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Column, Table

    # Ids are never cut (any unique prefix of one is accepted wherever a run id is taken).
    table = Table(
        Column("run_id", no_wrap=True, min_width=16), Column("status", no_wrap=True, min_width=11),
        Column("created", no_wrap=True), "steps", Column("goal (or plan file)", min_width=16), Column("parent", no_wrap=True), "score", "owner (lease)",
    )
    import time

    for r in rows:
        parent = f"{r['parent_id']} @ seq_no {r['fork_seq']}" if r["parent_id"] else ""
        what = r["goal"] or (f"plan file {Path(r['plan_file']).name}" if r.get("plan_file") else "(a plan given without a goal)")
        lease = ""
        if r.get("owner"):
            left = r["lease_expires_at"] - time.time()
            lease = f"{r['owner']} ({left:.0f} s left)" if left >= 0 else f"{r['owner']} (ran out {-left:.0f} s ago)"
        score = "" if r["score"] is None else f"{r['score']:g}" + (" ✓" if r["accept"] else "") + (" best" if r["best_of"] else "")
        table.add_row(r["id"], r["status"], _when(r["created_at"]), str(r["steps"]), escape(preview(what, 40)), parent, score, lease)
    Console(width=max(Console().width, 120)).print(table)


@click.group(name="store")
def store_group() -> None:
    """Manage the run store itself."""


@store_group.command()
@store_option
@guarded
def upgrade(store_path: str | None) -> None:
    """Bring the run store's schema up to this planvm (versioned migrations; no run is lost)."""
    with reader(store_path) as engine:
        where, before, now = engine.store_upgrade()
    if before == now:
        click.echo(f"{where}: already at schema version {now}")
    else:
        click.echo(f"{where}: upgraded from schema version {before or 'none'} to {now}")


@runs.command()
@click.argument("run_id")
@store_option
@click.option("--step", type=click.IntRange(min=0), help="Also show the variables after trace position STEP (the idx column).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (what GET /v1/runs/{id} and MCP get_run answer) instead of tables.")
@click.option("--steps", "with_steps", is_flag=True, help="With --json: include the steps (trace).")
@guarded
def show(run_id: str, store_path: str | None, step: int | None, as_json: bool, with_steps: bool) -> None:
    """One run: its steps, its branch tree, and (with --step) the variables at a step."""
    from vm import BadInput

    with reader(store_path) as engine:
        try:
            detail = engine.get_run(run_id, steps=True, step=step)
        except BadInput as exc:  # (a step the run does not have)
            raise click.BadParameter(str(exc), param_hint="--step") from None
    if as_json:
        data = detail.dump()
        if not with_steps:
            data.pop("trace", None)
        print_json(data)
        return
    _show(detail, step)


def _show(run: Any, step: int | None) -> None:
    """A run's detail (a RunDetail with its trace) as tables."""
    from rich.console import Console
    from rich.table import Table
    from rich.tree import Tree

    console = Console()
    console.print(f"[bold]run {run.id}[/bold]  {run.status}  started {_when(run.created_at)}  {run.steps} steps")
    if run.goal:
        console.print(f"goal: {run.goal}")
    if run.status == "completed":
        console.print(f"final_answer: {preview(run.final_answer, 200)}")
    if run.error:
        console.print(f"[red]error:[/red] {run.error}")
    if run.status == "waiting" and run.pending:
        console.print(f"waiting: the call to '{run.pending.get('tool')}' at seq_no {run.pending.get('seq_no')} needs "
                      f"`planvm approve {run.id} --seq {run.pending.get('seq_no')}`")
    if run.judgement:
        j = run.judgement
        console.print(f"judged: score {j.get('score')}/10, {'accepted' if j.get('accept') else 'not accepted'}"
                      + (f"; suggestion: {j['suggestion']}" if j.get("suggestion") else ""))
    if run.best_of:
        console.print(f"best run of the plan search from {run.best_of}")
    tokens = run.tokens
    if tokens:
        console.print("tokens: " + ", ".join(
            f"{role} {t['prompt_tokens']:,} + {t['completion_tokens']:,}" for role, t in tokens.items()
        ) + " (prompt + completion)")
    lineage, children, run_id = run.lineage, run.children, run.id
    if len(lineage) > 1 or children:
        tree = Tree(lineage[0] + (" (this run)" if lineage[0] == run_id else ""))
        node = tree
        for ancestor in lineage[1:]:
            node = node.add(ancestor + (" (this run)" if ancestor == run_id else ""))
        for child in children:
            score = f"  score {child['score']:g}" if child.get("score") is not None else ""
            node.add(f"{child['id']}  forked at seq_no {child['fork_seq']}  {child['status']}{score}" + ("  ★ best" if child.get("best_of") else ""))
        console.print(tree)
    table = Table("idx", "seq_no", "type", "tool", "ms", "set", "error")
    for s in run.trace or ():
        table.add_row(
            str(s.index), str(s.seq_no), s.type, s.tool or "", f"{s.duration_s * 1000:.1f}",
            preview(s.outputs, 50) if s.outputs else (f"→ {s.next_seq}" if s.next_seq is not None else ""),
            preview(s.error or "", 40),
        )
    console.print(table)
    if run.variables_at_step is not None:
        vtable = Table("variable", f"value after idx {step}")
        for name, value in run.variables_at_step["variables"].items():
            vtable.add_row(name, preview(value, 100))
        console.print(vtable)


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date; write it as YYYY-MM-DD or YYYY-MM-DDTHH:MM", param_hint="--since") from None


@runs.command()
@click.argument("run_id", required=False)
@store_option
@click.option("--out", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
@click.option("--training", "training_out", type=click.Path(dir_okay=False),
              help="Instead of one run: write training rows (JSONL, the format `planvm train` reads), one per goal, from its best-scoring completed run.")
@click.option("--min-score", type=click.FloatRange(0, 10), help="With --training: only judged runs scoring at least this.")
@click.option("--best-only", is_flag=True, help="With --training: only runs kept as best plans or chosen by `planvm optimize`.")
@click.option("--since", help="With --training: only runs started on or after this date (YYYY-MM-DD).")
@click.option("--include-unjudged", is_flag=True,
              help="With --training: also runs no judge graded (left out by default; kept best plans always count).")
@tool_options
@guarded
def export(run_id: str | None, store_path: str | None, out: str | None, training_out: str | None, min_score: float | None,
           best_only: bool, since: str | None, include_unjudged: bool, **tool_opts: Any) -> None:
    """One JSON document with the run, its plan and every step (replayable with `planvm replay`),
    or with --training OUT.jsonl the training rows of every goal."""
    if training_out is not None:
        if run_id is not None or out is not None:
            raise click.UsageError("--training exports every goal's best run; give no RUN_ID or --out with it")
        _export_training(store_path, training_out, min_score, best_only, _since(since), include_unjudged, tool_opts)
        return
    if run_id is None:
        raise click.UsageError("give a RUN_ID to export (or --training OUT.jsonl for training rows)")
    if min_score is not None or best_only or since is not None or include_unjudged:
        raise click.UsageError("--min-score, --best-only, --since and --include-unjudged go with --training")
    with reader(store_path) as engine:
        data = engine.export(run_id)
    text = json.dumps(data, ensure_ascii=False, indent=2, default=as_text)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
    else:
        click.echo(text)


def _export_training(store_path: str | None, out: str, min_score: float | None, best_only: bool, since: float | None,
                     include_unjudged: bool, tool_opts: dict[str, Any]) -> None:
    from planvm.improve import write_rows

    with make_engine({**tool_opts, "store_path": store_path}, record=False, quiet=True) as engine:  # (reads; its tools check the rows)
        rows, skipped = engine.training_rows(min_score=min_score, best_only=best_only, since=since, include_unjudged=include_unjudged)
    unjudged = [run_id for run_id, why in skipped if why.startswith("not judged")]
    for run_id, why in skipped:
        if not why.startswith("not judged"):
            echo_err(f"warning: run {run_id} left out: {why}")
    if unjudged:
        echo_err(f"note: {len(unjudged)} unjudged run(s) left out; judge them with `planvm judge`, or pass --include-unjudged")
    if not rows:
        filters = ", ".join(f for f, on in (("--min-score", min_score is not None), ("--best-only", best_only), ("--since", since)) if on)
        echo_err("error: no completed run of a goal to export" + (f" with {filters}" if filters else "")
                 + f" ({len(skipped)} left out); run goals with `planvm run` (and judge them with `planvm judge`) first")
        sys.exit(EXIT_FAILED)
    write_rows(rows, out)
    click.echo(f"wrote {len(rows)} training row(s), one per goal, to {out}" + (f"; {len(skipped)} run(s) left out" if skipped else ""))


@runs.command()
@click.argument("run_id")
@store_option
@click.option("--label", help="The label path to keep the plan under (e.g. 'Docs > VM'); default: the run's metadata label_path.")
@guarded
def best(run_id: str, store_path: str | None, label: str | None) -> None:
    """Keep RUN_ID's plan as the best plan for its goal: reused for the same goal, an example for similar ones."""
    with make_engine({"store_path": store_path}, quiet=True) as engine:
        entry_id, replaced, full_id = engine.keep_best(run_id, label=label)
    click.echo(f"kept the plan of run {full_id} as best plan {entry_id}"
               + (f" (replacing {', '.join(replaced)})" if replaced else ""))


@runs.command()
@click.argument("run_id")
@store_option
@click.option("--reason", help="Kept with the run as its error (default: the one every front end keeps, 'cancelled on request').")
@guarded
def cancel(run_id: str, store_path: str | None, reason: str | None) -> None:
    """Cancel RUN_ID, wherever it executes: a planning, queued, running, waiting or interrupted run
    becomes cancelled at once, and the process executing it (a server, a worker, a `planvm run`)
    stops at its next step. An approved call that had already started is named."""
    from planvm.engine.engine import CANCELLED

    reason = reason or CANCELLED
    with make_engine({"store_path": store_path}, quiet=True) as engine:
        full_id = engine.cancel(run_id, reason)
        said = engine.stored(full_id, steps=False).error or ""
    late = said[len(reason):].strip(" ()") if said.startswith(reason) else ""
    click.echo(f"cancelled run {full_id}" + (f"; {late}" if late else ""))


@runs.command(name="delete")
@click.argument("run_id")
@store_option
@click.option("--force", is_flag=True, help="Delete even a run that may be executing (queued, planning, running or waiting).")
@guarded
def delete(run_id: str, store_path: str | None, force: bool) -> None:
    """Delete RUN_ID with its steps and every run forked from it (kept best plans stay)."""
    with make_engine({"store_path": store_path}, quiet=True) as engine:
        deleted = engine.delete(run_id, force=force)
    forks = f" and {len(deleted) - 1} fork(s): {', '.join(deleted[1:])}" if len(deleted) > 1 else ""
    click.echo(f"deleted run {deleted[0]}{forks}")


@runs.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@store_option
@guarded
def import_(file: str, store_path: str | None) -> None:
    """Store a run exported with `planvm runs export` (FILE, or - for stdin) under its own id;
    a run exported while in progress is stored as interrupted, to resume here."""
    from vm import BadInput

    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise BadInput(f"{file} is not JSON ({exc}); give the file `planvm runs export RUN_ID --out FILE` wrote") from None
    with make_engine({"store_path": store_path}, quiet=True) as engine:
        run_id = engine.import_run(document)
        status = engine.get_run(run_id).status
    click.echo(f"imported run {run_id} ({status})")


@click.command()
@click.argument("source")
@click.option("--live", is_flag=True, help="Run against the real tools and LLM and show what changed.")
@tool_options
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@guarded
def replay(source: str, live: bool, store_path: str | None, as_json: bool, **tool_opts: Any) -> None:
    """Re-execute a recorded run (RUN_ID, or a file from `planvm runs export`) and check each step.

    Offline by default: every tool and LLM reply comes from the record. Exit code 1 when a step
    did not reproduce its record.
    """
    from vm import StoredRun, StoreError
    from vm import replay as replay_offline

    path = Path(source)
    if path.suffix == ".json" or path.is_file():
        try:
            run = StoredRun.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise StoreError(f"{path}: no such file; pass a run id or a file written by `planvm runs export`") from None
        except json.JSONDecodeError as exc:
            raise StoreError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        except (OSError, UnicodeDecodeError, RecursionError) as exc:
            raise StoreError(f"{path}: cannot read this run export ({exc})") from None
    else:
        with reader(store_path) as engine:
            run = engine.stored(source)
    if live:
        from planvm.engine import options_for_run

        with make_engine({**options_for_run(tool_opts, run), "concurrency": 1}, record=False) as engine:
            report = engine.replay_live(run)
    else:
        report = replay_offline(run)
    if as_json:
        print_json(report.to_dict())
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("idx", "seq_no", "type", "reproduced", "differences")
        for check in report.checks:
            mark = "[green]yes[/green]" if check.matched else "[red]no[/red]"
            table.add_row(str(check.index), str(check.seq_no), check.type or "", mark, "\n".join(check.differences))
        console = Console()
        console.print(table)
        verdict = "every step reproduced its record" if report.ok else f"{len(report.mismatches)} step(s) differ"
        if not report.final_answer_matches:
            verdict += f"; final answer differs: {preview(report.recorded_final_answer)} -> {preview(report.result.final_answer)}"
        console.print(f"{report.mode} replay of {run.id}: {verdict}")
    sys.exit(0 if report.ok else EXIT_FAILED)

"""``planvm plan`` and ``planvm run``: from a goal to a plan, and to an answer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from planvm.cli.common import guarded, make_engine
from planvm.cli.options import (
    engine_options,
    json_option,
    metadata_option,
    no_library_option,
    planner_option,
    run_options,
)
from planvm.cli.render import EXIT_FAILED, echo_err, exit_now, print_json, report_run


def _keep_attempts(exc: Any) -> Path | None:
    """Write a failed planning's attempts next to the run store; return the file (None when
    there were none: the model server failed before answering)."""
    import uuid

    from vm.redact import redact_all
    from vm.store import default_store_path

    attempts = getattr(exc, "attempts", None)
    if not attempts:
        return None
    folder = default_store_path().parent / "failed-plans"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A random suffix: two failures in the same second keep both files.
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(redact_all([a.to_dict() for a in attempts]), ensure_ascii=False, indent=2), encoding="utf-8")
        return path
    except OSError:
        return None


def _planning_failed(exc: Any, as_json: bool) -> None:
    """A planning that failed (no valid plan, or the model server failed): exit 1, as documented."""
    kept = _keep_attempts(exc)
    run_id = getattr(exc, "run_id", None)
    if as_json:
        print_json({"run_id": run_id, "status": "planning_failed", "error": str(exc), "attempts_file": str(kept) if kept else None})
    else:
        echo_err(f"error: {exc}" + (f"\n  the attempts are in {kept}" if kept else "")
                 + (f"\n  kept as failed run {run_id} (planvm runs show {run_id})" if run_id else ""))
    exit_now(EXIT_FAILED)


@click.command()
@click.argument("goal")
@metadata_option
@planner_option
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the plan (a JSON array) to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print {reasoning, plan, planner, attempts} as JSON.")
@no_library_option
@engine_options
@guarded
def plan(goal: str, metadata: str | None, planner_kind: str | None, out: str | None, as_json: bool, **options: Any) -> None:
    """Write a plan for GOAL and print the planner's reasoning and the plan."""
    from planner.prompt import parse_metadata
    from vm import LLMError, PlanningError

    with make_engine(options, record=False) as engine:
        try:
            result = engine.plan(goal, parse_metadata(metadata), planner_kind)
        except (PlanningError, LLMError) as exc:
            _planning_failed(exc, as_json)
            return
    text = json.dumps(result.plan, ensure_ascii=False, indent=2)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
    if as_json:
        from planvm.engine.shapes import PlanView

        print_json(PlanView.of(result).dump())
        return
    click.echo(f"<think>\n{result.reasoning}\n</think>")
    click.echo(text)


@click.command()
@click.argument("goal")
@metadata_option
@planner_option
@engine_options
@click.option("--queue", is_flag=True, help="Store the goal as a queued run; a `planvm worker` plans and runs it. Prints its id.")
@no_library_option
@click.option("--stream-plan", is_flag=True, help="Start tool calls while the planner is still writing the plan (side-effecting "
              "tools and those needing approval wait for the whole, valid plan).")
@run_options
@json_option
@guarded
def run(goal: str, metadata: str | None, planner_kind: str | None, queue: bool, stream_plan: bool, **options: Any) -> None:
    """Plan GOAL, run the plan, and print the answer (the plan and run are stored for replay)."""
    import asyncio

    from planner.prompt import parse_metadata
    from vm import LLMError, PlanningError

    as_json = options.get("as_json", False)
    if queue:
        from planvm.cli.common import print_queued

        with make_engine(options) as engine:
            run_id = engine.enqueue(goal, metadata=parse_metadata(metadata))
        print_queued(run_id, as_json)
        return

    def planned(result: Any) -> None:
        if not as_json:
            echo_err(f"plan ({result.planner} planner): {len(result.plan)} steps")

    with make_engine(options) as engine:
        try:
            outcome = asyncio.run(
                engine.run_goal(goal, metadata=parse_metadata(metadata), planner_kind=planner_kind, planned=planned,
                                stream_plan=stream_plan)
            )
        except (PlanningError, LLMError) as exc:
            _planning_failed(exc, as_json)
            return
    exit_now(report_run(outcome, as_json))

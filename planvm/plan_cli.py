"""``planvm plan`` and ``planvm run``: from a goal to a plan, and to an answer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from planvm.cli import kb_option, load_settings, make_vm, run_options, store_option, tool_options
from planvm.render import EXIT_FAILED, echo_err, exit_now, guarded, print_json, report_run

planner_option = click.option(
    "--planner",
    "planner_kind",
    type=click.Choice(["auto", "llm", "template"]),
    default="auto",
    show_default=True,
    envvar="PLANVM_PLANNER",
    help="llm: the configured LLM plans; template: the canonical retrieval plan, no model; auto: llm when an LLM is configured.",
)
metadata_option = click.option("--metadata", help="Goal metadata as a JSON object (response_format, label_path...).")


def make_planner(kind: str, settings: Any, vm: Any) -> Any:
    """The planner the options ask for, over the VM's tools and LLM."""
    from planner import Planner, TemplatePlanner

    has_model = settings.chosen_llm_backend() != "extractive"
    if kind == "llm" and not has_model:
        raise ValueError("--planner llm needs an LLM: set PLANVM_LLM_BASE_URL and PLANVM_LLM_MODEL, or PLANVM_LOCAL_MODEL")
    if kind == "template" or (kind == "auto" and not has_model):
        if kind == "auto":
            echo_err("note: no LLM is configured, so the template planner writes the plan (set PLANVM_LLM_BASE_URL and PLANVM_LLM_MODEL to plan with a model)")
        return TemplatePlanner(vm.registry)
    llm = vm.llm
    if settings.chosen_llm_backend() == "local":
        try:
            import xgrammar  # noqa: F401
        except ImportError:
            echo_err("note: xgrammar is not installed, so the local model's plans are not constrained to the schema")
        else:
            from planner.constrained import ConstrainedLocal

            llm = ConstrainedLocal(llm)
    return Planner(llm, vm.registry)


def _keep_attempts(exc: Any) -> Path | None:
    """Write a failed planning's attempts next to the run store; return the file."""
    from vm.store import default_store_path

    folder = default_store_path().parent / "failed-plans"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps([a.to_dict() for a in exc.attempts], ensure_ascii=False, indent=2), encoding="utf-8")
        return path
    except OSError:
        return None


def _plan(goal: str, metadata: str | None, kind: str, options: dict[str, Any], vm: Any, *, as_json: bool = False) -> Any:
    from planner.prompt import parse_metadata
    from vm import PlanningError

    parsed = parse_metadata(metadata)
    planner = make_planner(kind, load_settings(options), vm)
    try:
        return planner.plan(goal, parsed), parsed
    except PlanningError as exc:
        kept = _keep_attempts(exc)
        if as_json:
            print_json({"status": "planning_failed", "error": str(exc), "attempts_file": str(kept) if kept else None})
        else:
            echo_err(f"error: {exc}" + (f"\n  the attempts are in {kept}" if kept else ""))
        exit_now(EXIT_FAILED)
        raise  # pragma: no cover - exit_now does not return


@click.command()
@click.argument("goal")
@metadata_option
@planner_option
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the plan (a JSON array) to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print {reasoning, plan, planner, attempts} as JSON.")
@tool_options
@kb_option
@guarded
def plan(goal: str, metadata: str | None, planner_kind: str, out: str | None, as_json: bool, **options: Any) -> None:
    """Write a plan for GOAL and print the planner's reasoning and the plan."""
    with make_vm(options, record=False) as vm:
        result, _ = _plan(goal, metadata, planner_kind, options, vm, as_json=as_json)
    text = json.dumps(result.plan, ensure_ascii=False, indent=2)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
    if as_json:
        print_json({"planner": result.planner, "reasoning": result.reasoning, "plan": result.plan, "attempts": len(result.attempts)})
        return
    click.echo(f"<think>\n{result.reasoning}\n</think>")
    click.echo(text)


@click.command()
@click.argument("goal")
@metadata_option
@planner_option
@tool_options
@kb_option
@store_option
@run_options
@guarded
def run(goal: str, metadata: str | None, planner_kind: str, **options: Any) -> None:
    """Plan GOAL, run the plan, and print the answer (the plan and run are stored for replay)."""
    from tools.backends import RETRIEVAL_TOOLS, knowledge_base_missing

    settings = load_settings(options)
    missing = None if options.get("no_builtins") else knowledge_base_missing(settings)
    template = planner_kind == "template" or (planner_kind == "auto" and settings.chosen_llm_backend() == "extractive")
    if missing and template:  # the template plan always retrieves: say so before planning
        raise ValueError(missing)
    with make_vm(options) as vm:
        result, parsed = _plan(goal, metadata, planner_kind, options, vm, as_json=options.get("as_json", False))
        if missing and any(ins.get("parameters", {}).get("tool_name") in RETRIEVAL_TOOLS for ins in result.plan):
            raise ValueError(f"the plan retrieves from the knowledge base, but there is {missing}")
        if not options.get("as_json"):
            echo_err(f"plan ({result.planner} planner): {len(result.plan)} steps")
        outcome = vm.run(result.program, goal=goal, metadata=parsed or None)
    exit_now(report_run(outcome, options.get("as_json", False)))

"""planvm as an MCP server, so an MCP client (an IDE, an agent) can plan and run goals.

The tools call the same :class:`~planvm.engine.Engine` operations as the command line and the
HTTP service — the same tools, limits and run store — and answer with the same shapes
(:mod:`planvm.engine.shapes`) as structured content.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vm.errors import BadInput

INSTRUCTIONS = (
    "planvm plans a goal as a JSON program of tool calls and runs it in a validated VM. Use run_goal to answer a "
    "goal end to end, plan_goal to see the plan first, validate_plan / exec_plan for plans you write, get_run and "
    "replay_run to inspect what ran, approve_run and cancel_run to decide on runs."
)


@contextmanager
def _told() -> Iterator[None]:
    """planvm's own errors (bad input, a missing run…) reach the client with their message; any
    other exception is a bug: the client gets an error id, the traceback goes to the log."""
    import logging

    from mcp.server.mcpserver.exceptions import ToolError

    from planvm.engine.errors import answer_for, new_error_id

    try:
        yield
    except Exception as exc:
        if not answer_for(exc).bug:
            raise ToolError(str(exc)) from exc
        error_id = new_error_id()
        logging.getLogger("planvm.mcp").error("error %s", error_id, exc_info=exc)
        raise ToolError(f"unexpected {type(exc).__name__} (error id {error_id}; its traceback is in the server's log)") from exc


def build_server(engine: Any) -> Any:
    """An ``MCPServer`` whose tools drive ``engine``."""
    from mcp.server.mcpserver import MCPServer

    from planvm.engine.shapes import PlanView, RunOutcome
    from vm import PlanningError, PlanValidationError

    # WARNING: the SDK would otherwise log every request at INFO into a stdio parent's log file.
    server = MCPServer("planvm", instructions=INSTRUCTIONS, log_level="WARNING")

    def problems_of(exc: Exception) -> dict[str, Any]:
        problems = [str(p) for p in getattr(exc, "problems", ())]
        return {"status": "invalid", "error": str(exc), "problems": problems}

    def planner_kind(planner: str) -> str:
        if planner not in ("auto", "llm", "template"):
            raise BadInput("planner must be auto, llm or template")
        return planner

    @server.tool(structured_output=True)
    async def run_goal(goal: str, metadata: dict[str, Any] | None = None, planner: str = "auto", stream_plan: bool = False) -> dict[str, Any]:
        """Plan the goal, run the plan, and return the outcome: run_id, status, final_answer, variables, steps, error.

        Args:
            goal: What the run should achieve, in words.
            metadata: Optional goal metadata (response_format with lang/format, label_path, background).
            planner: auto (the configured LLM, else the template planner), llm, or template.
            stream_plan: Start tool calls while the planner is still writing the plan.
        """
        with _told():
            try:
                result = await engine.run_goal(goal, metadata=metadata, planner_kind=planner_kind(planner), stream_plan=stream_plan)
            except PlanningError as exc:
                return {"status": "planning_failed", "error": str(exc), "run_id": getattr(exc, "run_id", None)}
            except PlanValidationError as exc:
                return problems_of(exc)
            return RunOutcome.from_result(result).dump()

    @server.tool(structured_output=True)
    async def plan_goal(goal: str, metadata: dict[str, Any] | None = None, planner: str = "auto") -> dict[str, Any]:
        """Write a plan for the goal without running it: planner, reasoning, plan, model, tokens, attempts.

        Args:
            goal: What the plan should achieve.
            metadata: Optional goal metadata.
            planner: auto, llm or template.
        """
        with _told():
            kind = planner_kind(planner)
            result = await asyncio.to_thread(engine.plan, goal, metadata, kind)
            return PlanView.of(result).dump()

    @server.tool(name="validate_plan", structured_output=True)
    def check_plan(plan: list[Any]) -> dict[str, Any]:
        """Check a plan (a JSON array of instructions) as a run would: this server's tools, the tools it allows, its plan limits.

        Args:
            plan: The plan's instructions.
        """
        with _told():
            problems = engine.validate(plan)
            return {"valid": not problems, "problems": [str(p) for p in problems]}

    @server.tool(structured_output=True)
    async def exec_plan(plan: list[Any], goal: str | None = None) -> dict[str, Any]:
        """Validate and run a plan; return the outcome as run_goal does.

        Args:
            plan: The plan's instructions.
            goal: What the plan is for, kept with the run (optional).
        """
        with _told():
            try:
                result = await engine.exec_plan(plan, goal=goal, metadata={"source": "MCP exec_plan"})
            except PlanValidationError as exc:
                return problems_of(exc)
            return RunOutcome.from_result(result).dump()

    @server.tool(structured_output=True)
    async def get_run(run_id: str, steps: bool = False) -> dict[str, Any]:
        """A recorded run: goal, plan, planning, outcome, variables, lineage, children, tokens, judgement (and its steps).

        Args:
            run_id: The run's id, or a unique start of it.
            steps: Also return its steps (trace).
        """
        with _told():
            return (await asyncio.to_thread(engine.get_run, run_id, steps=steps)).dump()

    @server.tool(structured_output=True)
    async def approve_run(run_id: str, seq_no: int, approved: bool = True, reason: str | None = None) -> dict[str, Any]:
        """Run (or reject) the tool call a waiting run waits for, and continue the run; return the outcome as run_goal does.

        Args:
            run_id: The waiting run's id, or a unique start of it.
            seq_no: The seq_no of the call it waits for (its pending.seq_no).
            approved: false rejects the call (the step fails with ToolRejected).
            reason: Why it is rejected (kept with the run).
        """
        with _told():
            result = await engine.approve(await asyncio.to_thread(engine.resolve, run_id), seq_no, approved, reason=reason)
            return RunOutcome.from_result(result).dump()

    @server.tool(structured_output=True)
    async def cancel_run(run_id: str) -> dict[str, Any]:
        """Cancel a planning, queued, running, waiting or interrupted run wherever it executes.

        Args:
            run_id: The run's id, or a unique start of it.
        """
        with _told():
            full_id = await asyncio.to_thread(engine.cancel, run_id)
            return {"run_id": full_id, "status": "cancelled"}

    @server.tool(structured_output=True)
    async def replay_run(run_id: str) -> dict[str, Any]:
        """Re-execute a recorded run offline from its record and say whether every step reproduced it.

        Args:
            run_id: The run's id, or a unique start of it.
        """
        with _told():
            return (await engine.replay(run_id)).to_dict()

    return server

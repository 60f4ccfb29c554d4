"""``planvm mcp``: planvm as an MCP server, so an MCP client (an IDE, an agent) can plan and run goals.

The tools go through the same :class:`~planvm.engine.Engine` as the command line — the same
tools, limits and run store — and answer with structured content (JSON objects).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from planvm.cli import kb_option, make_engine, run_options, store_option, tool_options
from planvm.render import echo_err, guarded

INSTRUCTIONS = (
    "planvm plans a goal as a JSON program of tool calls and runs it in a validated VM. Use run_goal to answer a "
    "goal end to end, plan_goal to see the plan first, validate_plan / exec_plan for plans you write, get_run and "
    "replay_run to inspect what ran."
)


@contextmanager
def _told() -> Iterator[None]:
    """planvm's own errors reach the client with their message (the SDK would hide it)."""
    from mcp.server.mcpserver.exceptions import ToolError

    from vm import PlanVMError

    try:
        yield
    except (PlanVMError, ValueError) as exc:
        raise ToolError(str(exc)) from exc


def build_server(engine: Any) -> Any:
    """An ``MCPServer`` whose tools drive ``engine``."""
    from mcp.server.mcpserver import MCPServer

    from planvm.engine import result_json, stored_json
    from vm import PlanningError, PlanValidationError, areplay, validate_plan

    server = MCPServer("planvm", instructions=INSTRUCTIONS)

    def problems_of(exc: Exception) -> dict[str, Any]:
        problems = [str(p) for p in getattr(exc, "problems", ())]
        return {"status": "invalid", "error": str(exc), "problems": problems}

    @server.tool(structured_output=True)
    async def run_goal(goal: str, metadata: dict[str, Any] | None = None, planner: str = "auto") -> dict[str, Any]:
        """Plan the goal, run the plan, and return the outcome: run_id, status, final_answer, variables, steps, error.

        Args:
            goal: What the run should achieve, in words.
            metadata: Optional goal metadata (response_format with lang/format, label_path, background).
            planner: auto (the configured LLM, else the template planner), llm, or template.
        """
        with _told():
            if planner not in ("auto", "llm", "template"):
                raise ValueError("planner must be auto, llm or template")
            try:
                result = await engine.run_goal(goal, metadata=metadata, planner_kind=planner)
            except PlanningError as exc:
                return {"status": "planning_failed", "error": str(exc)}
            except PlanValidationError as exc:
                return problems_of(exc)
            return result_json(result)

    @server.tool(structured_output=True)
    async def plan_goal(goal: str, metadata: dict[str, Any] | None = None, planner: str = "auto") -> dict[str, Any]:
        """Write a plan for the goal without running it: planner, reasoning and plan.

        Args:
            goal: What the plan should achieve.
            metadata: Optional goal metadata.
            planner: auto, llm or template.
        """
        with _told():
            if planner not in ("auto", "llm", "template"):
                raise ValueError("planner must be auto, llm or template")
            result = await asyncio.to_thread(engine.plan, goal, metadata, planner)
            return {"planner": result.planner, "reasoning": result.reasoning, "plan": result.plan}

    @server.tool(name="validate_plan", structured_output=True)
    def check_plan(plan: list[Any]) -> dict[str, Any]:
        """Check a plan (a JSON array of instructions) against this server's tools: valid, and every problem.

        Args:
            plan: The plan's instructions.
        """
        with _told():
            _program, problems = validate_plan(plan, engine.registry)
            return {"valid": not problems, "problems": [str(p) for p in problems]}

    @server.tool(structured_output=True)
    async def exec_plan(plan: list[Any]) -> dict[str, Any]:
        """Validate and run a plan; return the outcome as run_goal does.

        Args:
            plan: The plan's instructions.
        """
        with _told():
            try:
                program = engine.vm.compile(plan)
            except PlanValidationError as exc:
                return problems_of(exc)
            engine.check_knowledge_base(program.to_data())
            return result_json(await engine.vm.arun(program))

    @server.tool(structured_output=True)
    def get_run(run_id: str) -> dict[str, Any]:
        """A recorded run: its goal, plan, planning, outcome, steps, children and judgement.

        Args:
            run_id: The run's id, or a unique start of it.
        """
        with _told():
            run = engine.store.get(run_id)
            outcome = stored_json(run)
            return {
                **outcome, "goal": run.goal, "plan": run.plan, "planner": (run.planning or {}).get("planner"),
                "reasoning": (run.planning or {}).get("reasoning"), "parent_id": run.parent_id, "fork_seq": run.fork_seq,
                "children": engine.store.children(run.id), "judgement": run.judgement, "tokens": run.token_totals(),
                "trace": [{"seq_no": s.seq_no, "type": s.type, "tool": s.tool, "outputs": s.outputs, "error": s.error} for s in run.steps],
            }

    @server.tool(structured_output=True)
    async def replay_run(run_id: str) -> dict[str, Any]:
        """Re-execute a recorded run offline from its record and say whether every step reproduced it.

        Args:
            run_id: The run's id, or a unique start of it.
        """
        with _told():
            report = await areplay(engine.store.get(run_id))
            return report.to_dict()

    return server


@click.command(name="mcp")
@click.option("--http", "http_port", type=click.IntRange(1, 65535), help="Serve streamable HTTP on this port (path /mcp) instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="With --http: the address to listen on (beyond loopback, --token is required).")
@click.option("--token", envvar="PLANVM_MCP_TOKEN", help="With --http: require Authorization: Bearer TOKEN on every request.")
@tool_options
@kb_option
@store_option
@run_options
@guarded
def mcp_command(http_port: int | None, host: str, token: str | None, **options: Any) -> None:
    """Serve planvm to MCP clients (stdio, or streamable HTTP with --http PORT).

    Tools: run_goal, plan_goal, validate_plan, exec_plan, get_run, replay_run, with this command's
    tools, limits and run store."""
    from planvm.connections import is_loopback

    if token is not None and not token.strip():
        raise ValueError("--token is blank; give a real secret (or leave --token out on a loopback address)")
    if http_port is not None and not is_loopback(host) and not token:
        raise ValueError(
            f"--host {host} reaches beyond this machine, and exec_plan runs plans there; give --token (or PLANVM_MCP_TOKEN) so "
            f"that only clients with the token can use it"
        )
    if token:
        from vm.redact import register_secret

        register_secret(token)
    engine = make_engine(options)
    engine.vm.on_step = None  # stdout belongs to the protocol; nothing is printed per step
    engine.vm.on_start = None
    server = build_server(engine)
    try:
        if http_port is None:
            server.run()
        else:
            import uvicorn

            from planvm.connections import BearerToken, header_timeout_protocol

            app: Any = server.streamable_http_app(host=host)
            if token:
                app = BearerToken(app, token)
            echo_err(f"planvm MCP server on http://{host}:{http_port}/mcp (runs in {engine.store.path})")
            uvicorn.run(app, host=host, port=http_port, log_level="warning", http=header_timeout_protocol(10.0), timeout_keep_alive=5)
    finally:
        engine.close()

"""The runs resource: start, list, read, stream, fork, resume, approve, cancel, replay, judge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from planvm.engine.events import run_events
from planvm.engine.shapes import RunDetail, RunOutcome, RunPage
from planvm.server.aisdk import HEADERS as AI_SDK_HEADERS
from planvm.server.aisdk import ui_message_stream
from planvm.server.deps import BulkJSONResponse, Context, OffLoopBody, context
from planvm.server.models import (
    _ERRORS,
    ApproveRequest,
    ForkRequest,
    LimitsOverride,
    RunRequest,
    Started,
)
from vm import bulk
from vm.errors import BadInput

__all__ = ["router"]

router = APIRouter(route_class=OffLoopBody)


def check_limits(ctx: Context, limits: LimitsOverride | None) -> dict[str, Any] | None:
    if limits is None:
        return None
    overrides = limits.model_dump(exclude_none=True)
    for name, value in overrides.items():
        ceiling = getattr(ctx.engine.limits, name)
        if ceiling is not None and value > ceiling:
            raise BadInput(f"limits.{name} = {value} is above this server's {ceiling}; ask for {ceiling} or less")
    return overrides


def check_tools(ctx: Context, names: list[str]) -> None:
    unknown = sorted(set(names) - set(ctx.engine.registry.names()))
    if unknown:
        raise BadInput(f"approve_tools names tools this server does not have: {', '.join(unknown)}")


async def respond(ctx: Context, run_id: str, task: asyncio.Task[Any], wait: bool, status: int = 202) -> JSONResponse:
    if wait:
        await asyncio.wait([task])
        result = None if task.cancelled() or task.exception() is not None else task.result()
        # The run's own result when it ran here (what `planvm exec --json` prints), else the store's.
        if result is not None and result.status != "cancelled":
            if _small(result):
                return JSONResponse(RunOutcome.from_result(result).dump())
            # (large variables: made in a thread, written and freed a slice at a time)
            return await asyncio.to_thread(lambda: _bulk(lambda: RunOutcome.from_result(result).dump()))
        return JSONResponse(await ctx.service.outcome(run_id))
    return JSONResponse({"run_id": run_id, "status": await ctx.service.call(ctx.engine.status_of, run_id)}, status_code=status)


@router.post("/v1/runs", status_code=202, response_model=Started, responses=_ERRORS, tags=["runs"])
async def start_run(body: RunRequest, wait: bool = Query(False, description="Answer when the run ends."), ctx: Context = Depends(context)) -> Any:
    """Plan the goal (unless a plan is given), validate, and start the run in the background."""
    limits = check_limits(ctx, body.limits)
    check_tools(ctx, body.approve_tools)
    if not ctx.execute:
        queued = await ctx.service.call(
            ctx.engine.enqueue, body.goal, metadata=body.metadata, plan=body.plan, approve_tools=body.approve_tools,
            use_library=body.library, limits=limits,
        )
        if wait:
            await ctx.service.finished(queued, (limits or {}).get("max_seconds") or ctx.engine.limits.max_seconds)
            return JSONResponse(await ctx.service.outcome(queued))
        return JSONResponse({"run_id": queued, "status": "queued"}, status_code=202)
    if body.plan is None:
        # Planning happens after the answer: the run exists (status `planning`) and streams like
        # any other, so a client never waits on a planner to learn its run's id.
        run_id = await ctx.service.call(ctx.engine.open_planning, body.goal, metadata=body.metadata, limits=limits,
                            approve_tools=body.approve_tools, use_library=body.library)
        task = ctx.service.start(run_id, lambda listener: ctx.engine.plan_and_run(
            run_id, body.goal, metadata=body.metadata, planner_kind=body.planner, limits=limits, listener=listener,
            use_library=body.library, stream_plan=body.stream_plan, approve_tools=body.approve_tools))
        return await respond(ctx, run_id, task, wait)
    # The run takes the plan from the request (which keeps no reference to it): once checked, its
    # data is let go while the request's own copy still holds it, and freed apart with that (vm.bulk).
    taken = [body.plan]
    body.plan = None
    run_id, task = await ctx.service.launch(
        lambda listener: ctx.engine.exec_plan(
            taken.pop(), goal=body.goal, metadata=body.metadata, limits=limits, approve_tools=body.approve_tools, listener=listener,
        )
    )
    return await respond(ctx, run_id, task, wait)


@router.get("/v1/runs", tags=["runs"], responses=_ERRORS, response_model=RunPage, response_model_exclude_none=False)
async def list_runs(
    status: str | None = Query(None, max_length=32),
    q: str | None = Query(None, max_length=500, description="Text in the goal, or the start of an id."),
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, max_length=200, description="next_cursor of the previous page."),
    ctx: Context = Depends(context),
) -> dict[str, Any]:
    """Runs, newest first, filtered and paged."""
    page = await ctx.service.call(ctx.engine.list_runs, limit, status=status, query=q, cursor=cursor)
    return page.dump()


@router.get("/v1/runs/{run_id}", tags=["runs"], responses=_ERRORS, response_model=RunDetail, response_model_exclude_none=True)
async def get_run(run_id: str, steps: bool = Query(False, description="Also return the run's steps (trace)."), ctx: Context = Depends(context)) -> Any:
    """Status, goal, plan, planning, answer, variables, error, parent, children, tokens, and the
    lease of the process executing it (``executor``, ``lease_expires_at``) while one does."""
    # Read, shaped and written out in a thread: a run of a large plan is megabytes of JSON.
    return await ctx.service.call(lambda: _bulk(lambda: ctx.engine.get_run(run_id, steps=steps).dump()))


@router.get("/v1/runs/{run_id}/steps", tags=["runs"], responses=_ERRORS, response_model=dict[str, Any])
async def get_steps(run_id: str, ctx: Context = Depends(context)) -> Any:
    return await ctx.service.call(lambda: _bulk(lambda: ctx.engine.steps(run_id)))


@router.get("/v1/runs/{run_id}/variables", tags=["runs"], responses=_ERRORS, response_model=dict[str, Any])
async def get_variables(
    run_id: str, step: int | None = Query(None, ge=-1, lt=2**31, description="Trace position (idx); -1: before the first step."),
    ctx: Context = Depends(context),
) -> Any:
    """The variables after step ``idx`` (all steps when it is left out)."""
    return await ctx.service.call(lambda: _bulk(lambda: ctx.engine.variables(run_id, step)))


@router.get("/v1/runs/{run_id}/events", tags=["runs"], responses=_ERRORS)
async def events(
    run_id: str,
    request: Request,
    format: Literal["sse", "ai-sdk"] = Query("sse", description="sse: planvm's events; ai-sdk: the AI SDK's UI message stream."),
    ctx: Context = Depends(context),
) -> StreamingResponse:
    """Server-Sent Events of the run until ``done``; ``Last-Event-ID`` resumes a stream."""
    full_id = await ctx.service.call(ctx.engine.resolve, run_id)
    after = _last_event_id(request.headers.get("last-event-id"))
    stream = run_events(ctx.service.hub, full_id, after)
    if format == "ai-sdk":
        return StreamingResponse(ui_message_stream(full_id, stream), media_type="text/event-stream", headers=AI_SDK_HEADERS)

    async def sse() -> AsyncIterator[str]:
        async for event in stream:
            yield f"id: {event.id}\nevent: {event.event}\ndata: {event.json()}\n\n"

    return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/v1/runs/{run_id}/fork", status_code=202, response_model=Started, responses=_ERRORS, tags=["runs"])
async def fork(run_id: str, body: ForkRequest, wait: bool = Query(False), ctx: Context = Depends(context)) -> Any:
    """A new run reusing the run's steps before ``from_seq``, with a new plan or a re-plan
    (whose planning is kept with the new run)."""
    if (body.plan is None) == (body.suggestion is None):
        raise BadInput("give either plan or suggestion")
    full_id = await ctx.service.call(ctx.engine.resolve, run_id)
    new_id, task = await ctx.service.launch(
        lambda listener: ctx.engine.fork(full_id, body.from_seq, plan=body.plan, suggestion=body.suggestion, listener=listener))
    return await respond(ctx, new_id, task, wait)


@router.post("/v1/runs/{run_id}/resume", status_code=202, response_model=Started, responses=_ERRORS, tags=["runs"])
async def resume(run_id: str, wait: bool = Query(False), ctx: Context = Depends(context)) -> Any:
    """Continue a run that was interrupted or failed, from its last completed step (409 while
    a live process holds its lease, or for a completed or cancelled run)."""
    full_id = await ctx.service.call(ctx.engine.resolve, run_id)
    new_id, task = await ctx.service.launch(lambda listener: ctx.engine.resume(full_id, listener=listener), resumed=True)
    return await respond(ctx, new_id, task, wait)


@router.post("/v1/runs/{run_id}/approve", status_code=202, response_model=Started, responses=_ERRORS, tags=["runs"])
async def approve(run_id: str, body: ApproveRequest, wait: bool = Query(False), ctx: Context = Depends(context)) -> Any:
    """Run (or reject) the tool call a waiting run waits for, and continue the run (409 when
    it is not waiting: a cancelled run runs nothing)."""
    full_id = await ctx.service.call(ctx.engine.resolve, run_id)
    new_id, task = await ctx.service.launch(
        lambda listener: ctx.engine.approve(
            full_id, body.seq_no, body.approved, tool_params=body.tool_params, reason=body.reason, listener=listener
        ),
        resumed=True,
    )
    return await respond(ctx, new_id, task, wait)


@router.post("/v1/runs/{run_id}/cancel", tags=["runs"], responses=_ERRORS)
async def cancel(run_id: str, ctx: Context = Depends(context)) -> dict[str, Any]:
    """Cancel a queued, running, waiting or interrupted run, wherever it executes: the store
    says ``cancelled`` at once; its executor (here, or a worker) stops at its next step."""
    full_id = await ctx.service.call(ctx.engine.cancel, run_id)
    task = ctx.service.tasks.get(full_id)
    if task is not None:  # executing here: stop it now rather than at its next step
        task.cancel()
        await asyncio.wait([task], timeout=5)
    ctx.service.hub.ended(full_id)
    return {"run_id": full_id, "status": "cancelled"}


@router.post("/v1/runs/{run_id}/replay", tags=["runs"], responses=_ERRORS)
async def replay(run_id: str, ctx: Context = Depends(context)) -> dict[str, Any]:
    """Re-execute the run offline from its record and compare every step."""
    return (await ctx.engine.replay(run_id)).to_dict()


@router.post("/v1/runs/{run_id}/judge", tags=["runs"], responses=_ERRORS)
async def judge(run_id: str, ctx: Context = Depends(context)) -> dict[str, Any]:
    """Grade the run's final answer with the judge model and keep the grade with the run:
    score 0-10, accept, suggestion, step_notes (409 when the run has no answer)."""
    full_id = await ctx.service.call(ctx.engine.resolve, run_id)
    judgement = await asyncio.to_thread(ctx.engine.judge, full_id)
    return {"run_id": full_id, **judgement}


# --- plumbing ------------------------------------------------------------------------------------

_INLINE_ANSWER_BYTES = 64 * 1024  # an outcome this small is written out at once (well under a millisecond)


def _small(result: Any) -> bool:
    """Whether a run's outcome (its variables, the call it waits for) is small enough to write out
    on the event loop; measured with a walk that stops at the bound."""
    from vm.jsonsafe import ValueLimitError, storable

    try:
        storable([result.variables, result.pending], max_bytes=_INLINE_ANSWER_BYTES)
    except ValueLimitError:
        return False
    return True



def _bulk(read: Callable[[], Any]) -> BulkJSONResponse:
    """What ``read`` gives (a stored run: megabytes of JSON for a large plan), as a response; the
    objects read made with automatic collection paused and then kept apart from the garbage
    collector (a full pass while they are made walks them all), then freed a slice at a time
    (vm.bulk)."""
    release = bulk.hold()
    parts: list[Any] = []
    try:
        with bulk.making():
            parts.append(read())
            return BulkJSONResponse(parts[0])
    finally:
        bulk.discard(parts, then=release)


def _last_event_id(value: str | None) -> int:
    if not value:
        return -1
    try:
        return max(-1, int(value.strip()))
    except ValueError:
        return -1

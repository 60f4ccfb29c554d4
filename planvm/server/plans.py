"""The plans resource: write a plan without running it, check one, list the tools plans may call."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from planvm.engine.shapes import PlanView
from planvm.server.deps import Context, OffLoopBody, context
from planvm.server.models import _ERRORS, PlanRequest, ValidateRequest
from vm.errors import PlanError

__all__ = ["router"]

router = APIRouter(route_class=OffLoopBody)


@router.post("/v1/plans", tags=["plans"], responses=_ERRORS, response_model=PlanView)
async def make_plan(body: PlanRequest, ctx: Context = Depends(context)) -> Any:
    """The planner's reasoning, plan and attempts for a goal, without running it."""
    result = await asyncio.to_thread(lambda: ctx.engine.plan(body.goal, body.metadata, body.planner, use_library=body.library))
    return JSONResponse(PlanView.of(result).dump())


@router.post("/v1/validate", tags=["plans"], responses=_ERRORS)
async def validate(body: ValidateRequest, ctx: Context = Depends(context)) -> dict[str, Any]:
    """Every static problem of a plan against this server's tools, the tools it allows and its plan limits."""
    try:
        problems = await ctx.service.call(ctx.engine.validate, body.plan)  # a large plan takes a while: not on the event loop
    except PlanError as exc:
        return {"valid": False, "problems": [str(exc)]}
    return {"valid": not problems, "problems": [str(p) for p in problems]}


@router.get("/v1/tools", tags=["plans"])
async def tools(ctx: Context = Depends(context)) -> dict[str, Any]:
    """The tools plans may call: names, descriptions, parameter JSON Schemas."""
    listed = []
    for name in sorted(ctx.engine.registry.names()):
        spec = ctx.engine.registry.get(name)
        schema = getattr(spec, "parameters_schema", None)
        listed.append({
            "name": name,
            "description": getattr(spec, "description", ""),
            "parameters": schema() if callable(schema) else schema,
            "needs_approval": name in ctx.engine.approve_tools,
        })
    return {"tools": listed}

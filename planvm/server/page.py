"""The page (a run inspector) and what only it asks for: the service's description and the plan
library. The page is one HTML shell served at every address it knows (``/``, ``/runs/{id}``,
``/library``), so a run or a step can be linked and reached with back and forward; its scripts
are ES modules under ``/static``, with nothing inline, under a Content-Security-Policy."""

from __future__ import annotations

import html
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from planvm.server.deps import Context, context

__all__ = ["CONTENT_SECURITY_POLICY", "PAGE_HEADERS", "api_router", "page_router"]

#: Scripts, styles and data only from this server; no inline script, no plug-ins, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def page_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    shell = (resources.files("planvm.server") / "static" / "index.html").read_text(encoding="utf-8")

    def page(request: Request) -> HTMLResponse:
        signed = request.scope.get("planvm.session")
        if signed is None:
            return HTMLResponse(shell, headers=PAGE_HEADERS)
        # A signed-in page: its session's CSRF token, which its scripts send with every write.
        mark = f'<meta name="planvm-csrf" content="{html.escape(signed[1].csrf)}">'
        return HTMLResponse(shell.replace('<meta charset="utf-8">', f'<meta charset="utf-8">\n{mark}', 1),
                            headers={**PAGE_HEADERS, "Cache-Control": "no-store"})

    router.add_api_route("/", page, methods=["GET"])
    router.add_api_route("/runs/{run_id}", page, methods=["GET"])
    router.add_api_route("/library", page, methods=["GET"])
    return router


def api_router() -> APIRouter:
    router = APIRouter(tags=["service"])

    @router.get("/v1/info")
    async def info(ctx: Context = Depends(context)) -> dict[str, Any]:
        """What this service can do: which model roles have a model (a judge makes runs gradable),
        the tools whose calls wait for approval, and its version."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            release = version("planvm")
        except PackageNotFoundError:  # pragma: no cover - a source tree that was not installed
            release = "unknown"
        return {"version": release, "models": {role: ctx.engine.has_model(role) for role in ("planner", "answer", "condition", "judge")},
                "approve_tools": sorted(ctx.engine.approve_tools)}

    @router.get("/v1/library", tags=["library"])
    async def library(ctx: Context = Depends(context)) -> dict[str, Any]:
        """The best plans kept for goals: id, goal, label, language, tools, score, run and when."""
        entries = await ctx.service.call(ctx.engine.library_entries)
        keep = ("id", "goal", "label", "language", "tools", "score", "run_id", "created_at", "plan")
        return {"entries": [{k: e.get(k) for k in keep} for e in reversed(entries)]}

    @router.delete("/v1/library/{entry_id}", tags=["library"])
    async def library_remove(entry_id: str, ctx: Context = Depends(context)) -> dict[str, Any]:
        """Remove a kept best plan (its id or a unique start of it)."""
        removed = await ctx.service.call(ctx.engine.library_remove, entry_id)
        return {"removed": removed}

    return router

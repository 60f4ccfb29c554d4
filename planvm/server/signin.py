"""The page's sign-in (for a server with a token): a form served without authentication that
exchanges the token for a session cookie (in the token's namespace), and a sign-out. The cookie,
the CSRF token and the bound on wrong tokens are :mod:`planvm.server.access`'s; this module is
the two routes."""

from __future__ import annotations

import math
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from planvm.server.access import SESSION_COOKIE, Gate, page_address
from planvm.server.page import PAGE_HEADERS

__all__ = ["signin_router"]

_MOST_FORM_BYTES = 8192
_WRONG = "That is not this server's token. Check the --token (or PLANVM_SERVE_TOKEN) it was started with, and try again."


def signin_router() -> APIRouter:
    import jinja2

    router = APIRouter(include_in_schema=False)
    template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
        (resources.files("planvm.server") / "templates" / "signin.html").read_text(encoding="utf-8"))

    def form(next_: str, message: str | None = None, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
        return HTMLResponse(template.render(next=next_, message=message), status_code=status,
                            headers={**PAGE_HEADERS, "Cache-Control": "no-store", **(headers or {})})

    @router.get("/signin")
    async def signin_form(request: Request) -> Response:
        if not _gate(request).required:
            return RedirectResponse("/", status_code=303)
        return form(page_address(request.query_params.get("next")))

    @router.post("/signin")
    async def signin(request: Request) -> Response:
        gate = _gate(request)
        if not gate.required:
            return RedirectResponse("/", status_code=303)
        body = await request.body()
        fields = parse_qs(body[:_MOST_FORM_BYTES].decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=8)
        next_ = page_address((fields.get("next") or [""])[0])
        client = request.client.host if request.client else "unknown"
        wait = gate.attempts.wait_for(client)
        if wait > 0:
            seconds = math.ceil(wait)
            return form(next_, f"Too many wrong tokens from this address: try again in {seconds} s.", 429, {"Retry-After": str(seconds)})
        namespace = gate.namespace_of((fields.get("token") or [""])[0])
        if namespace is None:
            gate.attempts.failed(client)
            return form(next_, _WRONG, 401)
        gate.attempts.succeeded(client)
        cookie, _ = gate.sessions.start(namespace)  # the page then shows that namespace's runs only
        answer = RedirectResponse(next_, status_code=303)
        answer.set_cookie(SESSION_COOKIE, cookie, max_age=max(1, math.ceil(gate.sessions.seconds)), path="/", httponly=True,
                          samesite="strict", secure=request.url.scheme == "https")
        return answer

    @router.post("/signout")
    async def signout(request: Request) -> Response:
        signed: Any = request.scope.get("planvm.session")
        if signed is not None:
            _gate(request).sessions.end(signed[0])
        answer = JSONResponse({"signed_out": True})
        answer.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return answer

    return router


def _gate(request: Request) -> Gate:
    return request.app.state.gate

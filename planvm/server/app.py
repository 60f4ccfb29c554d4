"""The HTTP service: runs submitted, streamed, forked, resumed, approved and replayed over JSON.

Everything a request does goes through the same :class:`~planvm.engine.Engine` as the command
line; this module adds transport only (request models, status codes, event streams, the page).
Runs execute as tasks of the server's event loop and outlive the requests that started them.

The run store is the truth about every run: its status changes only by the store's lifecycle
transitions (a cancel is one, whichever process executes the run), and whether a run is being
executed is told by its lease. Nothing waits on the event loop for the store or for the size of
a request: requests read the store in worker threads, bounded by ``store_timeout``; runs call the
store in its threads (a database server's, or SQLite's), and record a run the store stopped as
``interrupted`` once it answers again; a request's JSON is parsed, its plan checked, and a large
answer written out in threads. ``/healthz`` answers within 100 ms whatever the store does.

A server serves every namespace of its settings: each request in one (its token's, or the one its
``/v1/ns/{ns}/`` URL or ``X-PlanVM-Namespace`` header names; :mod:`planvm.server.namespaces`),
through that namespace's engine and view of the store.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from planvm.engine import Engine
from planvm.engine.tasks import RunTasks
from planvm.server.access import DEFAULT_SESSION_SECONDS, Access, Gate, HostNames, Sessions
from planvm.server.deps import Context
from planvm.server.guard import _Guard
from planvm.server.namespaces import HEADER, Namespaces
from vm.errors import BadInput, PlanningError, PlanValidationError, PlanVMError, QuotaExceeded

__all__ = ["create_app"]

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_STORE_TIMEOUT = 60.0  # seconds a request waits for the run store before 503
log = logging.getLogger("planvm.serve")


def _error(status: int, kind: str, message: str, problems: list[str] | None = None) -> JSONResponse:
    from vm.redact import redact

    body: dict[str, Any] = {"type": kind, "message": redact(message)}
    if problems is not None:
        body["problems"] = [redact(p) for p in problems]
    return JSONResponse({"error": body}, status_code=status)


def _status_for(exc: Exception) -> int:
    from planvm.engine.errors import answer_for

    return answer_for(exc).http


def _problems(exc: Exception) -> list[str] | None:
    if isinstance(exc, PlanValidationError):
        return [str(p) for p in exc.problems]
    if isinstance(exc, PlanningError) and exc.attempts:
        return list(getattr(exc.attempts[-1], "problems", []) or [])
    return None


# --- the application ---------------------------------------------------------------------------


def create_app(
    engine: Engine,
    *,
    token: str | None = None,
    tokens: Mapping[str, str] | None = None,
    cors_origins: list[str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    execute: bool = True,
    store_timeout: float = DEFAULT_STORE_TIMEOUT,
    allowed_hosts: list[str] | None = None,
    session_seconds: float = DEFAULT_SESSION_SECONDS,
) -> FastAPI:
    """The service over ``engine`` (whose store is required). ``token``: every path but
    ``/healthz`` needs ``Authorization: Bearer <token>``, or (the page) a session signed in at
    ``/signin`` that lasts ``session_seconds``; it is the token of ``engine``'s namespace.
    ``tokens``: more tokens, each → the namespace it serves (``engine.config.token_namespaces()``
    gives those of the settings); a request is served in its token's namespace only.
    ``allowed_hosts``: the ``Host`` names answered
    (others get 421; see :func:`planvm.server.access.allowed_hosts_for`); None: any.
    ``execute=False``: new runs are only queued, for ``planvm worker`` processes sharing the
    store. ``store_timeout``: seconds a request waits on the store before it is answered 503."""
    home = engine.config.namespace
    bound = _token_map(home, token, tokens)
    undeclared = sorted(set(bound.values()) - set(engine.config.namespace_names()))
    if undeclared:
        raise BadInput(f"tokens are given for namespaces the settings do not declare ({', '.join(undeclared)}); "
                       f"add a [namespaces.NAME] table for each")
    from vm.redact import mask_log_records

    mask_log_records()  # an error a model server echoed a key into never reaches the server's log
    # The engine in its service role: no store call waits on the event loop, a database server's
    # (network, retries while it is away) nor SQLite's (a large plan written, a lock another process holds).
    service = RunTasks(engine, store_timeout)
    engine = service.engine

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="planvm-io"))
        if execute:
            # Runs a dead server left `running` can be resumed: say so in the store. A server that
            # only queues leaves them to the workers, who take runs whose lease ran out first.
            try:
                await service.mark_abandoned(engine.config.namespace_names())
            except PlanVMError as exc:
                log.warning("could not look for abandoned runs: %s", engine.public(str(exc)))
        yield
        await service.stop()

    app = FastAPI(
        title="planvm",
        summary="Plan with an LLM, run the plan in a validated VM, and watch it run.",
        version=_version(),
        lifespan=asynccontextmanager(lifespan),
    )
    app.state.service = service  # (tests reach the runs executing here through it)
    app.state.context = Context(engine, service, execute)
    app.state.contexts = {}  # other namespaces' (see planvm.server.deps.context)

    # --- errors, size, authentication ---------------------------------------------------------

    @app.exception_handler(PlanVMError)
    async def planvm_error(request: Request, exc: PlanVMError) -> JSONResponse:
        problems = _problems(exc)
        answer = _error(_status_for(exc), type(exc).__name__, engine.public(str(exc)),
                        [engine.public(p) for p in problems] if problems is not None else None)
        if isinstance(exc, QuotaExceeded) and exc.retry_after is not None:
            answer.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return answer

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return _error(422, "InvalidRequest", "the request is not valid; see problems", problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "HTTPError", str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, TimeoutError):
            return _error(503, "StoreUnavailable", "the run store did not answer in time; try again")
        from planvm.engine.errors import new_error_id

        error_id = new_error_id()
        log.error("error %s in %s %s", error_id, request.method, request.url.path, exc_info=exc)
        return _error(500, "InternalError", f"unexpected error (error id {error_id}; its traceback is in the server's log)")

    if cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type", "Last-Event-ID", HEADER]
        )
    app.add_middleware(_Guard, max_body_bytes=max_body_bytes)
    app.add_middleware(Namespaces, home=home, declared=engine.config.namespace_names(), bound=bool(bound))
    gate = Gate(bound, HostNames(allowed_hosts) if allowed_hosts is not None else None, frozenset(cors_origins or ()), Sessions(session_seconds))
    app.state.gate = gate
    app.add_middleware(Access, gate=gate)  # outermost: the name and who asks, before anything else

    # --- the resources -------------------------------------------------------------------------

    from planvm.server import plans, runs

    app.include_router(runs.router)
    app.include_router(plans.router)

    @app.api_route("/healthz", methods=["GET", "HEAD"], tags=["service"])
    async def healthz() -> JSONResponse:
        """Liveness, and whether the run store answers (503 with the cause within 100 ms when
        it does not)."""
        problem = await service.health()
        if problem is not None:
            return JSONResponse({"ok": False, "store": problem}, status_code=503)
        spaces = service.namespaces()
        return JSONResponse({"ok": True, "runs_here": sum(len(s.tasks) for s in spaces), "streams": sum(s.hub.watching() for s in spaces)})

    # --- the page, and what only it asks for ---------------------------------------------------

    from planvm.server.page import api_router, page_router
    from planvm.server.signin import signin_router

    app.include_router(api_router())
    app.include_router(page_router())
    app.include_router(signin_router())
    app.mount("/static", StaticFiles(directory=str(resources.files("planvm.server") / "static")), name="static")
    return app


# --- plumbing ------------------------------------------------------------------------------------


def _token_map(home: str, token: str | None, tokens: Mapping[str, str] | None) -> dict[str, str]:
    """Every bearer token → its namespace: ``tokens``, and ``token`` for ``home``."""
    bound = dict(tokens or {})
    for given in ([token] if token is not None else []) + list(bound):
        if not given.strip():
            raise BadInput("the token is blank; give a real secret, or no token (loopback only)")
    if token is not None:
        if bound.get(token, home) != home:
            raise BadInput(f"the token given for namespace {home!r} is namespace {bound[token]!r}'s too; give each its own")
        bound[token] = home
    return bound



def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("planvm")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"

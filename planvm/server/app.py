"""The HTTP service: runs submitted, streamed, forked, resumed, approved and replayed over JSON.

Everything a request does goes through the same :class:`~planvm.engine.Engine` as the command
line; this module adds transport only (request models, status codes, event streams, the page).
Runs execute as tasks of the server's event loop and outlive the requests that started them.

The run store is the truth about every run: its status changes only by the store's lifecycle
transitions (a cancel is one, whichever process executes the run), and whether a run is being
executed is told by its lease. Requests read the store in worker threads, bounded by
``store_timeout``; runs call a database server's store in threads (SQLite commits, local and
short, inline); large plans are checked in a thread: the event loop (and ``/healthz``) never waits
on a database.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from planvm.engine import Engine
from planvm.engine.shapes import PlanView, RunDetail, RunOutcome, RunPage
from planvm.server.aisdk import HEADERS as AI_SDK_HEADERS
from planvm.server.aisdk import ui_message_stream
from planvm.server.events import run_events, stored_outcome
from planvm.server.guard import _Guard
from planvm.server.models import (
    _ERRORS,
    ApproveRequest,
    ForkRequest,
    LimitsOverride,
    PlanRequest,
    RunRequest,
    Started,
    ValidateRequest,
)
from planvm.server.service import _finished, _public, _Service
from vm.errors import (
    BackendUnavailable,
    BadInput,
    ForkError,
    LLMError,
    PlanError,
    PlanningError,
    PlanValidationError,
    PlanVMError,
    RunBusy,
    RunNotFound,
    RunStateError,
    StoreError,
    StoreUnavailable,
)

__all__ = ["create_app"]

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_STORE_TIMEOUT = 60.0  # seconds a request waits for the run store before 503
STALL_SECONDS = 60.0  # an event stream whose client reads nothing for this long is closed
_SEQ = Field(..., ge=-(2**63), lt=2**63)  # any seq_no a plan may use
log = logging.getLogger("planvm.serve")


def _error(status: int, kind: str, message: str, problems: list[str] | None = None) -> JSONResponse:
    from vm.redact import redact

    body: dict[str, Any] = {"type": kind, "message": redact(message)}
    if problems is not None:
        body["problems"] = [redact(p) for p in problems]
    return JSONResponse({"error": body}, status_code=status)


def _status_for(exc: Exception) -> int:
    from planner.judge import JudgeError, NothingToJudge

    if isinstance(exc, RunNotFound):
        return 404
    if isinstance(exc, StoreUnavailable):
        return 503
    if isinstance(exc, RunStateError):
        return 409
    if isinstance(exc, NothingToJudge):
        return 409
    if isinstance(exc, JudgeError):
        return 502
    if isinstance(exc, (RunBusy, ForkError)):
        return 409
    if isinstance(exc, (PlanValidationError, PlanError, PlanningError, BadInput)):
        return 422
    if isinstance(exc, LLMError):
        return 502
    if isinstance(exc, BackendUnavailable):
        return 503
    if isinstance(exc, StoreError):
        return 409
    return 500


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
    cors_origins: list[str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    execute: bool = True,
    store_timeout: float = DEFAULT_STORE_TIMEOUT,
) -> FastAPI:
    """The service over ``engine`` (whose store is required). ``token``: every path but
    ``/healthz`` needs ``Authorization: Bearer <token>``. ``execute=False``: new runs are only
    queued, for ``planvm worker`` processes sharing the store. ``store_timeout``: seconds a
    request waits on the store before it is answered 503."""
    if engine.store is None:
        raise BadInput("the service needs a run store")
    if token is not None and not token.strip():
        raise BadInput("the token is blank; give a real secret, or no token (loopback only)")
    # A database server's calls (network, retries while it is away) never wait on the event loop;
    # an SQLite commit (a local file, about 0.3 ms) costs less inline than a thread hop.
    engine.vm.store_in_threads = engine.store.dialect != "sqlite"
    from vm.redact import mask_log_records

    mask_log_records()  # an error a model server echoed a key into never reaches the server's log
    service = _Service(engine, store_timeout)
    call = service.call

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="planvm-io"))
        if execute:
            # Runs a dead server left `running` can be resumed: say so in the store. A server that
            # only queues leaves them to the workers, who take runs whose lease ran out first.
            try:
                await call(engine.store.mark_abandoned)
            except PlanVMError as exc:
                log.warning("could not look for abandoned runs: %s", _public(str(exc), engine.store))
        yield
        for task in list(service.tasks.values()):
            task.cancel()
        if service.tasks:
            await asyncio.gather(*service.tasks.values(), return_exceptions=True)
        service.close()

    app = FastAPI(
        title="planvm",
        summary="Plan with an LLM, run the plan in a validated VM, and watch it run.",
        version=_version(),
        lifespan=asynccontextmanager(lifespan),
    )
    app.state.service = service
    app.state.engine = engine

    # --- errors, size, authentication ---------------------------------------------------------

    @app.exception_handler(PlanVMError)
    async def planvm_error(request: Request, exc: PlanVMError) -> JSONResponse:
        problems = _problems(exc)
        return _error(_status_for(exc), type(exc).__name__, _public(str(exc), engine.store),
                      [_public(p, engine.store) for p in problems] if problems is not None else None)

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
        import uuid

        error_id = uuid.uuid4().hex[:10]
        log.error("error %s in %s %s", error_id, request.method, request.url.path, exc_info=exc)
        return _error(500, "InternalError", f"unexpected error (error id {error_id}; its traceback is in the server's log)")

    if cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type", "Last-Event-ID"]
        )
    app.add_middleware(_Guard, token=token, max_body_bytes=max_body_bytes)

    # --- runs ---------------------------------------------------------------------------------

    def check_limits(limits: LimitsOverride | None) -> dict[str, Any] | None:
        if limits is None:
            return None
        overrides = limits.model_dump(exclude_none=True)
        for name, value in overrides.items():
            ceiling = getattr(engine.limits, name)
            if ceiling is not None and value > ceiling:
                raise BadInput(f"limits.{name} = {value} is above this server's {ceiling}; ask for {ceiling} or less")
        return overrides

    def check_tools(names: list[str]) -> None:
        unknown = sorted(set(names) - set(engine.registry.names()))
        if unknown:
            raise BadInput(f"approve_tools names tools this server does not have: {', '.join(unknown)}")

    async def respond(run_id: str, task: asyncio.Task[Any], wait: bool, status: int = 202) -> JSONResponse:
        if wait:
            await asyncio.wait([task])
            result = None if task.cancelled() or task.exception() is not None else task.result()
            # The run's own result when it ran here (what `planvm exec --json` prints), else the store's.
            if result is not None and result.status != "cancelled":
                return JSONResponse(RunOutcome.from_result(result).dump())
            return JSONResponse(await stored_outcome(service.io, run_id))
        return JSONResponse({"run_id": run_id, "status": await call(engine.store.status_of, run_id)}, status_code=status)

    @app.post("/v1/runs", status_code=202, response_model=Started, responses=_ERRORS, tags=["runs"])
    async def start_run(body: RunRequest, wait: bool = Query(False, description="Answer when the run ends.")) -> Any:
        """Plan the goal (unless a plan is given), validate, and start the run in the background."""
        limits = check_limits(body.limits)
        check_tools(body.approve_tools)
        if not execute:
            queued = await call(
                engine.enqueue, body.goal, metadata=body.metadata, plan=body.plan, approve_tools=body.approve_tools,
                use_library=body.library, limits=limits,
            )
            if wait:
                await _finished(service, queued, (limits or {}).get("max_seconds") or engine.limits.max_seconds)
                return JSONResponse(await stored_outcome(service.io, queued))
            return JSONResponse({"run_id": queued, "status": "queued"}, status_code=202)
        if body.plan is None:
            # Planning happens after the answer: the run exists (status `planning`) and streams like
            # any other, so a client never waits on a planner to learn its run's id.
            run_id = await call(engine.open_planning, body.goal, metadata=body.metadata, limits=limits,
                                approve_tools=body.approve_tools, use_library=body.library)
            task = service.start(run_id, lambda listener: engine.plan_and_run(
                run_id, body.goal, metadata=body.metadata, planner_kind=body.planner, limits=limits, listener=listener,
                use_library=body.library))
            return await respond(run_id, task, wait)
        run_id, task = await service.launch(
            lambda listener: engine.exec_plan(
                body.plan, goal=body.goal, metadata=body.metadata, limits=limits, approve_tools=body.approve_tools, listener=listener,
            )
        )
        return await respond(run_id, task, wait)

    @app.get("/v1/runs", tags=["runs"], responses=_ERRORS, response_model=RunPage, response_model_exclude_none=False)
    async def list_runs(
        status: str | None = Query(None, max_length=32),
        q: str | None = Query(None, max_length=500, description="Text in the goal, or the start of an id."),
        limit: int = Query(50, ge=1, le=500),
        cursor: str | None = Query(None, max_length=200, description="next_cursor of the previous page."),
    ) -> dict[str, Any]:
        """Runs, newest first, filtered and paged."""
        before = _decode_cursor(cursor) if cursor else None
        runs = await call(engine.store.list_runs, limit + 1, status=status, query=q, before=before)
        more = len(runs) > limit
        runs = runs[:limit]
        next_cursor = _encode_cursor(runs[-1]["created_at"], runs[-1]["id"]) if more and runs else None
        return RunPage(runs=runs, next_cursor=next_cursor).dump()

    @app.get("/v1/runs/{run_id}", tags=["runs"], responses=_ERRORS, response_model=RunDetail, response_model_exclude_none=True)
    async def get_run(run_id: str, steps: bool = Query(False, description="Also return the run's steps (trace).")) -> Any:
        """Status, goal, plan, planning, answer, variables, error, parent, children, tokens, and the
        lease of the process executing it (``executor``, ``lease_expires_at``) while one does."""
        return JSONResponse((await call(engine.get_run, run_id, steps=steps)).dump())

    @app.get("/v1/runs/{run_id}/steps", tags=["runs"], responses=_ERRORS)
    async def get_steps(run_id: str) -> dict[str, Any]:
        run = await call(engine.store.get, run_id)
        return {"run_id": run.id, "steps": [s.to_dict() for s in run.steps]}

    @app.get("/v1/runs/{run_id}/variables", tags=["runs"], responses=_ERRORS)
    async def get_variables(
        run_id: str, step: int | None = Query(None, ge=-1, lt=2**31, description="Trace position (idx); -1: before the first step.")
    ) -> dict[str, Any]:
        """The variables after step ``idx`` (all steps when it is left out)."""
        run = await call(engine.store.get, run_id)
        if step is not None and step >= len(run.steps):
            raise BadInput(f"run '{run.id}' has {len(run.steps)} steps (idx 0 to {len(run.steps) - 1}); ask for one of those")
        upto = None if step is None else step + 1
        return {"run_id": run.id, "step": step, "variables": run.variables_at(upto)}

    @app.get("/v1/runs/{run_id}/events", tags=["runs"], responses=_ERRORS)
    async def events(
        run_id: str,
        request: Request,
        format: Literal["sse", "ai-sdk"] = Query("sse", description="sse: planvm's events; ai-sdk: the AI SDK's UI message stream."),
    ) -> StreamingResponse:
        """Server-Sent Events of the run until ``done``; ``Last-Event-ID`` resumes a stream."""
        full_id = await call(engine.store.resolve, run_id)
        after = _last_event_id(request.headers.get("last-event-id"))
        stream = run_events(service.hub, full_id, after)
        if format == "ai-sdk":
            return _EventStream(ui_message_stream(full_id, stream), media_type="text/event-stream", headers=AI_SDK_HEADERS)

        async def sse() -> AsyncIterator[str]:
            async for event in stream:
                yield event.sse()

        return _EventStream(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/runs/{run_id}/fork", status_code=202, response_model=Started, responses=_ERRORS, tags=["runs"])
    async def fork(run_id: str, body: ForkRequest, wait: bool = Query(False)) -> Any:
        """A new run reusing the run's steps before ``from_seq``, with a new plan or a re-plan
        (whose planning is kept with the new run)."""
        if (body.plan is None) == (body.suggestion is None):
            raise BadInput("give either plan or suggestion")
        full_id = await call(engine.store.resolve, run_id)
        new_id, task = await service.launch(
            lambda listener: engine.fork(full_id, body.from_seq, plan=body.plan, suggestion=body.suggestion, listener=listener))
        return await respond(new_id, task, wait)

    @app.post("/v1/runs/{run_id}/resume", status_code=202, response_model=Started, responses=_ERRORS, tags=["runs"])
    async def resume(run_id: str, wait: bool = Query(False)) -> Any:
        """Continue a run that was interrupted or failed, from its last completed step (409 while
        a live process holds its lease, or for a completed or cancelled run)."""
        full_id = await call(engine.store.resolve, run_id)
        new_id, task = await service.launch(lambda listener: engine.resume(full_id, listener=listener), resumed=True)
        return await respond(new_id, task, wait)

    @app.post("/v1/runs/{run_id}/approve", status_code=202, response_model=Started, responses=_ERRORS, tags=["runs"])
    async def approve(run_id: str, body: ApproveRequest, wait: bool = Query(False)) -> Any:
        """Run (or reject) the tool call a waiting run waits for, and continue the run (409 when
        it is not waiting: a cancelled run runs nothing)."""
        full_id = await call(engine.store.resolve, run_id)
        new_id, task = await service.launch(
            lambda listener: engine.approve(
                full_id, body.seq_no, body.approved, tool_params=body.tool_params, reason=body.reason, listener=listener
            ),
            resumed=True,
        )
        return await respond(new_id, task, wait)

    @app.post("/v1/runs/{run_id}/cancel", tags=["runs"], responses=_ERRORS)
    async def cancel(run_id: str) -> dict[str, Any]:
        """Cancel a queued, running, waiting or interrupted run, wherever it executes: the store
        says ``cancelled`` at once; its executor (here, or a worker) stops at its next step."""
        full_id = await call(engine.cancel, run_id, "cancelled by a request to the service")
        task = service.tasks.get(full_id)
        if task is not None:  # executing here: stop it now rather than at its next step
            task.cancel()
            await asyncio.wait([task], timeout=5)
        service.hub.ended(full_id)
        return {"run_id": full_id, "status": "cancelled"}

    @app.post("/v1/runs/{run_id}/replay", tags=["runs"], responses=_ERRORS)
    async def replay(run_id: str) -> dict[str, Any]:
        """Re-execute the run offline from its record and compare every step."""
        return (await engine.replay(run_id)).to_dict()

    @app.post("/v1/runs/{run_id}/judge", tags=["runs"], responses=_ERRORS)
    async def judge(run_id: str) -> dict[str, Any]:
        """Grade the run's final answer with the judge model and keep the grade with the run:
        score 0-10, accept, suggestion, step_notes (409 when the run has no answer)."""
        full_id = await call(engine.store.resolve, run_id)
        judgement = await asyncio.to_thread(engine.judge, full_id)
        return {"run_id": full_id, **judgement}

    # --- plans and tools ----------------------------------------------------------------------

    @app.post("/v1/plans", tags=["plans"], responses=_ERRORS, response_model=PlanView)
    async def make_plan(body: PlanRequest) -> Any:
        """The planner's reasoning, plan and attempts for a goal, without running it."""
        result = await asyncio.to_thread(lambda: engine.plan(body.goal, body.metadata, body.planner, use_library=body.library))
        return JSONResponse(PlanView.of(result).dump())

    @app.post("/v1/validate", tags=["plans"], responses=_ERRORS)
    async def validate(body: ValidateRequest) -> dict[str, Any]:
        """Every static problem of a plan against this server's tools."""
        try:
            problems = await call(engine.vm.validate, body.plan)  # a large plan takes a while: not on the event loop
        except PlanError as exc:
            return {"valid": False, "problems": [str(exc)]}
        return {"valid": not problems, "problems": [str(p) for p in problems]}

    @app.get("/v1/tools", tags=["plans"])
    async def tools() -> dict[str, Any]:
        """The tools plans may call: names, descriptions, parameter JSON Schemas."""
        listed = []
        for name in sorted(engine.registry.names()):
            spec = engine.registry.get(name)
            schema = getattr(spec, "parameters_schema", None)
            listed.append({
                "name": name,
                "description": getattr(spec, "description", ""),
                "parameters": schema() if callable(schema) else schema,
                "needs_approval": name in engine.approve_tools,
            })
        return {"tools": listed}

    @app.api_route("/healthz", methods=["GET", "HEAD"], tags=["service"])
    async def healthz() -> JSONResponse:
        """Liveness, and whether the run store answers (503 with the cause within 100 ms when
        it does not)."""
        problem = await service.health()
        if problem is not None:
            return JSONResponse({"ok": False, "store": problem}, status_code=503)
        return JSONResponse({"ok": True, "runs_here": len(service.tasks), "streams": service.hub.watching()})

    # --- the page, and what only it asks for ---------------------------------------------------

    from planvm.server.page import api_router, page_router

    app.include_router(api_router())
    app.include_router(page_router())
    app.mount("/static", StaticFiles(directory=str(resources.files("planvm.server") / "static")), name="static")
    return app


# --- plumbing ------------------------------------------------------------------------------------


class _EventStream(StreamingResponse):
    """An event stream whose client stopped reading is closed after STALL_SECONDS (the socket's
    buffer is full by then), so it holds neither a connection nor memory for ever."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def bounded(message: Any) -> None:
            await asyncio.wait_for(send(message), STALL_SECONDS)

        try:
            await super().__call__(scope, receive, bounded)
        except TimeoutError:
            log.warning("closed an event stream whose client read nothing for %.0f s", STALL_SECONDS)


def _last_event_id(value: str | None) -> int:
    if not value:
        return -1
    try:
        return max(-1, int(value.strip()))
    except ValueError:
        return -1


def _encode_cursor(created_at: float, run_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, run_id]).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created_at, run_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(created_at), str(run_id)
    except (ValueError, TypeError):
        raise BadInput("cursor is not one this server gave out; use next_cursor from the previous page") from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("planvm")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"

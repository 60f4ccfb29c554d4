"""What every route of the service depends on: the engine and the service's state of the
request's namespace, as FastAPI dependencies (read from the application, so a router is a plain
module of routes); and the route class that reads a request's JSON off the event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from planvm.engine import Engine
from vm import bulk

__all__ = ["BulkJSONResponse", "Context", "OffLoopBody", "context"]

_INLINE_JSON_BYTES = 64 * 1024  # a body this small is parsed at once (under a millisecond)


@dataclass(frozen=True, slots=True)
class Context:
    """One namespace's engine and service state (runs executing here, event streams, the store's
    threads), and whether new runs execute here (``execute``) or are only queued for workers."""

    engine: Engine
    service: Any
    execute: bool


async def context(request: Request) -> Context:
    """The context of the namespace the request is served in (see :mod:`planvm.server.namespaces`):
    its engine (tools, models, limits, quotas) and its view of the store, and no other."""
    from planvm.server.namespaces import NAMESPACE

    state = request.app.state
    home: Context = state.context
    name = request.scope.get(NAMESPACE)
    if name is None or name == home.engine.config.namespace:
        return home
    found: Context | None = state.contexts.get(name)
    if found is None:  # its engine is built once, in a thread (its settings read, its store view made)
        service = await asyncio.to_thread(home.service.in_namespace, name)
        found = state.contexts.setdefault(name, Context(service.engine, service, home.execute))
    return found


class OffLoopBody(APIRoute):
    """A route whose JSON body is parsed in a worker thread: a plan of many thousand instructions
    (megabytes of JSON, a fifth of a second for 100,000) does not hold the event loop, and the
    service's other requests (``/healthz`` among them) are answered meanwhile. A large body is
    parsed a value at a time, its objects kept apart from the garbage collector while the request
    is served and freed a slice at a time afterwards (:mod:`vm.bulk`): no thread holds the GIL for
    the whole document."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            threaded = _ThreadedJSON(request.scope, request.receive)
            try:
                return await handler(threaded)
            finally:
                threaded.let_go()

        return route


class _ThreadedJSON(Request):
    _release: Callable[[], None] | None = None  # a large body's span (vm.bulk.hold)

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) >= bulk.LARGE_TEXT:
                self._release = bulk.hold()
                self._json = await asyncio.to_thread(_parse_large, body)
            elif len(body) > _INLINE_JSON_BYTES:
                self._json = await asyncio.to_thread(json.loads, body)
            else:
                self._json = json.loads(body)
        return self._json

    def let_go(self) -> None:
        """The request is served: a large body's objects are freed apart (vm.bulk.discard)."""
        if self._release is not None:
            bulk.discard([self.__dict__.pop("_json", None)], then=self._release)
            self._release = None


def _parse_large(body: bytes) -> Any:
    with bulk.making():
        return bulk.loads(body)


class BulkJSONResponse(JSONResponse):
    """A JSON response written as Starlette's is (the same bytes), a large one a slice at a time
    (:func:`vm.bulk.dumps`); made in a worker thread, it holds the GIL only briefly at a time."""

    def render(self, content: Any) -> bytes:
        return bulk.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")

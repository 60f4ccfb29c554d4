"""What every route of the service depends on: the engine and the service's state, as FastAPI
dependencies (read from the application, so a router is a plain module of routes); and the route
class that reads a request's JSON off the event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from planvm.engine import Engine

__all__ = ["Context", "OffLoopBody", "context"]

_INLINE_JSON_BYTES = 64 * 1024  # a body this small is parsed at once (under a millisecond)


@dataclass(frozen=True, slots=True)
class Context:
    """The engine, the service's state (runs executing here, event streams, the store's threads),
    and whether new runs execute here (``execute``) or are only queued for workers."""

    engine: Engine
    service: Any
    execute: bool


def context(request: Request) -> Context:
    return request.app.state.context


class OffLoopBody(APIRoute):
    """A route whose JSON body is parsed in a worker thread: a plan of many thousand instructions
    (megabytes of JSON, a fifth of a second for 100,000) does not hold the event loop, and the
    service's other requests (``/healthz`` among them) are answered meanwhile."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_ThreadedJSON(request.scope, request.receive))

        return route


class _ThreadedJSON(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = await asyncio.to_thread(json.loads, body) if len(body) > _INLINE_JSON_BYTES else json.loads(body)
        return self._json

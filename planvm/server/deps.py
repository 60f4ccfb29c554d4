"""What every route of the service depends on: the engine and the service's state, as FastAPI
dependencies (read from the application, so a router is a plain module of routes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from planvm.engine import Engine

__all__ = ["Context", "context"]


@dataclass(frozen=True, slots=True)
class Context:
    """The engine, the service's state (runs executing here, event streams, the store's threads),
    and whether new runs execute here (``execute``) or are only queued for workers."""

    engine: Engine
    service: Any
    execute: bool


def context(request: Request) -> Context:
    return request.app.state.context

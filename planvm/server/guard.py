"""The request body's size, checked in front of every request (plain ASGI, before FastAPI); who
may ask is :mod:`planvm.server.access`'s."""

from __future__ import annotations

import json
from typing import Any


class _Guard:
    """ASGI middleware: a request body larger than ``max_body_bytes`` is answered 413."""

    def __init__(self, app: Any, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await send_error(send, 413, "RequestTooLarge", f"the request body is larger than this server accepts ({self.max_body_bytes:,} bytes)")
            return
        received = 0
        limit = self.max_body_bytes
        refused = False

        async def bounded_receive() -> dict[str, Any]:
            # A body sent without a length (chunked) is counted as it arrives: past the limit the
            # client gets 413 and the application sees the client gone.
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await send_error(send, 413, "RequestTooLarge", f"the request body is larger than this server accepts ({limit:,} bytes)")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if not refused:
                await send(message)

        await self.app(scope, bounded_receive, guarded_send)


async def send_error(send: Any, status: int, kind: str, message: str, extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """An error answered from plain ASGI code, in the shape the app's own errors have."""
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

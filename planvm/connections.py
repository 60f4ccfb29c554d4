"""Connection limits for ``planvm serve`` and ``planvm mcp --http``: slow or half-open clients cannot lock others out.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and answers 503 past
``limit_concurrency``, but waits without end for a request's headers, and for a client to take
what it is sent: a thousand clients that send half a request line, or that open an event stream
and never read it, hold a thousand connections (and the second kind, a full write buffer each),
and past ``limit_concurrency`` every other client is answered 503.

:func:`deadline_protocol` closes a connection whose request headers are not complete ``headers``
seconds after its first byte (or after it opened), and aborts one whose client has taken nothing
of a response for ``stall`` seconds (its write buffer stayed full: a plain close would wait for the
buffer to drain, which a client that reads nothing never lets happen); :class:`BodyDeadline`
answers 408 to a request whose body is not all in within its deadline;
:func:`raise_open_files_limit` lifts the soft limit on open files to the hard one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from typing import Any

__all__ = ["BearerToken", "BodyDeadline", "deadline_protocol", "is_loopback", "quiet_server", "raise_open_files_limit"]

log = logging.getLogger("planvm.serve")


def quiet_server(config: Any) -> Any:
    """A ``uvicorn.Server`` that sleeps while nothing happens: uvicorn's own wakes its event loop ten
    times a second to look for a shutdown signal; this one wakes once a second (to refresh the
    ``date`` header, as uvicorn does each second) and at once on a signal. An idle wake of a server
    that sits between the pieces of its runs' work costs as much as one of those pieces
    (docs/performance.md)."""
    import uvicorn

    class QuietServer(uvicorn.Server):
        _wake: asyncio.Event | None = None
        _loop: asyncio.AbstractEventLoop | None = None

        async def main_loop(self) -> None:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            counter = 0
            while not await self.on_tick(counter):
                counter = (counter + 10) % 864000  # each pass is a second of uvicorn's ticks
                try:
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                except TimeoutError:
                    pass

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            loop, wake = self._loop, self._wake
            if loop is not None and wake is not None:
                try:
                    loop.call_soon_threadsafe(wake.set)
                except RuntimeError:  # the loop is closed already
                    pass

    return QuietServer(config)


def deadline_protocol(headers: float, stall: float | None = None) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools, else h11) with a deadline for each request's headers
    and, when ``stall`` is given, for a client that takes nothing of what it is sent."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    base: Any = AutoHTTPProtocol

    class DeadlineProtocol(base):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None
        _stall_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._awaiting_headers():
                self._arm()  # a new request begins: its headers have `headers` seconds (not re-armed per byte)
            super().data_received(data)
            if not self._awaiting_headers():
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._unstall()
            super().connection_lost(exc)

        # The transport calls these when its write buffer rises above its high-water mark (the
        # socket's own buffers being full already) and when it falls below the low-water mark.
        def pause_writing(self) -> None:
            super().pause_writing()
            if stall is not None and self._stall_timer is None:
                self._stall_timer = self.loop.call_later(stall, self._stalled)

        def resume_writing(self) -> None:
            super().resume_writing()
            self._unstall()

        def _awaiting_headers(self) -> bool:
            # uvicorn makes a request's cycle once its headers are complete (both parsers).
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(headers, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if self._awaiting_headers() and not self.transport.is_closing():
                self.transport.close()

        def _unstall(self) -> None:
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None

        def _stalled(self) -> None:
            # Abort, not close: close() keeps the socket and its buffer until the buffer drains,
            # which a client that reads nothing never lets happen. With SO_LINGER 0 the socket's
            # close resets the connection and drops what the kernel still holds for it (else the
            # system keeps trying to deliver it for minutes). The connection is lost at once: the
            # response's sends return, its request sees the client gone, its slot is free.
            self._stall_timer = None
            log.warning("aborted a connection whose client took nothing of its response for %g s", stall)
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass  # gone already
            self.transport.abort()

    return DeadlineProtocol


class BodyDeadline:
    """ASGI middleware: a request's body must be all in ``seconds`` after its headers; else the
    client gets 408 and its connection is closed (a client that stops sending, or trickles, holds
    no connection for ever). Requests without a body, and a request's later waits for a
    disconnect, have no deadline."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.seconds
        pending = True  # the body is not all in yet
        started = False  # the application began its answer
        answered = False  # this middleware answered 408: the application's own answer goes nowhere

        async def timed_receive() -> dict[str, Any]:
            nonlocal pending, answered
            if answered:
                return {"type": "http.disconnect"}
            if not pending:
                return await receive()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()  # (in this task: no task made per receive, as wait_for makes)
            except TimeoutError:
                answered = True
                if not started:
                    await _send_408(send, self.seconds)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                pending = False
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if not answered:
                started = True
                await send(message)

        await self.app(scope, timed_receive, guarded_send)


def _has_body(scope: dict[str, Any]) -> bool:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
        if name == b"transfer-encoding":
            return True
    return False


async def _send_408(send: Any, seconds: float) -> None:
    body = json.dumps({"error": {"type": "RequestTimeout", "message": (
        f"the request body did not arrive within {seconds:g} s of its headers; send it at once (the connection is closed)")}}).encode()
    await send({"type": "http.response.start", "status": 408, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def raise_open_files_limit() -> int | None:
    """Lift this process's soft limit on open files to its hard limit; return the new limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65_536)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


class BearerToken:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <token>`` (401 otherwise)."""

    def __init__(self, app: Any, token: str) -> None:
        import hmac

        self.app = app
        self.expected = f"Bearer {token}".encode()
        self._same = hmac.compare_digest

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self._same(dict(scope.get("headers") or []).get(b"authorization", b""), self.expected):
            body = b'{"error": {"type": "Unauthorized", "message": "this server needs Authorization: Bearer <token>"}}'
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

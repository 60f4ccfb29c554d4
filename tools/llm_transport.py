"""The HTTP transport under the ``openai`` backend: deadlines a slow or stalled server cannot stretch.

httpx's own timeouts bound each read of the socket, so a server sending one byte a second
never trips them, not even in its status line and headers. Here every read, write and connect
is given at most what is left of the request's nearest deadline:

* ``first``: the reply must begin (connecting, the status line, the headers and the first
  piece of the body) within ``timeout`` seconds of sending the request;
* ``whole``: a reply that is not streamed must be read whole within the same ``timeout``;
* ``idle``: a streamed reply may go at most ``idle_timeout`` seconds between two pieces (it may
  take as long as it likes in all: the run's own budget bounds it).

:meth:`DeadlineTransport.fired` says which one cut the last request off, so that the error can
name the setting to raise. The transport also counts the requests sent (the SDK's retries
included), reads a streamed reply's ``data: [DONE]`` event as the server's end of the stream, and
refuses to send or read once the thread's work is abandoned (:mod:`tools.abandon`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx

from tools import abandon

__all__ = ["DeadlineTransport"]

_DONE = (b"data: [DONE]", b"data:[DONE]")


class _Request:
    """One request's clock, kept per thread (a client serves several threads at once)."""

    def __init__(self, timeout: float, idle: float, streaming: bool) -> None:
        now = time.monotonic()
        self.first = now + timeout
        self.whole = None if streaming else now + timeout
        self.idle, self.streaming = idle, streaming
        self.began = False  # the first piece of the body has arrived
        self.last = now  # when something last arrived
        self.fired: str | None = None
        self.done = False  # a `data: [DONE]` event was read

    def left(self) -> tuple[float, str]:
        """Seconds left before the nearest deadline, and its name."""
        now = time.monotonic()
        deadlines = [(self.first, "first")] if not self.began else []
        if self.whole is not None:
            deadlines.append((self.whole, "whole"))
        if self.began and self.streaming:
            deadlines.append((self.last + self.idle, "idle"))
        at, name = min(deadlines)
        return at - now, name


class DeadlineTransport(httpx.HTTPTransport):
    """An httpx transport whose requests keep the deadlines above (module docstring)."""

    def __init__(self, timeout: float, idle_timeout: float) -> None:
        super().__init__()
        self.timeout, self.idle_timeout = timeout, idle_timeout
        self.local = threading.local()
        # httpx builds its connection pool with httpcore's plain socket backend; this one is the
        # same pool (httpx's default limits) on a backend that bounds each socket operation.
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=_Backend(self),
        )

    # --- the calling thread's request ------------------------------------------------------------

    def expect_stream(self, streaming: bool) -> None:
        """Whether the requests this thread sends next ask for a streamed reply."""
        self.local.streaming = streaming
        self.local.sent = 0
        self.local.request = None

    def sent(self) -> int:
        return getattr(self.local, "sent", 0)

    def fired(self) -> str | None:
        """Which deadline cut the last request off: ``first``, ``whole`` or ``idle`` (None: none)."""
        request = getattr(self.local, "request", None)
        return request.fired if request is not None else None

    def saw_done(self) -> bool:
        """Whether the last streamed reply ended with its ``data: [DONE]`` event."""
        request = getattr(self.local, "request", None)
        return request is not None and request.done

    def current(self) -> _Request | None:
        return getattr(self.local, "request", None)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        abandon.check()  # no request, and so no retry, for work nobody waits for
        self.local.sent = self.sent() + 1
        clock = self.local.request = _Request(self.timeout, self.idle_timeout, getattr(self.local, "streaming", False))
        response = super().handle_request(request)
        response.stream = _Body(response.stream, clock)
        return response

    def cap(self, timeout: float | None, error: type[Exception]) -> float | None:
        """``timeout`` for one socket operation, cut to what is left of the nearest deadline."""
        abandon.check()
        clock = self.current()
        if clock is None:
            return timeout
        left, name = clock.left()
        if left <= 0:
            clock.fired = name
            raise error(f"the {name} deadline passed")
        clock.fired = name  # if this operation times out, it is this deadline's doing
        return left if timeout is None else min(timeout, left)

    def arrived(self, data: bytes) -> None:
        clock = self.current()
        if clock is not None and data:
            clock.last = time.monotonic()
            clock.fired = None


class _Body(httpx.SyncByteStream):
    """A reply's body as it arrives: marks the end of the first deadline, and reads the stream's
    lines for its ``data: [DONE]`` event (an event of its own, not the text anywhere in a line)."""

    def __init__(self, stream: Any, clock: _Request) -> None:
        self.stream, self.clock = stream, clock
        self.line: bytes | None = b""  # the current line, while it is short enough to be the [DONE] event

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.stream:
            self.clock.began = True
            self._scan(chunk)
            yield chunk

    def _scan(self, chunk: bytes) -> None:
        lines = chunk.split(b"\n")
        for i, part in enumerate(lines):
            line = None if self.line is None else self.line + part
            if i < len(lines) - 1:  # a line's end (the last part is the start of the next line)
                self.clock.done = self.clock.done or (line is not None and line.strip() in _DONE)
                self.line = b""
            else:
                self.line = line if line is not None and len(line) <= 16 else None

    def close(self) -> None:
        self.stream.close()


class _Backend(httpcore.NetworkBackend):
    """httpcore's socket backend, each operation bounded by the request's deadlines."""

    def __init__(self, transport: DeadlineTransport) -> None:
        self.inner = httpcore.SyncBackend()
        self.transport = transport

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        bounded = self.transport.cap(timeout, httpcore.ConnectTimeout)
        return _Stream(self.inner.connect_tcp(host, port, bounded, local_address, socket_options), self.transport)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> httpcore.NetworkStream:
        bounded = self.transport.cap(timeout, httpcore.ConnectTimeout)
        return _Stream(self.inner.connect_unix_socket(path, bounded, socket_options), self.transport)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, transport: DeadlineTransport) -> None:
        self.inner, self.transport = inner, transport

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self.inner.read(max_bytes, self.transport.cap(timeout, httpcore.ReadTimeout))
        self.transport.arrived(data)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.transport.cap(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> httpcore.NetworkStream:
        bounded = self.transport.cap(timeout, httpcore.ConnectTimeout)
        return _Stream(self.inner.start_tls(ssl_context, server_hostname, bounded), self.transport)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)

"""Who may use the service, and under which name (plain ASGI, in front of everything else).

- **Host names.** A server answers only for the names it was given (``allowed_hosts``): a web
  page whose own name was pointed at 127.0.0.1 (DNS rebinding) reaches a loopback server with
  its own name in ``Host`` and is answered 421. ``/healthz`` answers whatever the name.
- **Writes from other sites.** A write (any method but GET, HEAD, OPTIONS) that a browser says
  comes from another site (``Origin`` other than this server's own or a ``--cors-origin``, or
  ``Sec-Fetch-Site: cross-site``/``same-site``) is refused 403, unless it carries the bearer
  token: a form on another site cannot make a tokenless server run a plan.
- **The token.** With a token, API clients send ``Authorization: Bearer <token>`` as before; the
  page signs in through a form (:mod:`planvm.server.signin`) and gets a session cookie
  (HttpOnly, SameSite=Strict, Secure over https; a random id the server keeps, never the token).
  Each token belongs to one namespace (a server has one token per namespace it serves): the
  token, or the session it signed in, says which namespace a request is served in
  (:mod:`planvm.server.namespaces` keeps it there).
  A request the cookie authenticates that writes must send the session's CSRF token in
  ``X-CSRF-Token`` (403 without it). Without either, the page's addresses redirect (303) to the
  form and everything else answers 401 JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from planvm.server.guard import send_error

__all__ = [
    "CSRF_HEADER", "SIGNED", "DEFAULT_SESSION_SECONDS", "SESSION_COOKIE", "Access", "Attempts", "Gate", "HostNames", "Sessions",
    "allowed_hosts_for", "page_address",
]

SESSION_COOKIE = "planvm_session"
CSRF_HEADER = "X-CSRF-Token"
DEFAULT_SESSION_SECONDS = 12 * 3600.0
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
#: The scope key :class:`Access` puts the namespace of a request's token (or session) under.
SIGNED = "planvm.signed_namespace"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
#: The page's own addresses (the shell); anything else is the API or a file.
_PAGE_PATH = re.compile(r"/(?:library|runs/[^/\\]+)?")


# --- host names -----------------------------------------------------------------------------------


def allowed_hosts_for(bind: str, given: Sequence[str]) -> list[str] | None:
    """The names a server bound to ``bind`` answers for: ``given`` (``--allowed-host``), the bind
    address, and the loopback names (localhost, 127.0.0.1, [::1]) when it is bound to loopback
    or to every interface. None (any name): ``given`` holds ``*``, or the server is bound to
    every interface (0.0.0.0, ::) and no name is given — it has a token then (``planvm serve``
    refuses to start beyond loopback without one), and names it is reached by are unknown."""
    from planvm.connections import is_loopback

    names = [name.strip() for name in given if name.strip()]
    if "*" in names:
        return None
    everywhere = bind.strip() in _WILDCARD_BINDS
    if everywhere and not names:
        return None
    found = list(names)
    if not everywhere:
        found.append(_split(bind)[0])
    if everywhere or is_loopback(bind):
        found.extend(LOOPBACK_NAMES)
    return list(dict.fromkeys(found))


def _split(value: str) -> tuple[str, str | None]:
    """``name``, ``name:port``, ``[v6]:port`` or a bare IPv6 address: its (name, port), the name
    lower-cased, IPv6 bracketed, without a trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return "", None
        rest = value[end + 1:]
        return value[: end + 1], rest[1:] if rest.startswith(":") and rest[1:] else None
    if value.count(":") > 1:
        try:
            return f"[{ipaddress.IPv6Address(value)}]", None
        except ValueError:
            return "", None
    name, _, port = value.partition(":")
    return name.rstrip("."), port or None


class HostNames:
    """The ``Host`` values a server answers for: a name given without a port matches any port."""

    def __init__(self, names: Iterable[str]) -> None:
        self.entries = [_split(name) for name in names]

    def allows(self, host: str | None) -> bool:
        if not host:
            return False
        name, port = _split(host)
        return bool(name) and any(name == n and (p is None or p == port) for n, p in self.entries)


# --- sessions and attempts ------------------------------------------------------------------------


@dataclass(slots=True)
class Session:
    """A signed-in page: its CSRF token, when it ends (``time.monotonic()`` seconds), and the
    namespace of the token it signed in with."""

    csrf: str
    expires: float
    namespace: str = "default"


class Sessions:
    """Sessions this server process keeps: the cookie is a random id (32 bytes), kept here only as
    its SHA-256, so neither the token nor a usable id is held in the clear. They end after
    ``seconds``, on sign-out, and with the process (a restart, a new token); at most ``most``
    are kept (the oldest are dropped first)."""

    def __init__(self, seconds: float = DEFAULT_SESSION_SECONDS, *, most: int = 10_000) -> None:
        self.seconds = seconds
        self.most = most
        self._by_digest: dict[bytes, Session] = {}

    @staticmethod
    def _digest(cookie: str) -> bytes:
        return hashlib.sha256(cookie.encode("utf-8", "replace")).digest()

    def start(self, namespace: str = "default") -> tuple[str, Session]:
        now = time.monotonic()
        if len(self._by_digest) >= self.most:
            for digest, session in list(self._by_digest.items()):
                if session.expires <= now:
                    del self._by_digest[digest]
            while len(self._by_digest) >= self.most:
                del self._by_digest[next(iter(self._by_digest))]
        cookie = secrets.token_urlsafe(32)
        session = self._by_digest[self._digest(cookie)] = Session(secrets.token_urlsafe(32), now + self.seconds, namespace)
        return cookie, session

    def find(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        digest = self._digest(cookie)
        session = self._by_digest.get(digest)
        if session is not None and session.expires <= time.monotonic():
            del self._by_digest[digest]
            return None
        return session

    def end(self, cookie: str | None) -> None:
        if cookie:
            self._by_digest.pop(self._digest(cookie), None)


class Attempts:
    """Wrong tokens at the form, per client address: after ``most`` within ``window`` seconds, the
    address waits until the oldest of them is ``window`` seconds old (the right token included)."""

    def __init__(self, most: int = 10, window: float = 60.0, *, addresses: int = 10_000) -> None:
        self.most, self.window, self.addresses = most, window, addresses
        self._failures: dict[str, deque[float]] = {}

    def wait_for(self, client: str) -> float:
        """Seconds ``client`` has to wait before its next try (0: it may try now)."""
        failures = self._failures.get(client)
        if not failures:
            return 0.0
        now = time.monotonic()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return 0.0
        return failures[0] + self.window - now if len(failures) >= self.most else 0.0

    def failed(self, client: str) -> None:
        if client not in self._failures and len(self._failures) >= self.addresses:
            del self._failures[next(iter(self._failures))]
        self._failures.setdefault(client, deque(maxlen=self.most)).append(time.monotonic())

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


@dataclass
class Gate:
    """What :class:`Access` and the sign-in routes share (``app.state.gate``). ``tokens``: each
    bearer token → the namespace it belongs to (empty: the server asks for none)."""

    tokens: Mapping[str, str] = field(default_factory=dict)
    hosts: HostNames | None = None
    cors_origins: frozenset[str] = frozenset()
    sessions: Sessions = field(default_factory=Sessions)
    attempts: Attempts = field(default_factory=Attempts)

    def __post_init__(self) -> None:
        self._encoded = [(token.encode(), namespace) for token, namespace in self.tokens.items()]

    @property
    def required(self) -> bool:
        """Whether requests need a token (or a session)."""
        return bool(self._encoded)

    def namespace_of(self, given: str | bytes) -> str | None:
        """The namespace of the token ``given`` (None: no token of this server). Every token is
        compared, in constant time, whichever matches."""
        offered = given if isinstance(given, bytes) else given.encode("utf-8", "replace")
        found = None
        for token, namespace in self._encoded:
            if hmac.compare_digest(offered, token):
                found = namespace
        return found


def page_address(value: str | None) -> str:
    """``value`` when it is one of this server's page addresses (a path, with its query), else ``/``:
    where the form may send a browser once it is signed in."""
    if not value or "\\" in value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not _PAGE_PATH.fullmatch(parts.path) or value.startswith("//"):
        return "/"
    return parts.path + (f"?{parts.query}" if parts.query else "")


# --- the middleware -------------------------------------------------------------------------------


class Access:
    """ASGI middleware: the Host name, the Origin of writes, then the bearer token or the page's
    session (with its CSRF token), as the module's docstring says."""

    def __init__(self, app: Any, *, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == "/healthz":
            await self.app(scope, receive, send)
            return
        gate = self.gate
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if gate.hosts is not None and not gate.hosts.allows(host):
            await _send(send, 421, "MisdirectedRequest", _misdirected(host))
            return
        authorization = headers.get(b"authorization", b"")
        if gate.required and authorization.startswith(b"Bearer "):
            namespace = gate.namespace_of(authorization[7:])
            if namespace is not None:
                scope[SIGNED] = namespace
                await self.app(scope, receive, send)
                return
        method = scope.get("method", "GET")
        writes = method not in _SAFE_METHODS
        if writes and not self._from_here(headers, host):
            origin = headers.get(b"origin", b"").decode("latin-1")
            await _send(send, 403, "CrossSiteRequest",
                        f"a write from another site (Origin {origin!r}) is refused; use this server's page, "
                        f"a client that sends no Origin, or start the server with --cors-origin ORIGIN")
            return
        path = scope.get("path", "")
        if not gate.required or method == "OPTIONS" or path == "/signin" or path.startswith("/static/"):
            await self.app(scope, receive, send)
            return
        cookie = _cookie(headers.get(b"cookie"))
        session = gate.sessions.find(cookie)
        if session is not None:
            if writes and not hmac.compare_digest(headers.get(CSRF_HEADER.lower().encode(), b""), session.csrf.encode()):
                await _send(send, 403, "CSRFTokenMissing",
                            f"a write from the page needs its {CSRF_HEADER} header (reload the page); API clients send "
                            f"Authorization: Bearer <token> instead")
                return
            scope["planvm.session"] = (cookie, session)
            scope[SIGNED] = session.namespace
            await self.app(scope, receive, send)
            return
        if method in ("GET", "HEAD") and _PAGE_PATH.fullmatch(path):
            query = scope.get("query_string", b"").decode("latin-1")
            where = "/signin?" + urlencode({"next": path + (f"?{query}" if query else "")})
            await send({"type": "http.response.start", "status": 303, "headers": [(b"location", where.encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await _send(send, 401, "Unauthorized",
                    "this server needs Authorization: Bearer <token> (the --token it was started with), or a page signed in at /signin")

    def _from_here(self, headers: dict[bytes, bytes], host: str) -> bool:
        """Whether a write comes from this server's own page, a ``--cors-origin``, or a client that
        is no browser (no Origin). Browsers send ``Origin: null`` for their own page's writes under
        ``Referrer-Policy: no-referrer``; ``Sec-Fetch-Site`` then tells whether it is this origin."""
        origin = headers.get(b"origin", b"").decode("latin-1")
        fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
        if origin and origin in self.gate.cors_origins:
            return True
        if fetch_site in ("cross-site", "same-site"):
            return False
        if not origin:
            return True
        if origin == "null":
            return fetch_site == "same-origin"
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.strip().lower()


def _misdirected(host: str) -> str:
    if not host.strip():
        return "this server answers only requests that name it in a Host header: its address, or a name given with --allowed-host"
    name = _split(host)[0] or host.strip()
    return (f"this server does not answer for the host name {host.strip().lower()!r}; if that is its name, start it with "
            f"--allowed-host {name} (or PLANVM_ALLOWED_HOSTS, or allowed_hosts in planvm.toml)")


def _cookie(header: bytes | None) -> str | None:
    if not header:
        return None
    from starlette.requests import cookie_parser

    return cookie_parser(header.decode("latin-1")).get(SESSION_COOKIE)


async def _send(send: Any, status: int, kind: str, message: str) -> None:
    await send_error(send, status, kind, message, ((b"www-authenticate", b"Bearer"),) if status == 401 else ())

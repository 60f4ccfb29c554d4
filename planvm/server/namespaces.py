"""Which namespace a request is served in (plain ASGI, just inside :mod:`planvm.server.access`).

- ``/v1/ns/{ns}/…`` is every ``/v1/…`` route served in namespace ``ns`` (the path is rewritten to
  the plain route); the ``X-PlanVM-Namespace`` header does the same for a plain route.
- With tokens, the token (or the page's session) is the namespace: a request naming another one,
  by its URL or its header, is answered 404 with the same body whether that namespace exists or
  not. A plain route is served in the token's namespace.
- Without tokens (loopback, one user), the URL or the header picks any declared namespace (404,
  naming the declared ones, for another); a plain route is the server's own namespace.

The namespace goes on in the scope (``planvm.namespace``), where
:func:`planvm.server.deps.context` reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from planvm.server.access import SIGNED
from planvm.server.guard import send_error

__all__ = ["HEADER", "NAMESPACE", "PREFIX", "Namespaces"]

PREFIX = "/v1/ns/"
HEADER = "X-PlanVM-Namespace"
#: The scope key the namespace a request is served in goes under.
NAMESPACE = "planvm.namespace"
_HEADER_KEY = HEADER.lower().encode()


class Namespaces:
    """ASGI middleware: the namespace of a request, as the module's docstring says. ``home``: the
    server's own namespace; ``declared``: every namespace it serves; ``bound``: whether tokens
    decide (the server has tokens)."""

    def __init__(self, app: Any, *, home: str, declared: Iterable[str], bound: bool) -> None:
        self.app = app
        self.home = home
        self.declared = frozenset(declared)
        self.bound = bound

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        asked: str | None = None
        path = scope.get("path", "")
        if path.startswith(PREFIX):
            asked, scope = _unprefixed(scope)
        header = dict(scope.get("headers") or []).get(_HEADER_KEY)
        if header is not None:
            named = header.decode("latin-1").strip()
            if asked is not None and named != asked:
                await send_error(send, 422, "InvalidRequest",
                            f"the URL names namespace {asked!r} and the {HEADER} header {named!r}; name one (or the same in both)")
                return
            asked = named
        signed = scope.get(SIGNED)
        if signed is not None:  # a token's (or a session's) request: its own namespace, and no other
            if asked is not None and asked != signed:
                await send_error(send, 404, "NamespaceNotFound", _not_this_tokens(asked))
                return
            name = signed
        elif self.bound:  # what a server with tokens lets through without one (the form, files, preflights)
            name = self.home
        else:
            name = asked if asked is not None else self.home
            if name not in self.declared:
                await send_error(send, 404, "NamespaceNotFound", self._undeclared(name))
                return
        scope[NAMESPACE] = name
        await self.app(scope, receive, send)

    def _undeclared(self, name: str) -> str:
        known = ", ".join(sorted(self.declared))
        return f"no namespace {name!r} is declared here (namespaces: {known}); declare it in a [namespaces.NAME] table of planvm.toml"


def _not_this_tokens(name: str) -> str:
    # The same words whether ``name`` is another token's namespace or no namespace at all.
    return f"no namespace {name!r} for this token: a token reaches only its own namespace (use the plain /v1/ routes)"


def _unprefixed(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The namespace a ``/v1/ns/{ns}/…`` path names, and the scope with the plain ``/v1/…`` path."""
    name, slash, rest = scope["path"][len(PREFIX):].partition("/")
    scope = dict(scope, path="/v1" + slash + rest)
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw.startswith(PREFIX.encode()):
        end = raw.find(b"/", len(PREFIX))
        scope["raw_path"] = b"/v1" + (raw[end:] if end >= 0 else b"")
    return name, scope


"""``planvm serve``: the HTTP service (FastAPI), its event streams and its page."""

from planvm.server.app import create_app

__all__ = ["create_app"]

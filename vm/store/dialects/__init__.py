"""The backends a run store can live on, one :class:`~vm.store.dialects.base.Dialect` each.

:data:`DIALECTS` maps a URL scheme (``postgresql://…``) to its dialect; a file path or
``sqlite:///…`` is SQLite. To add a backend: a module here with a subclass of
:class:`~vm.store.dialects.base.ServerDialect` (or of the dialect it resembles: TiDB speaks
MySQL), one line in :data:`_BACKENDS` below, and one line in the conformance suite's backends
(``tests/databases.py``). Modules here import no driver until a store is opened.
"""

from __future__ import annotations

from typing import Any

from vm.store.dialects.base import Dialect, ServerDialect
from vm.store.dialects.mysql import MySQL
from vm.store.dialects.postgresql import PostgreSQL
from vm.store.dialects.sqlite import SQLite

__all__ = ["DIALECTS", "Dialect", "ServerDialect", "dialect_for", "every_dialect", "long_text"]

_BACKENDS: tuple[type[Dialect], ...] = (SQLite, PostgreSQL, MySQL)

#: URL scheme -> the dialect of stores at such URLs.
DIALECTS: dict[str, type[Dialect]] = {scheme: cls for cls in _BACKENDS for scheme in cls.schemes}


def dialect_for(scheme: str) -> type[Dialect] | None:
    """The dialect of a URL scheme (``mysql`` or ``mysql+pymysql``); None for one no backend takes."""
    return DIALECTS.get(scheme.partition("+")[0].lower())


def every_dialect() -> tuple[type[Dialect], ...]:
    return _BACKENDS


def long_text() -> Any:
    """The column type of long text (JSON values, goals, errors): ``TEXT``, or what a backend's
    dialect gives instead (``LONGTEXT`` on MySQL: its ``TEXT`` holds 64 KiB)."""
    import sqlalchemy as sa

    kind: Any = sa.Text()
    for dialect in _BACKENDS:
        own = dialect.long_text()
        if own is not None:
            kind = kind.with_variant(own, *dialect.sqlalchemy_names)
    return kind

"""Where a store is: a URL or a file path, the default location, and masking for messages."""

from __future__ import annotations

import os
from pathlib import Path

from vm.errors import StoreError
from vm.redact import redact

__all__ = ["default_store_path", "planvm_home", "planvm_home_source", "store_missing", "store_url"]

_SERVER_SCHEMES = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg", "mysql": "mysql+pymysql",
                   "mariadb": "mysql+pymysql", "tidb": "mysql+pymysql"}


def planvm_home() -> Path:
    """planvm's own folder: ``PLANVM_HOME``, or the user's data folder. The one place it is read;
    the run store, the knowledge base and MCP servers' logs default to places under it."""
    home = os.environ.get("PLANVM_HOME")
    if home:
        return Path(home).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("planvm"))


def planvm_home_source() -> str:
    """Where :func:`planvm_home` came from, as ``planvm config`` shows it."""
    return "PLANVM_HOME" if os.environ.get("PLANVM_HOME") else "default"


def default_store_path() -> Path:
    return planvm_home() / "runs.sqlite"


def store_url(location: str | Path | None) -> tuple[str, Path | None]:
    """(SQLAlchemy URL, SQLite file or None) for a store location: a URL or a file path."""
    if location is None:
        path = default_store_path()
        return f"sqlite:///{path}", path
    text = str(location)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return f"sqlite:///{Path(text)}", Path(text)
    base, _, driver = scheme.partition("+")
    base = base.lower()
    if base == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise StoreError(f"{text}: an SQLite store URL is sqlite:///relative/path or sqlite:////absolute/path")
        return text, Path(rest[1:])
    if base in _SERVER_SCHEMES:
        return (f"{scheme}://{rest}" if driver else f"{_SERVER_SCHEMES[base]}://{rest}"), None
    raise StoreError(
        f"'{redact(text)}' is not a store location planvm knows: give a file path, sqlite:///path, postgresql://… or "
        f"mysql://… (MariaDB and TiDB too)"
    )


def store_missing(location: str | Path | None) -> Path | None:
    """The SQLite file ``location`` names when it does not exist yet (nothing recorded there);
    None for an existing file or a database server."""
    _url, file = store_url(location)
    return file if file is not None and not file.exists() else None


def _masked(url: str) -> str:
    """The URL with its password replaced (for messages)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url

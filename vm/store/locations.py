"""Where a store is: a URL or a file path, the default location, and masking for messages."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from vm.errors import StoreError
from vm.redact import redact

__all__ = ["default_store_path", "planvm_home", "planvm_home_source", "store_missing", "store_url"]



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
    from vm.store.dialects import dialect_for

    _base, _, driver = scheme.partition("+")
    dialect = dialect_for(scheme)
    if dialect is not None and not dialect.server:
        if not rest.startswith("/") or rest == "/":
            raise StoreError(f"{text}: an SQLite store URL is sqlite:///relative/path or sqlite:////absolute/path")
        return text, Path(rest[1:])
    if dialect is not None:
        return (f"{scheme}://{rest}" if driver else f"{dialect.driver}://{rest}"), None
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


def _location_texts(location: str | None, url: str, file: Path | None, path: Any) -> tuple[list[str], list[str]]:
    """(texts naming the store, longest first; its server's host and port) to take out of messages."""
    if file is not None:
        return sorted({str(file), str(file.resolve())}, key=len, reverse=True), []
    texts = {url, str(path), _masked(url), redact(url)}
    if location:
        texts |= {location, _masked(location), redact(location)}
    hosts: list[str] = []
    try:
        import sqlalchemy as sa

        parsed = sa.engine.make_url(url)
        if parsed.host:
            if parsed.port:
                hosts.append(f"{parsed.host}:{parsed.port}")
            hosts.append(parsed.host)
        if parsed.port:
            hosts.append(str(parsed.port))
    except Exception:  # an unparsable URL fails when the store opens; nothing more to take out
        pass
    return sorted((t for t in texts if t), key=len, reverse=True), hosts


_SERVER_URL = re.compile(r"(?i)\b(?:postgres(?:ql)?|mysql|mariadb|tidb)(?:\+\w+)?://[^\s'\",;)]*[^\s'\",;):.]")
_PORT = re.compile(r"(?i),?\s*\bport\s+\d+")
_ADDRESS = re.compile(r"\(?\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b\)?|\[[0-9a-fA-F:]+\](?::\d+)?")
_SERVER = "the database server"
_REPEATED = re.compile(rf"{_SERVER}(?:\s*\(?{_SERVER}\)?)+")


def _without_location(text: str, where: tuple[list[str], list[str]], *, server: bool) -> str:
    """``text`` with the store's URL or file named "the run store", and a database server's
    ``host:port`` "the database server"."""
    texts, hosts = where
    for known in texts:
        text = text.replace(known, "the run store")
    if server:
        text = _SERVER_URL.sub("the run store", text)
        if hosts and ":" in hosts[0]:
            text = text.replace(hosts[0], _SERVER)
    return text


def _driver_text(text: str, hosts: list[str]) -> str:
    """A database driver's message without the server's host, address or port (it names where
    it tried to connect)."""
    for host in hosts:
        if host.isdigit():  # a port alone: only where it stands as one
            text = re.sub(rf"(?<![\w.]):{host}\b", "", text)
        else:
            text = re.sub(rf"[\"']?{re.escape(host)}[\"']?", _SERVER, text)
    text = _ADDRESS.sub(_SERVER, _PORT.sub("", text))
    return _REPEATED.sub(_SERVER, text)

"""MySQL and MariaDB (and TiDB, which speaks MySQL): a server; long text is ``LONGTEXT`` (MySQL's
``TEXT`` holds 64 KiB); replies wait no longer than the retry budget."""

from __future__ import annotations

from typing import Any

from vm.store.dialects.base import ServerDialect

__all__ = ["MySQL"]


class MySQL(ServerDialect):
    name = "mysql"
    schemes = ("mysql", "mariadb", "tidb")
    driver = "mysql+pymysql"
    sqlalchemy_names = ("mysql", "mariadb")

    @classmethod
    def connect_args(cls, timeout: float, retry_seconds: float) -> dict[str, Any]:
        # PyMySQL would wait for ever for a reply (its greeting too) on a lost route.
        budget = max(1.0, retry_seconds)
        return {**super().connect_args(timeout, retry_seconds), "read_timeout": budget, "write_timeout": budget}

    @classmethod
    def long_text(cls) -> Any:
        from sqlalchemy.dialects import mysql

        return mysql.LONGTEXT()

    def skip_locked(self, select: Any, *, of: Any) -> Any:
        return select.with_for_update(skip_locked=True)  # MariaDB knows no FOR UPDATE OF

    def deadlocked(self, exc: BaseException) -> bool:
        args = getattr(getattr(exc, "orig", None), "args", ())
        return bool(args) and args[0] == 1213

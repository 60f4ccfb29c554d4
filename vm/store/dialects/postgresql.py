"""PostgreSQL: a server; a status is read ``FOR NO KEY UPDATE``; the queue locks only run rows."""

from __future__ import annotations

from typing import Any

from vm.store.dialects.base import ServerDialect

__all__ = ["PostgreSQL"]


class PostgreSQL(ServerDialect):
    name = "postgresql"
    schemes = ("postgresql", "postgres")
    driver = "postgresql+psycopg"
    sqlalchemy_names = ("postgresql",)

    def lock_row(self, select: Any) -> Any:
        # FOR NO KEY UPDATE, which a step commit's foreign key check (FOR KEY SHARE) does not wait
        # for: a cancel and a step commit of one run never deadlock there.
        return select.with_for_update(key_share=True)

    def skip_locked(self, select: Any, *, of: Any) -> Any:
        # Only the runs row is locked (the lease row of a dead worker's run may be missing).
        return select.with_for_update(skip_locked=True, of=of)

    def deadlocked(self, exc: BaseException) -> bool:
        return getattr(getattr(exc, "orig", None), "sqlstate", None) == "40P01"

"""Namespaces in a store: checking a namespace's name, and its quotas (runs at once, tokens a day).

A store is opened in one namespace (``default`` unless told) and reads and writes only that
namespace's runs, steps, judgements and library entries; :meth:`vm.store.RunStore.in_namespace`
gives a view of the same database in another. A quota is held in the transaction that admits a
run (creating it, or resuming a stopped one): the namespace's row in ``namespaces`` is locked
first, so two processes admitting runs of one namespace count one after the other.
"""

from __future__ import annotations

import datetime
import re
import time
from typing import Any

from vm.errors import BadInput, QuotaExceeded, StoreError

__all__ = ["ACTIVE", "check_namespace", "today"]

#: The statuses a namespace's ``max_active_runs`` counts: runs admitted and not yet ended or stopped.
ACTIVE = ("planning", "queued", "running", "waiting")

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")


def check_namespace(name: Any) -> str:
    """``name`` when it is a usable namespace name (lower-case letters, digits, ``-`` and ``_``,
    64 characters at most, starting with a letter or digit); ``BadInput`` otherwise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadInput(f"{name!r} is not a namespace name: use lower-case letters, digits, '-' and '_' "
                       f"(64 characters at most, starting with a letter or digit), e.g. 'team-a'")
    return name


def today(now: float | None = None) -> str:
    """The day (UTC, YYYY-MM-DD) a token quota counts in."""
    return datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC).strftime("%Y-%m-%d")


def _seconds_to_midnight(now: float) -> float:
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    midnight = (moment + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - moment).total_seconds()


class Quotas:
    """The namespace operations of :class:`vm.store.RunStore` (a part of it)."""

    def _ensure_namespace_row(self) -> None:
        """The row admissions of this namespace lock (made once; made by another process too is fine)."""
        import sqlalchemy as sa

        from vm.store.database import _schema

        table = _schema().namespaces

        def body(conn: Any) -> None:
            if conn.execute(sa.select(table.c.name).where(table.c.name == self.namespace)).first() is None:
                conn.execute(table.insert().values(name=self.namespace))

        try:
            self._write(body)
        except StoreError:
            if not self._read(sa.select(table.c.name).where(table.c.name == self.namespace)):
                raise  # not another process making it first: a real failure

    @property
    def has_quota(self) -> bool:
        return self.max_active_runs is not None or self.tokens_per_day is not None

    def _lock_namespace(self, conn: Any) -> None:
        """Hold this namespace's row until the transaction ends: admissions of one namespace count
        one after the other. First in its transaction (a MySQL snapshot is taken at the first
        plain read: the count after the lock then sees every admission committed before it)."""
        if self.backend.locks_rows:
            import sqlalchemy as sa

            from vm.store.database import _schema

            ns = _schema().namespaces
            self._sql(conn, "ns-lock", lambda: self.backend.lock_row(
                sa.select(ns.c.name).where(ns.c.name == sa.bindparam("ns"))), {"ns": self.namespace})

    def _admit(self, conn: Any, *, adding: int = 1, lock: bool = True) -> None:
        """Inside an admission's transaction: hold this namespace's row (``lock``: not held yet),
        then refuse (``QuotaExceeded``) when ``adding`` more active runs would pass
        ``max_active_runs``, or when the day's tokens are spent. Nothing to do for a namespace
        without quotas."""
        if self.max_active_runs is None and self.tokens_per_day is None:
            return
        import sqlalchemy as sa

        from vm.store.database import _schema

        t = _schema()
        if lock:
            self._lock_namespace(conn)
        if self.max_active_runs is not None:
            active = self._sql(conn, "ns-active", lambda: sa.select(sa.func.count()).select_from(t.runs).where(
                t.runs.c.namespace == sa.bindparam("ns"), sa.or_(*(t.runs.c.status == s for s in ACTIVE))), {"ns": self.namespace}).fetchone()[0]
            if active + adding > self.max_active_runs:
                raise QuotaExceeded(
                    f"namespace '{self.namespace}' has {active} runs under way, its quota of runs at once is "
                    f"{self.max_active_runs}; try again when one ends (or cancel one)",
                    namespace=self.namespace, retry_after=1.0, path=str(self.path))
        if self.tokens_per_day is not None:
            used = self._tokens_used(conn)
            if used >= self.tokens_per_day:
                now = time.time()
                raise QuotaExceeded(
                    f"namespace '{self.namespace}' used its {self.tokens_per_day} tokens of today ({today(now)}, UTC); "
                    f"runs start again after midnight UTC", namespace=self.namespace,
                    retry_after=round(_seconds_to_midnight(now)), path=str(self.path))

    def _tokens_used(self, conn: Any) -> int:
        import sqlalchemy as sa

        from vm.store.database import _schema

        u = _schema().usage
        found = self._sql(conn, "usage-read", lambda: sa.select(u.c.tokens).where(
            u.c.namespace == sa.bindparam("ns"), u.c.day == sa.bindparam("d")), {"ns": self.namespace, "d": today()}).fetchone()
        return int(found[0]) if found is not None else 0

    def count_tokens(self, tokens: int) -> None:
        """Add ``tokens`` to this namespace's count of today (its own small transaction)."""
        if tokens <= 0:
            return
        import sqlalchemy as sa

        from vm.store.database import _schema

        u = _schema().usage
        params = {"ns": self.namespace, "d": today(), "n": int(tokens)}

        def body(conn: Any) -> None:
            done = self._sql(conn, "usage-add", lambda: u.update().where(
                u.c.namespace == sa.bindparam("ns"), u.c.day == sa.bindparam("d")).values(tokens=u.c.tokens + sa.bindparam("n")), params)
            if done.rowcount != 1:
                self._sql(conn, "usage-new", lambda: u.insert().values(
                    namespace=sa.bindparam("ns"), day=sa.bindparam("d"), tokens=sa.bindparam("n")), params)

        for attempt in range(3):
            try:
                self._write(body)
                return
            except StoreError:
                if attempt == 2:
                    raise  # (a first insert of the day raced by another process: its update goes through next time)

    def tokens_today(self) -> int:
        """Tokens this namespace's runs used today (UTC)."""
        def attempt() -> int:
            with self.backend.reading() as conn:
                return self._tokens_used(conn)

        return self._retrying(attempt)

    def tokens_left(self) -> int | None:
        """Tokens left of this namespace's daily quota (None: it has none)."""
        if self.tokens_per_day is None:
            return None
        return max(0, self.tokens_per_day - self.tokens_today())

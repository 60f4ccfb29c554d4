"""The :class:`RunStore`: one object over a store's parts (see :mod:`vm.store`)."""

from __future__ import annotations

from vm.store.database import Database
from vm.store.leases import Leases
from vm.store.library import Judgements
from vm.store.quotas import Quotas
from vm.store.runs import Runs
from vm.store.transfer import Transfers

__all__ = ["RunStore"]


class RunStore(Runs, Transfers, Leases, Judgements, Quotas, Database):
    """Runs and their steps in a database. Safe to share between threads and processes.

    ``location``: a URL or an SQLite file path (see :func:`store_url`). ``readonly`` opens an
    existing store only to read it (an SQLite file in a folder this process may not write
    included). ``lease_seconds``: how long a run this process executes stays its own without a
    renewal. ``retry_seconds``: how long a lost database connection is retried (with backoff)
    before an operation fails. ``owner``: the name this store's leases are taken under (default:
    ``host:pid:tag`` of this process; two stores with different owners act as two processes).
    ``namespace``: the namespace it reads and writes (default ``default``); :meth:`in_namespace`
    gives another namespace's view of the same database.

    A run's status changes only through :mod:`vm.store.lifecycle`'s table of transitions.
    """

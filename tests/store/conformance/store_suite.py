"""The store conformance suite: what every backend of the run store must do, the same tests on
each. Its backends are ``tests/databases.py``'s ``BACKENDS`` (with ``store_url_for``): adding a
backend there (one line, and its server's URL) runs this whole suite on it.

The fixtures: ``location`` (a fresh, empty store on each backend), ``store`` (lease owner "a")
and ``other`` (a second store object on the same location, lease owner "b": as another process).
Owners without a pid are judged by their leases alone, never as dead processes of this host.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.databases import BACKENDS, store_url_for
from vm.store import Store, open_store

PLAN = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": 1}}]


@pytest.fixture(params=BACKENDS)
def location(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    with store_url_for(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(location: str) -> Iterator[Store]:
    s = open_store(location, owner="a", lease_seconds=60)
    yield s
    s.close()


@pytest.fixture
def other(location: str, store: Store) -> Iterator[Store]:
    s = open_store(location, owner="b", lease_seconds=60)
    yield s
    s.close()


def expire_lease(store: Store, run_id: str) -> None:
    """What time does to a lease whose holder died: it runs out."""
    store._write(lambda conn: conn.exec_driver_sql(f"UPDATE leases SET expires_at = 0 WHERE run_id = '{run_id}'"))  # type: ignore[attr-defined]

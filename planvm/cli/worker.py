"""``planvm worker``: run queued runs from a shared store until stopped (see :mod:`planvm.worker`).

SIGTERM (or Ctrl-C) stops taking runs, lets those in flight finish for up to ``--grace-seconds``,
then gives the rest back to the queue with their completed steps kept.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import click

from planvm.cli.common import guarded, make_engine
from planvm.cli.options import engine_options
from planvm.cli.render import echo_err


@click.command()
@engine_options
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="Runs executed at once.")
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=1),
    help="A run this worker holds becomes anyone's this long after its last heartbeat (PLANVM_LEASE_SECONDS; default 30).",
)
@click.option("--poll-seconds", type=click.FloatRange(min=0.05), default=1.0, show_default=True, help="How often to look for queued runs.")
@click.option("--grace-seconds", type=click.FloatRange(min=0), default=10.0, show_default=True, help="On SIGTERM: how long runs in flight may finish.")
@click.option("--once", is_flag=True, help="Stop when the queue is empty (instead of waiting for more).")
@click.option("--namespace", metavar="NAME[,NAME...]",
              help="Serve the runs of these namespaces, taking turns, each run with its namespace's tools, models and limits "
              "(default: PLANVM_NAMESPACE, else default).")
@guarded
def worker(concurrency: int, lease_seconds: float | None, poll_seconds: float, grace_seconds: float, once: bool,
           namespace: str | None, **options: Any) -> None:
    """Run queued runs from the store (and runs whose worker died), until stopped."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING, force=True)
    logging.getLogger("planvm").setLevel(logging.INFO)  # (the worker's runs; other libraries' info, a migration's, stays out)
    options["lease_seconds"] = lease_seconds
    from planvm.worker import Worker

    names = _namespaces(namespace)
    # A worker's engine: runs stopped with it go back to the queue; on a database server, many
    # runs share this loop and none waits on the store.
    engine = make_engine({**options, "namespace": names[0] if names else None}, quiet=True, role="worker")
    try:
        runner = Worker(engine, concurrency=concurrency, poll_seconds=poll_seconds, grace_seconds=grace_seconds, once=once,
                        namespaces=names)
        served = "" if runner.namespaces == ["default"] else f" (namespace{'s' if len(runner.namespaces) > 1 else ''} {', '.join(runner.namespaces)})"
        echo_err(f"planvm worker {engine.worker_id()} on {engine.store_path()}{served}: {concurrency} run(s) at once")
        done = asyncio.run(runner.serve())
    finally:
        engine.close()
    echo_err(f"planvm worker stopped after {done} run(s)")


def _namespaces(given: str | None) -> list[str]:
    """The namespaces --namespace names (a comma-separated list); empty: the one the settings name."""
    from vm import BadInput

    if given is None:
        return []
    names = [name.strip() for name in given.split(",")]
    if not all(names):
        raise BadInput(f"--namespace {given!r} has a blank name; give names separated by commas, e.g. --namespace team-a,team-b")
    return names

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
@guarded
def worker(concurrency: int, lease_seconds: float | None, poll_seconds: float, grace_seconds: float, once: bool, **options: Any) -> None:
    """Run queued runs from the store (and runs whose worker died), until stopped."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO, force=True)
    options["lease_seconds"] = lease_seconds
    from planvm.worker import Worker

    # A worker's engine: runs stopped with it go back to the queue; on a database server, many
    # runs share this loop and none waits on the store.
    engine = make_engine(options, quiet=True, role="worker")
    echo_err(f"planvm worker {engine.worker_id()} on {engine.store_path()}: {concurrency} run(s) at once")
    runner = Worker(engine, concurrency=concurrency, poll_seconds=poll_seconds, grace_seconds=grace_seconds, once=once)
    done = asyncio.run(runner.serve())
    echo_err(f"planvm worker stopped after {done} run(s)")

"""``planvm mcp``: serve planvm to MCP clients (stdio, or streamable HTTP)."""

from __future__ import annotations

from typing import Any

import click

from planvm.cli.common import guarded, make_engine, service_token
from planvm.cli.options import (
    engine_options,
    run_options,
)
from planvm.cli.render import echo_err
from vm.errors import BadInput


@click.command(name="mcp")
@click.option("--http", "http_port", type=click.IntRange(1, 65535), help="Serve streamable HTTP on this port (path /mcp) instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="With --http: the address to listen on (beyond loopback, --token is required).")
@click.option("--token", help="With --http: require Authorization: Bearer TOKEN on every request.")
@engine_options
@run_options
@guarded
def mcp_command(http_port: int | None, host: str, token: str | None, **options: Any) -> None:
    """Serve planvm to MCP clients (stdio, or streamable HTTP with --http PORT).

    Tools: run_goal, plan_goal, validate_plan, exec_plan, get_run, replay_run, approve_run, cancel_run, with this command's
    tools, limits and run store (with --namespace NAME: that namespace's tools, runs and mcp_token)."""
    from planvm.connections import is_loopback

    token = service_token(token, options, "mcp_token")
    if http_port is not None and not is_loopback(host) and not token:
        raise BadInput(
            f"--host {host} reaches beyond this machine, and exec_plan runs plans there; give --token (or PLANVM_MCP_TOKEN) so "
            f"that only clients with the token can use it"
        )
    if token:
        from vm.redact import register_secret

        register_secret(token)
    engine = make_engine(options, quiet=True)
    from planvm.mcp.server import build_server

    server = build_server(engine)
    try:
        if http_port is None:
            server.run()
        else:
            import uvicorn

            from planvm.connections import BearerToken, BodyDeadline, deadline_protocol, quiet_server

            app: Any = server.streamable_http_app(host=host)
            if token:
                app = BearerToken(app, token)
            served = "" if engine.config.namespace == "default" else f", namespace {engine.config.namespace}"
            echo_err(f"planvm MCP server on http://{host}:{http_port}/mcp (runs in {engine.store_path()}{served})")
            quiet_server(uvicorn.Config(BodyDeadline(app, 60.0), host=host, port=http_port, log_level="warning",
                                        http=deadline_protocol(10.0, 60.0), timeout_keep_alive=5)).run()
    finally:
        engine.close()

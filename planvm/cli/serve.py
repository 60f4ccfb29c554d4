"""``planvm serve``: the HTTP service and its page, with the same tools, store and limits as ``exec``."""

from __future__ import annotations

import errno
import sys
from typing import Any

import click

from planvm.cli.common import guarded, make_engine, service_token
from planvm.cli.options import (
    engine_options,
    run_options,
)
from planvm.cli.render import echo_err
from planvm.connections import is_loopback
from vm.errors import BadInput

# How long a thread keeps the GIL while another waits for it (Python's default: 5 ms). A large
# plan is parsed, checked and stored in worker threads; the event loop takes the GIL several times
# to answer one request, and with 5 ms each time behind two busy threads /healthz waited 50-170 ms.
SWITCH_INTERVAL = 0.001


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (beyond loopback, --token is required).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port to listen on.")
@click.option("--token", help="Require Authorization: Bearer TOKEN on every path but /healthz (the token of the server's namespace; "
              "each [namespaces.NAME] table's serve_token serves that namespace).")
@click.option(
    "--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
    help="Also answer requests for this Host name (NAME or NAME:PORT, repeatable; * for any; PLANVM_ALLOWED_HOSTS, planvm.toml: "
    "allowed_hosts). Others get 421. Default: the --host address, and localhost's names on loopback; any name on 0.0.0.0 or ::.",
)
@click.option("--cors-origin", "cors_origins", multiple=True, help="Allow browser calls from this origin (repeatable; off by default).")
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1024),
    default=8 * 1024 * 1024,
    show_default=True,
    help="Largest request body accepted (413 beyond).",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 1),
    default=1,
    show_default=True,
    help="1: runs execute in this server; 0: POST /v1/runs only queues them for `planvm worker` processes.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds a client has to send a request's headers before its connection is closed.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds a client has to send a request's body, once its headers are in, before it is answered 408 and its connection closed.",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds a client may take nothing of a response (an event stream it stopped reading) before its connection is aborted.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Open connections (and requests in progress) beyond which new requests are answered 503.",
)
@engine_options
@run_options
@guarded
def serve(
    host: str, port: int, token: str | None, cors_origins: tuple[str, ...], max_body_bytes: int, workers: int,
    header_timeout: float, body_timeout: float, stall_timeout: float, max_connections: int, **options: Any
) -> None:
    """Serve planvm over HTTP: submit goals, stream runs, fork, resume, approve; a page at /."""
    import uvicorn

    from planvm.connections import BodyDeadline, deadline_protocol, quiet_server, raise_open_files_limit
    from planvm.server import create_app
    from planvm.server.access import allowed_hosts_for
    from vm.redact import register_secret

    token = service_token(token, options, "serve_token")
    tokens = namespace_tokens(options, token)
    if not is_loopback(host) and not tokens:
        raise BadInput(
            f"--host {host} reaches beyond this machine; give --token (or PLANVM_SERVE_TOKEN) so that only clients "
            f"with the token can run plans"
        )
    for secret in tokens:
        register_secret(secret)
    listening = listen(host, port)  # before anything is said: a port already taken is one error line, exit 2
    engine = make_engine(options, quiet=True, role="service")  # (--allowed-host is a setting: it reaches engine.config)
    app = create_app(engine, tokens=tokens, cors_origins=list(cors_origins), max_body_bytes=max_body_bytes, execute=workers > 0,
                     allowed_hosts=allowed_hosts_for(host, engine.config.allowed_hosts))
    port = listening.getsockname()[1]  # (the one the system chose for --port 0)
    echo_err(f"planvm serving on http://{host}:{port}/ (runs in {engine.store_path()})")
    raise_open_files_limit()
    sys.setswitchinterval(SWITCH_INTERVAL)
    config = uvicorn.Config(
        BodyDeadline(app, body_timeout), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5,
        http=deadline_protocol(header_timeout, stall_timeout), timeout_keep_alive=5, limit_concurrency=max_connections,
    )
    quiet_server(config).run(sockets=[listening])


def namespace_tokens(options: dict[str, Any], token: str | None) -> dict[str, str]:
    """Every token the server takes → the namespace it serves: each namespace's ``serve_token``,
    the server's own namespace's replaced by ``token`` (``--token``) when one is given."""
    from planvm.engine import EngineConfig

    config = EngineConfig.load(options)
    tokens = {secret: name for secret, name in config.token_namespaces("serve_token").items() if name != config.namespace}
    if token:
        if token in tokens:
            raise BadInput(f"--token is namespace {tokens[token]!r}'s serve_token too; give each namespace its own token")
        tokens[token] = config.namespace
    return tokens


def listen(host: str, port: int) -> Any:
    """A socket listening on ``host``:``port`` (``BadInput`` naming the port when it cannot be had)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise BadInput(f"cannot listen on {host}: {exc.strerror or exc}; give --host an address of this machine") from None
    family, kind, proto, _name, address = infos[0]
    listening = socket.socket(family, kind, proto)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listening.bind(address)
        listening.listen(2048)
    except OSError as exc:
        listening.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            why = "is already taken (another process listens there)" if exc.errno == errno.EADDRINUSE else "needs privileges"
            raise BadInput(f"port {port} on {host} {why}; stop that process or give another --port") from None
        raise BadInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    listening.set_inheritable(True)
    return listening

"""An MCP server for the tests, written with the SDK's server API: a few tools, one that fails,
one that is slow, one that ends the server's process (to see it started again).

    python tests/mcp_server.py            # stdio
    python tests/mcp_server.py --http N   # streamable HTTP on 127.0.0.1:N, path /mcp
"""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel

server = MCPServer("testkit")


@server.tool()
def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


class Topic(BaseModel):
    topic: str
    length: int


@server.tool()
def describe(topic: str) -> Topic:
    """A short record about a topic (structured content)."""
    return Topic(topic=topic, length=len(topic))


@server.tool(structured_output=False)
def shout(text: str) -> str:
    """The text in capitals (plain text content)."""
    return text.upper()


@server.tool()
def explode(message: str) -> str:
    """Always fails with the message (a deliberate tool error, which the client sees)."""
    raise ToolError(message)


@server.tool()
def broken() -> str:
    """Fails with an unexpected exception (the server writes its traceback to its stderr)."""
    import traceback

    try:
        raise RuntimeError("an internal bug in the testkit server")
    except RuntimeError:
        print(traceback.format_exc() * 10, file=sys.stderr, flush=True)  # a long traceback, as some servers print
        raise


@server.tool()
async def slow(seconds: float) -> str:
    """Wait, then say so."""
    await anyio.sleep(seconds)
    return f"waited {seconds} s"


@server.tool()
def crash() -> str:
    """End the server's process at once: every time with TESTKIT_CRASH_ALWAYS=1, else the first
    time only (the file TESTKIT_CRASH_MARKER names remembers it)."""
    if os.environ.get("TESTKIT_CRASH_ALWAYS") == "1":
        print("testkit: crashing on purpose", file=sys.stderr, flush=True)
        os._exit(3)
    marker = os.environ.get("TESTKIT_CRASH_MARKER")
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return "still here"


if __name__ == "__main__":
    if "--http" in sys.argv:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[sys.argv.index("--http") + 1]))
    else:
        server.run()

"""planvm: the composition root that wires vm, tools, planner and training (the ``planvm`` command
line, the service, the MCP server, workers), and :class:`Client`, the service from Python."""

from typing import Any

__all__ = ["Client", "ServiceError"]


def __getattr__(name: str) -> Any:
    # Lazy: `import planvm` (and the command line) never load httpx for the client.
    if name in __all__:
        from planvm import client

        return getattr(client, name)
    raise AttributeError(f"module 'planvm' has no attribute {name!r}")

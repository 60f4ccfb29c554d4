"""The tool of bench/serve.py (a plugin file): waits a fixed time, as a remote call would."""

import asyncio
import os

from tools import tool

DELAY = float(os.environ.get("PLANVM_BENCH_TOOL_SECONDS", "0.05"))


@tool
async def remote_call(text: str) -> str:
    """Wait like a remote service, then return the text.

    Args:
        text: What to return.
    """
    await asyncio.sleep(DELAY)
    return text

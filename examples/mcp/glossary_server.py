"""An MCP server with two tools over a small glossary, to try planvm's MCP support.

    planvm exec examples/mcp/define.json --mcp "python examples/mcp/glossary_server.py"

Any MCP server works the same way; this one is written with the MCP Python SDK's server API.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel

GLOSSARY = {
    "plan": "A JSON array of instructions (assign, jmp, calling) that the VM executes in seq_no order.",
    "seq_no": "The number that orders a plan's instructions and names the targets of jumps.",
    "output_vars": "The variables a calling instruction stores its tool's result in.",
    "final_answer": "The variable whose assignment ends a run; its value is the run's answer.",
}

server = MCPServer("glossary", instructions="Definitions of planvm's terms.")


class Definition(BaseModel):
    term: str
    definition: str
    related: list[str]


@server.tool()
def define(term: str) -> Definition:
    """The definition of a planvm term, with related terms.

    Args:
        term: The term, e.g. seq_no or output_vars.
    """
    key = term.strip().lower()
    if key not in GLOSSARY:
        raise ToolError(f"no entry for {term!r}; known terms: {', '.join(sorted(GLOSSARY))}")
    related = [other for other in GLOSSARY if other != key and other in GLOSSARY[key]]
    return Definition(term=key, definition=GLOSSARY[key], related=related)


@server.tool()
def terms() -> list[str]:
    """Every term the glossary defines."""
    return sorted(GLOSSARY)


if __name__ == "__main__":
    server.run()

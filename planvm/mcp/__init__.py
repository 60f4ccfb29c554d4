"""planvm as an MCP server (:mod:`planvm.mcp.server`); ``planvm mcp`` serves it."""

"""Tools from MCP servers: each tool a server offers joins the registry like a ``@tool`` function.

A :class:`McpServer` keeps one session to a server — a command spoken to over stdio, or a
streamable-HTTP URL — on an event loop of its own (a daemon thread), so any run, on any thread or
event loop, can call its tools. Each tool becomes an :class:`McpTool`: its parameters are the
server's input JSON Schema (checked before every call, so validation and the planner's prompt see
them), its result a value (structured content as JSON; text as text), an error reply a
:class:`McpToolError` naming server and tool (the VM reports it as ``ToolFailed``). A server that
dies is started again once; if the call fails again, the step fails; a call run again on the
restarted server is noted on its step. Calls are async tools, so the VM's concurrency and time
limits apply to them like to any other.

A server must answer ``initialize`` within ``PLANVM_MCP_TIMEOUT`` seconds (default 20), or it is
stopped and reported. What a stdio server writes to its stderr goes to a log file of its own
(``mcp-logs/NAME.log`` under the planvm home), never into the user's terminal; errors name it.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import shlex
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.registry import Tool, ToolRegistry
from vm.errors import (
    BackendUnavailable,
    BadInput,
    ToolParamsInvalid,
    ToolRegistrationError,
)

__all__ = ["McpServer", "McpSpec", "McpTool", "McpToolError", "add_mcp_tools", "parse_specs"]

_open: list[McpServer] = []


class McpToolError(RuntimeError):
    """An MCP server answered a tool call with an error, or could not be reached for it."""


@dataclass(frozen=True, slots=True)
class McpSpec:
    """One server to take tools from: ``command`` (stdio) or ``url`` (streamable HTTP)."""

    command: tuple[str, ...] = ()
    url: str | None = None
    name: str | None = None  # the prefix for its tools' names; default: the server's own name
    prefix: bool = False  # name its tools NAME_TOOL, so two servers (or a built-in) may share tool names
    env: tuple[tuple[str, str], ...] = ()
    timeout: float = 20.0  # seconds to answer `initialize` (the mcp_timeout setting, PLANVM_MCP_TIMEOUT)

    def describe(self) -> str:
        return self.url if self.url else " ".join(self.command)


def parse_specs(commands: Iterable[str] = (), urls: Iterable[str] = (), tables: Iterable[Any] = (), *, prefix: bool = False,
                timeout: float = 20.0) -> list[McpSpec]:
    """Specs from ``--mcp 'COMMAND ARGS'``, ``--mcp-url URL`` and ``[[mcp]]`` tables
    (``command`` as a string or a list, or ``url``; optional ``name``, ``prefix``, ``env``)."""
    specs = []
    for text in commands:
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise BadInput(f"--mcp {text!r}: cannot split it into a command and arguments ({exc})") from None
        if not words:
            raise BadInput("--mcp needs a command to start the server, e.g. --mcp 'python my_server.py'")
        specs.append(McpSpec(command=tuple(words), prefix=prefix, timeout=timeout))
    for url in urls:
        if not re.match(r"^https?://", url):
            raise BadInput(f"--mcp-url {url!r}: give the server's streamable-HTTP address, http://host:port/mcp")
        specs.append(McpSpec(url=url, prefix=prefix, timeout=timeout))
    for i, table in enumerate(tables):
        where = f"[[mcp]] table {i + 1} in planvm.toml"
        if not isinstance(table, dict):
            raise BadInput(f"{where}: expected a table with 'command' or 'url'")
        unknown = set(table) - {"command", "url", "name", "prefix", "env"}
        if unknown:
            raise BadInput(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; use command, url, name, prefix, env")
        command, url = table.get("command"), table.get("url")
        if (command is None) == (url is None):
            raise BadInput(f"{where}: give exactly one of 'command' (stdio) or 'url' (streamable HTTP)")
        words = shlex.split(command) if isinstance(command, str) else list(command or [])
        if command is not None and (not words or not all(isinstance(w, str) for w in words)):
            raise BadInput(f"{where}: 'command' must be a command line or a list of strings")
        env = table.get("env") or {}
        if not isinstance(env, dict):
            raise BadInput(f"{where}: 'env' must be a table of strings")
        specs.append(McpSpec(command=tuple(words), url=url, name=table.get("name"), prefix=bool(table.get("prefix", prefix)),
                             env=tuple(sorted((str(k), str(v)) for k, v in env.items())), timeout=timeout))
    return specs


def _identifier(text: str) -> str:
    name = re.sub(r"\W", "_", text).strip("_") or "tool"
    return name if not name[0].isdigit() else f"t_{name}"


class McpServer:
    """One MCP server's session, on its own event loop thread."""

    def __init__(self, spec: McpSpec) -> None:
        self.spec = spec
        self.label = spec.describe()
        self.name: str = spec.name or ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"mcp {self.label}", daemon=True)
        self._thread.start()
        self._client: Any = None
        self._runner: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self.tools: list[Any] = []
        self.restarts = 0
        self.log_path: Path | None = None if spec.url else _log_path(spec)
        self._log: Any = None
        try:
            self._run(self._connect())
        except BaseException:
            self.close()
            raise
        _open.append(self)

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _session(self, ready: asyncio.Future[None]) -> None:
        """Hold the session open until closed; ends early (the session's own task group cancels
        it) when the server goes away."""
        from mcp import Client, StdioServerParameters
        from mcp.client.stdio import stdio_client

        if self.spec.url:
            target: Any = self.spec.url
        else:
            params = StdioServerParameters(command=self.spec.command[0], args=list(self.spec.command[1:]), env=dict(self.spec.env) or None)
            target = stdio_client(params, errlog=self._open_log())
        assert self._stop is not None
        try:
            async with Client(target) as client:
                self.tools = list((await client.list_tools()).tools)
                self._client = client
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else ConnectionError("the session was cancelled"))
            if not isinstance(exc, Exception):
                raise

    async def _connect(self) -> None:
        self._stop = asyncio.Event()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # read even when no one waits any more
        self._runner = asyncio.create_task(self._session(ready))
        seconds = self.spec.timeout
        try:
            await asyncio.wait_for(asyncio.shield(ready), seconds)
        except TimeoutError:
            await self._abandon()
            raise BackendUnavailable(
                f"the MCP server {self.label} did not answer `initialize` within {seconds:g} s, so it was stopped"
                f"{self._see_log()}; check that it speaks MCP on {'that address' if self.spec.url else 'stdio'}, or raise "
                f"PLANVM_MCP_TIMEOUT"
            ) from None
        except Exception as exc:
            await self._abandon()
            raise BackendUnavailable(
                f"cannot start or reach the MCP server {self.label} ({type(exc).__name__}: {_first_line(exc)}){self._see_log()}; "
                f"check the command or address given with --mcp / --mcp-url"
            ) from None
        self._lock = self._lock or asyncio.Lock()
        info = getattr(self._client, "server_info", None)
        self.name = self.name or _identifier(getattr(info, "name", None) or self.label.split()[0].rsplit("/", 1)[-1])

    async def _abandon(self) -> None:
        """Stop a session that never became ready (its server process ends with it)."""
        if self._runner is not None:
            self._runner.cancel()
            try:
                await asyncio.wait_for(self._runner, 10)
            except BaseException:  # noqa: BLE001 - it ends one way or another
                pass
            self._runner = None

    def _open_log(self) -> Any:
        """The file a stdio server's stderr goes to: a pipe into its log (appended, rotated at a size
        cap, overlong lines cut; the first line says when it started; see :mod:`tools.mcp_log`)."""
        if self.log_path is None:
            return _server_log()
        try:
            import time

            from tools.mcp_log import CappedLog

            if self._log is not None:
                self._log.close()
            self._log = CappedLog(self.log_path, f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.label}")
            return self._log.writer
        except OSError:
            self.log_path = None
            return _server_log()

    def _see_log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:  # its end only: the file grows with every start of the server
            log.seek(max(0, log.seek(0, os.SEEK_END) - 16_384))
            text = log.read().decode("utf-8", errors="replace")
        tail = [line for line in text.splitlines()[-200:] if line.strip() and not line.startswith("--- ")]
        last = f"; its last message: {tail[-1].strip()[:200]}" if tail else ""
        return f" (its stderr is in {self.log_path}{last})"

    async def _disconnect(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._runner is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._runner), 10)
            except BaseException:  # noqa: BLE001 - a dead server's session may end any way
                self._runner.cancel()
            self._runner = None

    async def _attempt(self, name: str, arguments: dict[str, Any]) -> tuple[bool, Any]:
        """(True, result) or (True, error) when the server answered; (False, None) when the
        session ended first (the server went away)."""
        runner = self._runner
        if runner is None or runner.done():
            return False, None
        call = asyncio.ensure_future(self._client.call_tool(name, arguments))
        try:
            await asyncio.wait({call, runner}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not call.done():
                call.cancel()
        if not call.done() or call.cancelled():
            return False, None
        error = call.exception()
        if error is not None and _connection_lost(error):
            return False, None
        return True, error if error is not None else call.result()

    async def _call(self, name: str, arguments: dict[str, Any], notes: list[str] | None = None) -> Any:
        generation = self.restarts
        answered, outcome = await self._attempt(name, arguments)
        if not answered:
            # The server went away: start it again, once, and try the call again (a call that
            # failed alongside this one may have restarted it already).
            assert self._lock is not None
            async with self._lock:
                if self.restarts == generation:
                    await self._disconnect()
                    self.restarts += 1
                    try:
                        await self._connect()
                    except BackendUnavailable as exc:
                        raise McpToolError(f"MCP server {self.label} stopped during tool '{name}' and could not be started again: {exc}") from None
            if notes is not None:
                notes.append(f"the MCP server {self.label} stopped during this call; it was started again and the call "
                             f"was made once more (the first call may have had effects){self._see_log()}")
            answered, outcome = await self._attempt(name, arguments)
            if not answered:
                raise McpToolError(f"MCP server {self.label} stopped during tool '{name}', again after a restart{self._see_log()}")
        if isinstance(outcome, BaseException):
            raise McpToolError(f"MCP server {self.label}, tool '{name}': {_first_line(outcome)}")
        return outcome

    async def call(self, name: str, arguments: dict[str, Any], notes: list[str] | None = None) -> Any:
        """Call tool ``name`` from any event loop; cancelling the caller cancels the call. What
        happened on the way (a restart and a second call) is appended to ``notes``."""
        future = asyncio.run_coroutine_threadsafe(self._call(name, arguments, notes), self._loop)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        if self._loop.is_running():
            try:
                self._run(self._disconnect(), 15)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if self._log is not None:
            self._log.close()
        if self in _open:
            _open.remove(self)


def _log_path(spec: McpSpec) -> Path:
    """mcp-logs/NAME.log under the planvm home (PLANVM_HOME, or the user data folder)."""
    from vm.store.locations import planvm_home

    base = planvm_home()
    stem = spec.name or Path(spec.command[-1] if spec.command else "server").stem
    return base / "mcp-logs" / f"{_identifier(stem)}.log"


def _server_log() -> Any:
    """Where a stdio server's own messages go: this process's stderr (its real file when stderr
    is captured into something without one)."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__


def _connection_lost(exc: BaseException) -> bool:
    import anyio

    if isinstance(exc, (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, ConnectionError, EOFError)):
        return True
    from mcp import MCPError

    if isinstance(exc, MCPError):
        text = str(exc).lower()
        return "closed" in text or "connection" in text
    return isinstance(exc, BaseExceptionGroup) and any(_connection_lost(e) for e in exc.exceptions)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


@atexit.register
def _close_all() -> None:
    for server in list(_open):
        server.close()


def _value(result: Any, output_schema: dict[str, Any] | None) -> Any:
    """A tool result as a value: its structured content (unwrapped when the server wrapped a
    plain return value as ``{"result": …}``), else its text."""
    structured = getattr(result, "structured_content", None)
    if structured is not None:
        props = (output_schema or {}).get("properties") or {}
        if isinstance(structured, dict) and set(structured) == {"result"} and set(props) == {"result"}:
            return structured["result"]
        return structured
    blocks = list(getattr(result, "content", None) or [])
    texts = [b.text for b in blocks if getattr(b, "type", None) == "text"]
    if len(texts) == len(blocks):
        return "\n".join(texts) if texts else None
    return [b.text if getattr(b, "type", None) == "text" else b.model_dump(mode="json", exclude_none=True) for b in blocks]


class McpTool(Tool):
    """A tool an MCP server offers, as the VM's registry holds it."""

    def __init__(self, server: McpServer, info: Any, name: str) -> None:
        self.server = server
        self.remote_name = info.name
        self.name = name
        self.fn = self.call
        self.is_async = True
        # An MCP tool may change things unless its server says it only reads (readOnlyHint).
        self.side_effects = not bool(getattr(getattr(info, "annotations", None), "readOnlyHint", False))
        self.context_param = None
        self.description = ((info.description or "").strip() + f"\n(From the MCP server {server.name}.)").strip()
        schema = dict(info.input_schema or {"type": "object"})
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        self.schema = schema
        self.output_schema = getattr(info, "output_schema", None)
        self.__name__ = name
        self.__doc__ = self.description

    @property
    def source(self) -> str:
        return f"the MCP server {self.server.label}"

    @property
    def parameter_names(self) -> frozenset[str]:
        return frozenset(self.schema.get("properties") or {})

    @property
    def required_parameters(self) -> frozenset[str]:
        return frozenset(self.schema.get("required") or ())

    def bind(self, params: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        # Unknown parameters are refused (as for @tool functions) unless the schema says it takes any.
        open_ended = self.schema.get("additionalProperties") not in (None, False)
        unknown = [] if open_ended else sorted(set(params) - self.parameter_names)
        if unknown:
            raise ToolParamsInvalid(self.name, unknown[0], f"{unknown[0]}: not a parameter of this tool; remove it")
        errors = sorted(jsonschema.Draft202012Validator(self.schema).iter_errors(params), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            parameter = str(first.path[0]) if first.path else (self._missing(first) or None)
            details = "; ".join(f"{'.'.join(map(str, e.path)) or 'parameters'}: {e.message}" for e in errors[:5])
            raise ToolParamsInvalid(self.name, parameter, details)
        return dict(params)

    @staticmethod
    def _missing(error: Any) -> str | None:
        found = re.match(r"'([^']+)' is a required property", error.message)
        return found.group(1) if found else None

    async def call(self, bound: dict[str, Any], ctx: Any = None) -> Any:  # type: ignore[override]
        notes = getattr(ctx, "notes", None)
        result = await self.server.call(self.remote_name, bound, notes)
        if getattr(result, "is_error", False):
            raise McpToolError(f"MCP server {self.server.label}, tool '{self.remote_name}': "
                               f"{_value(result, None) or 'an error'}{self.server._see_log()}")
        return _value(result, self.output_schema)

    def parameters_schema(self) -> dict[str, Any]:
        return self.schema

    def __repr__(self) -> str:
        return f"<McpTool {self.name} from {self.server.label}>"


def add_mcp_tools(registry: ToolRegistry, specs: Iterable[McpSpec]) -> list[McpServer]:
    """Start (or reach) each server and register its tools; a name already taken is an error
    naming both sources, unless the spec asks for prefixed names."""
    servers: list[McpServer] = []
    try:
        for spec in specs:
            server = McpServer(spec)
            servers.append(server)
            registry.own(server)
            for info in server.tools:
                base = _identifier(info.name)
                name = f"{server.name}_{base}" if spec.prefix else base
                existing = registry.get(name)
                if existing is not None:
                    theirs = existing.source if isinstance(existing, McpTool) else "a built-in tool or a --plugin"
                    raise ToolRegistrationError(
                        f"the MCP server {server.label} offers a tool '{name}', and {theirs} already has one by that name; "
                        f"pass --mcp-prefix (or prefix = true in its [[mcp]] table) to name its tools {server.name}_TOOL",
                        tool_name=name,
                    )
                registry.register(McpTool(server, info, name))
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers

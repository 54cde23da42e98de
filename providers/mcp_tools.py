"""Tools from MCP servers for ``llm`` steps, through the official ``mcp`` SDK.

A step lists its servers::

    mcp_servers:
      - name: notes                              # the model sees its tools as notes__<tool>
        url: http://127.0.0.1:8931/mcp           # streamable HTTP
        headers_env: {Authorization: NOTES_MCP_AUTH}   # header -> the environment variable holding its value
        allow: [search, add]                     # only these tools (default: every tool the server lists)
      - name: files
        command: [npx, -y, "@modelcontextprotocol/server-filesystem", /srv/docs]   # stdio: a local command
        env_from: [HOME]                         # variables passed on to the command (default: PATH only)

The tool list is fetched once, when the step starts, and recorded in the step's
``state`` (``mcp_tools``): a re-executed step uses the recorded list, so the conversation
it replays is the one that was asked. Each call is checkpointed by the agent loop like a
handler tool (a ``ToolCall`` row; a recorded result is never asked again).

A header's value (a key) that a tool quotes back is replaced by ``[redacted]`` before the
result is stored or shown to the model. Each call opens its own session (initialize, call,
close): no connection outlives a call, so a worker holds nothing between model turns and a
killed worker leaves nothing open.
"""

from __future__ import annotations

import os
import re
import sys
from datetime import timedelta
from typing import Any

import anyio

from steps.handlers import PermanentError, RetryableError

from .chain import scrub

SEPARATOR = "__"
DEFAULT_TIMEOUT = 30.0


class MCPUnavailable(RetryableError):
    """The MCP server could not be reached or broke the session (transient: the step's retry policy decides)."""


def model_name(server: str, tool: str) -> str:
    """What the model sees: ``<server>__<tool>``, within the vendors' ``[A-Za-z0-9_-]{1,64}``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{server}{SEPARATOR}{tool}")[:64]


def _headers(server: dict[str, Any]) -> dict[str, str]:
    headers = {}
    for header, variable in (server.get("headers_env") or {}).items():
        value = os.environ.get(variable)
        if value is None and os.environ.get(f"{variable}_FILE"):
            try:
                with open(os.environ[f"{variable}_FILE"]) as fh:
                    value = fh.read().strip()
            except OSError:
                value = None
        if value is None:
            raise PermanentError(f"mcp_servers {server['name']!r}: headers_env {header}: {variable} is not set")
        headers[header] = value
    return headers


def _session_args(server: dict[str, Any]) -> Any:
    """The SDK's transport context for this server (streamable HTTP, or stdio for ``command``)."""
    timeout = float(server.get("timeout_seconds") or DEFAULT_TIMEOUT)
    if server.get("url"):
        from mcp.client.streamable_http import streamablehttp_client

        return streamablehttp_client(server["url"], headers=_headers(server), timeout=timeout,
                                     sse_read_timeout=timeout)
    from mcp.client.stdio import StdioServerParameters, stdio_client

    command = list(server["command"])
    env = {name: os.environ[name] for name in ["PATH", *(server.get("env_from") or [])] if name in os.environ}
    # The command's stderr goes to the process's real stderr (a Celery worker replaces sys.stderr
    # with a logging proxy that has no file descriptor).
    errlog = sys.__stderr__ if sys.__stderr__ is not None else open(os.devnull, "w")  # noqa: SIM115
    return stdio_client(StdioServerParameters(command=command[0], args=command[1:], env=env), errlog=errlog)


async def _with_session(server: dict[str, Any], work: Any) -> Any:
    from mcp import ClientSession

    timeout = float(server.get("timeout_seconds") or DEFAULT_TIMEOUT)
    async with _session_args(server) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write, read_timeout_seconds=timedelta(seconds=timeout)) as session:
            await session.initialize()
            return await work(session)


def _run(server: dict[str, Any], work: Any) -> Any:
    try:
        return anyio.run(_with_session, server, work)
    except (PermanentError, RetryableError):
        raise
    except BaseException as exc:  # noqa: BLE001 — SDK and transport errors arrive wrapped in exception groups
        if isinstance(exc, KeyboardInterrupt | SystemExit) or type(exc).__name__ in ("StepTimeout",):
            raise
        inner = exc
        while isinstance(inner, BaseExceptionGroup) and inner.exceptions:
            inner = inner.exceptions[0]
        if type(inner).__name__ == "StepTimeout":
            raise inner from None
        raise MCPUnavailable(f"mcp server {server['name']!r}: {type(inner).__name__}: {inner}") from None


def list_tools(server: dict[str, Any]) -> list[dict[str, Any]]:
    """The server's tools (only those in ``allow`` when given): ``{name, server, tool, description, parameters}``."""

    async def work(session: Any) -> list[Any]:
        tools: list[Any] = []
        cursor = None
        while True:
            page = await session.list_tools(cursor=cursor) if cursor else await session.list_tools()
            tools.extend(page.tools)
            cursor = getattr(page, "nextCursor", None)
            if not cursor:
                return tools

    allow = server.get("allow")
    listed = _run(server, work)
    found = {t.name for t in listed}
    missing = [name for name in allow or [] if name not in found]
    if missing:
        raise PermanentError(f"mcp_servers {server['name']!r}: allow names tools the server does not list: "
                             f"{', '.join(missing)} (it lists: {', '.join(sorted(found)) or 'none'})")
    return [{"name": model_name(server["name"], t.name), "server": server["name"], "tool": t.name,
             "description": t.description or "", "parameters": t.inputSchema or {"type": "object", "properties": {}}}
            for t in listed if allow is None or t.name in allow]


def call_tool(server: dict[str, Any], tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Call one tool. A result the server marks ``isError`` raises PermanentError (the model sees it);
    an unreachable server raises MCPUnavailable (the step's retry policy decides)."""

    async def work(session: Any) -> Any:
        return await session.call_tool(tool, arguments)

    result = _run(server, work)
    secrets = list(_headers(server).values()) if server.get("url") else []
    texts = [scrub(block.text, secrets) for block in result.content if getattr(block, "type", "") == "text"]
    if result.isError:
        raise PermanentError("; ".join(texts) or f"tool {tool} failed")
    output: dict[str, Any] = {"content": "\n".join(texts)}
    if result.structuredContent is not None:
        output["structured"] = scrub(result.structuredContent, secrets)
    others = [block.type for block in result.content if getattr(block, "type", "") != "text"]
    if others:
        output["other_content"] = others  # images, resources: named, not stored
    return output

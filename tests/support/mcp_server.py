"""A real MCP server built with the official SDK (FastMCP), for the MCP-tool tests.

In the test process: :class:`MCPServer` serves streamable HTTP on 127.0.0.1 (uvicorn in a
thread) and counts every tool call it answers (``count("add")``), keeping the request
headers each call came with. As a command (``python -m tests.support.mcp_server --stdio
--ledger PATH``) it speaks stdio and appends one line per call to the ledger.

Tools: ``add(a, b)`` (structured result), ``shout(text)``, ``fail(reason)`` (an error
result), ``whoami()`` (the Authorization header it received), ``slow(seconds)`` (answers
after that long).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections import Counter
from typing import Any

import anyio
from mcp.server.fastmcp import Context, FastMCP


def build(record: Any) -> FastMCP:
    server = FastMCP("stevora-test-tools", host="127.0.0.1")

    @server.tool(description="Add two integers")
    def add(a: int, b: int) -> dict[str, int]:
        record("add", None)
        return {"sum": a + b}

    @server.tool(description="The text in capitals")
    def shout(text: str) -> str:
        record("shout", None)
        return text.upper()

    @server.tool(description="Always fails")
    def fail(reason: str) -> str:
        record("fail", None)
        raise ValueError(f"refused: {reason}")

    @server.tool(description="Take a while, then say done")
    async def slow(seconds: float) -> str:
        record("slow", None)
        await anyio.sleep(seconds)
        return "done"

    @server.tool(description="The Authorization header of this request")
    def whoami(ctx: Context) -> str:
        request = ctx.request_context.request
        header = request.headers.get("authorization", "") if request is not None else ""
        record("whoami", header)
        return header or "(none)"

    return server


class MCPServer:
    def __init__(self) -> None:
        import uvicorn

        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.headers: list[str] = []
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        app = build(self._record).streamable_http_app()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="mcp-server", daemon=True)

    def _record(self, tool: str, header: str | None) -> None:
        with self.lock:
            self.calls[tool] += 1
            if header is not None:
                self.headers.append(header)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> MCPServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def count(self, tool: str) -> int:
        with self.lock:
            return self.calls[tool]

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.headers.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description="The MCP test server over stdio")
    parser.add_argument("--stdio", action="store_true", help="speak MCP on stdin/stdout")
    parser.add_argument("--ledger", required=True, help="file to append one line per tool call to")
    args = parser.parse_args()

    def record(tool: str, header: str | None) -> None:
        with open(args.ledger, "a") as fh:
            fh.write(tool + "\n")

    build(record).run("stdio")


if __name__ == "__main__":
    main()

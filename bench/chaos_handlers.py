"""The chaos run's handler (loaded via STEVORA_HANDLER_MODULES=bench.chaos_handlers).

Each call is a side effect the engine cannot undo: one ``start`` line when the handler
begins and one ``end`` line just before it returns, appended to the ledger file named by
``CHAOS_LEDGER``. Writes are O_APPEND of one short line, so lines from processes killed
at any moment never interleave; the engine's transactions do not cover them, which is
the point: the ledger shows every execution, committed or not.
"""

from __future__ import annotations

import os
import time
from typing import Any

from steps.handlers import StepContext, handler


def _append(line: str) -> None:
    path = os.environ.get("CHAOS_LEDGER")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@handler("chaos.work")
def work(ctx: StepContext) -> dict[str, Any]:
    """Record the start, work for ``config.seconds``, record the end."""
    seconds = float((ctx.config or {}).get("seconds", 0.1))
    _append(f"start {ctx.run_id} {ctx.key} {ctx.attempt} {os.getpid()} {time.time():.6f}")
    time.sleep(seconds)
    _append(f"end {ctx.run_id} {ctx.key} {ctx.attempt} {os.getpid()} {time.time():.6f}")
    return {"key": ctx.key, "attempt": ctx.attempt, "pid": os.getpid()}

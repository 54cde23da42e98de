"""Handlers for the engine-overhead benchmark (loaded via STEVORA_HANDLER_MODULES=bench.handlers)."""

from __future__ import annotations

import os
import time
from typing import Any

from steps.handlers import StepContext, handler


@handler("bench.noop")
def noop(ctx: StepContext) -> None:
    """Does nothing: the step's whole cost is the engine's."""
    return None


@handler("bench.long")
def long_step(ctx: StepContext) -> dict[str, Any]:
    """Append ``<attempt> <pid> <unix time>`` to ``config.marker``; sleep on the first attempt only."""
    config = ctx.config or {}
    fd = os.open(config["marker"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ctx.attempt} {os.getpid()} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)
    if ctx.attempt == 1:
        time.sleep(float(config.get("seconds", 300)))
    return {"attempt": ctx.attempt}


def _tell_the_bench(sender: Any, run_id: Any, status: str, **_: Any) -> None:
    """Push finished runs to Redis so the driver blocks (BLPOP) instead of polling the
    database, just as it waits for the raw chain's last task. One RPUSH per run."""
    global _redis
    if status not in ("completed", "failed", "cancelled"):
        return
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(os.environ["BENCH_BROKER_URL"])
    _redis.rpush(DONE_KEY, f"{run_id} {status}")


_redis: Any = None
DONE_KEY = f"{os.environ.get('STEVORA_QUEUE', 'stevora-bench')}:done"
if os.environ.get("BENCH_BROKER_URL"):
    from runs.signals import run_status_changed

    run_status_changed.connect(_tell_the_bench, weak=False, dispatch_uid="bench-done")

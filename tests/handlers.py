"""Handlers used by the test suite (STEVORA_HANDLER_MODULES includes tests.handlers)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from steps.handlers import PermanentError, RetryableError, StepContext, handler


def _append(path: str, line: str) -> None:
    # O_APPEND writes of one short line are atomic across processes.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@handler("test.ledger")
def ledger(ctx: StepContext) -> dict[str, Any]:
    """Sleep ``sleep`` seconds, then append ``<run> <key> <attempt>`` to the ledger file."""
    config = ctx.config or {}
    if config.get("started"):
        _append(config["started"], f"{ctx.run_id} {ctx.key} {ctx.attempt}")
    time.sleep(float(config.get("sleep", 0)))
    if config.get("ledger"):
        _append(config["ledger"], f"{ctx.run_id} {ctx.key} {ctx.attempt}")
    return {"step": ctx.key, "attempt": ctx.attempt, "value": config.get("value")}


@handler("test.fail_times")
def fail_times(ctx: StepContext) -> dict[str, Any]:
    """Fail the first ``times`` attempts with a retryable error."""
    times = int((ctx.config or {}).get("times", 1))
    if ctx.attempt <= times:
        raise RetryableError(f"transient failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@handler("test.permanent")
def permanent(ctx: StepContext) -> None:
    raise PermanentError((ctx.config or {}).get("message", "this cannot work"))


@handler("test.crash")
def crash(ctx: StepContext) -> None:
    raise ValueError("unexpected bug in handler")


@handler("test.sleep")
def sleep(ctx: StepContext) -> dict[str, Any]:
    seconds = float((ctx.config or {}).get("seconds", 0))
    time.sleep(seconds)
    return {"slept": seconds}


@handler("test.value")
def value(ctx: StepContext) -> Any:
    """Return ``config.value`` (or the map item) as the output."""
    config = ctx.config or {}
    return config.get("value", ctx.item)


@handler("test.not_json")
def not_json(ctx: StepContext) -> Any:
    return {"when": object()}


@handler("test.slow_first")
def slow_first(ctx: StepContext) -> dict[str, Any]:
    """Sleep ``seconds`` on the first ``times`` attempts (to run into a timeout), then answer."""
    config = ctx.config or {}
    if ctx.attempt <= int(config.get("times", 1)):
        time.sleep(float(config.get("seconds", 5)))
    return {"attempt": ctx.attempt}


@handler("test.swallow")
def swallow(ctx: StepContext) -> dict[str, Any]:
    """Sleep ``seconds`` inside a broad ``except Exception`` (the kind that would swallow a timeout)."""
    try:
        time.sleep(float((ctx.config or {}).get("seconds", 5)))
    except Exception as exc:
        return {"swallowed": type(exc).__name__}
    return {"swallowed": None}


@handler("test.nan")
def nan(ctx: StepContext) -> Any:
    """Output that json.dumps accepts by default but JSON (and PostgreSQL's jsonb) does not."""
    return {"ratio": float("nan")}


@handler("test.stubborn")
def stubborn(ctx: StepContext) -> dict[str, Any]:
    """Ignore every attempt to stop it (a timeout included) for ``seconds``, then answer."""
    config = ctx.config or {}
    if config.get("started"):
        _append(config["started"], f"{ctx.run_id} {ctx.key} {ctx.attempt}")
    until = time.monotonic() + float(config.get("seconds", 30))
    while time.monotonic() < until:
        try:
            time.sleep(0.05)
        except BaseException:  # noqa: B036 - the point: a handler that swallows everything
            pass
    if config.get("ledger"):
        _append(config["ledger"], f"{ctx.run_id} {ctx.key} {ctx.attempt} late")
    return {"late": True, "attempt": ctx.attempt}

@handler("test.gate")
def gate(ctx: StepContext) -> dict[str, Any]:
    """Append ``start <run> <key> <attempt> <pid> <worker>`` to ``config.ledger``; on the first
    ``block_attempts`` attempts wait until the file ``config.gate`` exists; then append the
    ``end`` line. ``<worker>`` is the TEST_WORKER_NAME its worker was started with."""
    config = ctx.config or {}
    worker = os.environ.get("TEST_WORKER_NAME", "-")
    _append(config["ledger"], f"start {ctx.run_id} {ctx.key} {ctx.attempt} {os.getpid()} {worker}")
    if ctx.attempt <= int(config.get("block_attempts", 1)):
        while not os.path.exists(config["gate"]):
            time.sleep(0.05)
    _append(config["ledger"], f"end {ctx.run_id} {ctx.key} {ctx.attempt} {os.getpid()} {worker}")
    return {"worker": worker, "attempt": ctx.attempt, "pid": os.getpid()}


@handler("test.log_lines")
def log_lines(ctx: StepContext) -> dict[str, Any]:
    """Logs through the step's own logger and through a plain library logger."""
    ctx.log.info("step logger line %s", ctx.key)
    logging.getLogger("stevora.test.library").warning("library line with no step in its arguments")
    return {"logged": 2}

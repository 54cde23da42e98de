"""Handlers and the in-process "broker" of the engine's property test
(``tests/test_engine_properties.py``).

The test drives the engine in its own process: it rings the doorbells itself, so it can
lose, duplicate and reorder them, and it makes attempts die at the engine's named fault
points. What the handlers and the engine hand over lives here, module-level, so the
handler thread (``runs.engine.timeouts`` runs handlers on a thread of their own) and the
test see the same lists.

- ``LEDGER``: one ``(run id, step key, attempt)`` per handler execution, appended before
  the handler does anything else. A step whose result was committed at attempt ``n`` must
  never appear again with an attempt above ``n``.
- ``BELLS`` / ``WAKES``: the step ids the engine published (``dispatch_steps``) and the
  timer wake-ups it scheduled (``dispatch_wakes``), in order.
- ``ARMED``: fault points that kill the next attempt to reach them. The attempt "dies" by
  raising ``AttemptDied``, a ``BaseException``: the handler thread hands it back to the
  claiming thread as it is, the engine's ``except Exception`` clauses let it through, and
  whatever the dead process would have left behind (a running step with a lease, a
  commit whose effects never happened) stays behind.
"""

from __future__ import annotations

from typing import Any

from steps.handlers import RetryableError, StepContext, handler

LEDGER: list[tuple[str, str, int]] = []
BELLS: list[int] = []
WAKES: list[int] = []
ARMED: set[str] = set()


class AttemptDied(BaseException):
    """The process running this attempt died here (a SIGKILL, in-process)."""


def fault(name: str) -> None:
    """A fault point (``runs.engine.faults.fault_point``'s stand-in): die here if armed."""
    if name in ARMED:
        ARMED.discard(name)
        raise AttemptDied(name)


def ring(step_ids: list[int], countdowns: list[tuple[int, float]] | None = None, **_: Any) -> None:
    """``dispatch.dispatch_steps``'s stand-in: the message goes into ``BELLS``."""
    fault("before_publish")
    BELLS.extend(step_ids)
    BELLS.extend(step_id for step_id, _ in countdowns or [])


def ring_wakes(wakes: list[tuple[int, float]]) -> None:
    """``dispatch.dispatch_wakes``'s stand-in."""
    WAKES.extend(step_id for step_id, _ in wakes)


def reset() -> None:
    for box in (LEDGER, BELLS, WAKES):
        box.clear()
    ARMED.clear()


def _executed(ctx: StepContext) -> dict[str, Any]:
    LEDGER.append((ctx.run_id, ctx.key, ctx.attempt))
    fault("handler")  # the attempt dies between its claim and its commit
    config = ctx.config or {}
    if ctx.attempt <= int(config.get("fail", 0)):
        raise RetryableError(f"planned failure on attempt {ctx.attempt}")
    return config


@handler("prop.work")
def work(ctx: StepContext) -> dict[str, Any]:
    """``{"v": config.v}`` after failing the first ``config.fail`` attempts."""
    return {"v": _executed(ctx)["v"]}


@handler("prop.visit")
def visit(ctx: StepContext) -> dict[str, Any]:
    """A loop body: ``{"visit": n, "v": config.v}``, n read from the key (``body``, ``body#2``, ...)."""
    config = _executed(ctx)
    _, _, number = ctx.key.partition("#")
    return {"visit": int(number or 1), "v": config["v"]}


@handler("prop.item")
def item(ctx: StepContext) -> dict[str, Any]:
    """A map item: ``{"x": item, "i": index}``."""
    _executed(ctx)
    return {"x": ctx.item, "i": ctx.index}


@handler("prop.collect")
def collect(ctx: StepContext) -> Any:
    """The last step: its config templates every earlier block's output; it returns them."""
    return _executed(ctx).get("parts", {})

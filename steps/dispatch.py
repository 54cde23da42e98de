"""Ringing the doorbell: publishing step ids to Celery after commit.

A publish that fails is logged and forgotten: the step's row says it is ready, and
the reconciler rings again. In the embedded default the broker lives inside the
engine process, so other processes (CLI, web) do not publish at all; the engine's
reconciler finds their ready steps by polling.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from celery import group
from django.conf import settings

logger = logging.getLogger("stevora.dispatch")

_engine_process = False


def mark_engine_process() -> None:
    """Called by ``runengine``: this process hosts the embedded broker."""
    global _engine_process
    _engine_process = True


def can_publish() -> bool:
    return _engine_process or not settings.IS_EMBEDDED_BROKER


def fault_point(name: str) -> None:
    """Crash tests: SIGKILL this process at a named point (STEVORA_FAULT_POINT).

    With STEVORA_FAULT_ONCE_FILE set, only the first process to get there dies (it
    creates the file first), so a prefork pool's replacement child carries on.
    """
    if settings.STEVORA["FAULT_POINT"] != name:
        return
    once = os.environ.get("STEVORA_FAULT_ONCE_FILE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    logger.warning("fault point %s reached: killing process %s", name, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


def dispatch_steps(step_ids: list[int], countdowns: list[tuple[int, float]] | None = None) -> None:
    if not step_ids and not countdowns:
        return
    fault_point("before_publish")
    if not can_publish():
        return
    from .tasks import run_step

    try:
        if len(step_ids) == 1:
            run_step.apply_async((step_ids[0],))
        elif step_ids:
            # Fan-out: one group; the join is decided in the database, never in a chord.
            group(run_step.si(step_id) for step_id in step_ids).apply_async()
        for step_id, delay in countdowns or []:
            if settings.IS_EMBEDDED_BROKER:
                # The embedded worker runs countdown messages on Celery's timer thread, where
                # a step's timeout cannot interrupt it; publish when due, for the main thread.
                timer = threading.Timer(max(0.0, delay), _publish_later, args=(step_id,))
                timer.daemon = True
                timer.start()
            else:
                run_step.apply_async((step_id,), countdown=max(0.0, delay))
    except Exception:  # broker down: the reconciler re-publishes from the rows
        logger.exception("publishing steps %s failed; the reconciler will retry", step_ids)


def _publish_later(step_id: int) -> None:
    from .tasks import run_step

    try:
        run_step.apply_async((step_id,))
    except Exception:
        logger.exception("publishing step %s failed; the reconciler will retry", step_id)


def dispatch_wakes(wakes: list[tuple[int, float]]) -> None:
    if not wakes or not can_publish():
        return
    from .tasks import wake_step

    for step_id, delay in wakes:
        try:
            wake_step.apply_async((step_id,), countdown=max(0.0, delay))
        except Exception:
            logger.exception("publishing wake of step %s failed; the timer sweep will wake it", step_id)

"""Ringing the doorbell: publishing step ids to Celery after commit.

A publish that fails is logged and forgotten: the step's row says it is ready, and
the reconciler rings again. In the embedded default the broker lives inside the
engine process, so other processes (CLI, web) do not publish at all; the engine's
reconciler finds their ready steps by polling.

Tasks are sent by name (``tasks.RUN_STEP``): the message is all a publisher needs.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from celery import current_app
from django.conf import settings

from steps.models import StepExecution, StepStatus

from .faults import fault_point

logger = logging.getLogger("stevora.dispatch")

RUN_STEP = "steps.run_step"
WAKE_STEP = "steps.wake_step"

_engine_process = False


def mark_engine_process() -> None:
    """Called by ``runengine``: this process hosts the embedded broker."""
    global _engine_process
    _engine_process = True


def can_publish() -> bool:
    return _engine_process or not settings.IS_EMBEDDED_BROKER


# The doorbell of a step recovered from a dead worker goes ahead of the queue (Redis serves
# priority 0 first, RabbitMQ 9: settings.STEVORA_URGENT_PRIORITY), so it does not wait behind
# a backlog a second time. (Replacements of lost doorbells take an ordinary place:
# recovery.redispatch_ready.)
URGENT = settings.STEVORA_URGENT_PRIORITY
# Every other doorbell names its priority too: ``send_task`` by name does not apply
# ``task_default_priority`` (a task's own options do), and a message without one lands in
# Redis's priority-0 list, the urgent one, where nothing would go ahead of it.
NORMAL = settings.CELERY_TASK_DEFAULT_PRIORITY


def broker_priority(priority: int) -> int:
    """The Celery message priority of a step whose run has ``priority`` (-100..100, higher
    first): NORMAL (the default level, 3) for 0; otherwise a band between NORMAL and
    URGENT for positive priorities, below NORMAL for negative ones. URGENT itself is
    left to the reconciler's doorbells. Redis serves 0 first (``priority_steps`` 0..9 in
    settings), RabbitMQ 9."""
    if priority == 0:
        return NORMAL
    if settings.IS_AMQP_BROKER:  # 9 urgent, 4..8 above the default 3, 0..2 below
        return NORMAL + min(5, 1 + (priority - 1) // 20) if priority > 0 else NORMAL - min(3, 1 + (-priority - 1) // 34)
    # Redis (and the embedded transport): 0 urgent, 1..2 above the default 3, 4..9 below.
    return NORMAL - (1 if priority <= 50 else 2) if priority > 0 else NORMAL + min(6, 1 + (-priority - 1) // 17)


def _send(name: str, step_id: int, countdown: float | None = None, priority: int = NORMAL) -> None:
    current_app.send_task(name, (step_id,), countdown=countdown, priority=priority)


def dispatch_steps(step_ids: list[int], countdowns: list[tuple[int, float]] | None = None, *,
                   urgent: bool = False, priorities: dict[int, int] | None = None) -> None:
    """Ring the doorbells of ``step_ids`` now and of ``countdowns`` (step id, seconds) later
    (``priorities``: their runs' priority, where not 0: rung now first, and every doorbell
    with ``broker_priority``)."""
    if not step_ids and not countdowns:
        return
    run_priority = priorities or {}
    if run_priority and not urgent:
        step_ids = sorted(step_ids, key=lambda step_id: -run_priority.get(step_id, 0))
    fault_point("before_publish")
    if not can_publish():
        return
    try:
        if urgent:
            for step_id in step_ids:
                _send(RUN_STEP, step_id, priority=URGENT)
        elif len(step_ids) == 1:
            _send(RUN_STEP, step_ids[0], priority=broker_priority(run_priority.get(step_ids[0], 0)))
        elif step_ids:
            # Many doorbells (a fan-out, a batch start, a bulk decision): one message each, sent
            # through one Redis pipeline where kombu offers publish batches (one round trip per
            # thousand instead of one each). The join is decided in the database, never in a chord.
            with current_app.producer_or_acquire() as producer:
                batch = getattr(producer, "batch", None)
                with batch() if batch is not None else contextlib.nullcontext():
                    for step_id in step_ids:
                        current_app.send_task(RUN_STEP, (step_id,), producer=producer,
                                              priority=broker_priority(run_priority.get(step_id, 0)))
        for step_id, delay in countdowns or []:
            priority = broker_priority(run_priority.get(step_id, 0))
            if settings.IS_EMBEDDED_BROKER:
                # The embedded worker runs countdown messages on Celery's timer thread; publish
                # when due instead, so the step runs on the worker like any other.
                timer = threading.Timer(max(0.0, delay), _publish_later, args=(step_id, priority))
                timer.daemon = True
                timer.start()
            else:
                _send(RUN_STEP, step_id, countdown=max(0.0, delay), priority=priority)
    except Exception:  # broker down: the reconciler re-publishes from the rows
        logger.exception("publishing steps %s failed; the reconciler will retry", step_ids)
        _not_rung([*step_ids, *(step_id for step_id, _ in countdowns or [])])


def _not_rung(step_ids: list[int]) -> None:
    """The rows said these doorbells were rung; they were not. Say so, so the reconciler's
    next sweep rings them as soon as the broker answers, not a redispatch interval later."""
    try:
        StepExecution.objects.filter(pk__in=step_ids, status=StepStatus.READY).update(dispatched_at=None)
    except Exception:  # the database is down too: the redispatch interval will do
        logger.exception("could not mark steps %s as not rung", step_ids)


def _publish_later(step_id: int, priority: int) -> None:
    try:
        _send(RUN_STEP, step_id, priority=priority)
    except Exception:
        logger.exception("publishing step %s failed; the reconciler will retry", step_id)


def dispatch_wakes(wakes: list[tuple[int, float]]) -> None:
    if not wakes or not can_publish():
        return
    for step_id, delay in wakes:
        try:
            _send(WAKE_STEP, step_id, countdown=max(0.0, delay))
        except Exception:
            logger.exception("publishing wake of step %s failed; the timer sweep will wake it", step_id)

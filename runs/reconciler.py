"""The reconciler: rebuilds what a lost message, a dead worker or a due timer left behind.

Run every few seconds by beat (``steps.reconcile``) or by ``runengine``. Each sweep:

1. running steps whose lease expired go back to ready (counted in ``recovery_count``;
   dead-lettered by the executor past ``STEVORA_MAX_RECOVERIES``);
2. ready steps whose doorbell is overdue (or was never rung) are published again;
3. waiting steps whose ``wake_at`` passed are woken (timer done, approval or event timeout).

Every change is a guarded update under the run's lock, so two sweeps at once (or a
sweep racing a worker) change each row at most once. On PostgreSQL an advisory lock
also keeps a second concurrent sweep from doing the same work twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from steps import types as step_types
from steps.dispatch import can_publish, dispatch_steps
from steps.models import StepExecution, StepStatus

from . import engine
from .models import RunStatus

logger = logging.getLogger("stevora.reconciler")

_ADVISORY_KEY = 0x5E7E_0A1A
_BATCH = 500
_LIVE_RUNS = (RunStatus.RUNNING, RunStatus.WAITING)


@contextmanager
def _single_sweeper() -> Iterator[bool]:
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_ADVISORY_KEY])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [_ADVISORY_KEY])


def sweep() -> dict[str, Any]:
    with _single_sweeper() as acquired:
        if not acquired:
            return {"skipped": True}
        return {
            "recovered": recover_expired_leases(),
            "redispatched": redispatch_ready(),
            "woken": wake_due(),
        }


def recover_expired_leases() -> int:
    t = timezone.now()
    rows = list(StepExecution.objects.filter(status=StepStatus.RUNNING, lease_until__lt=t)
                .values_list("id", "run_id")[:_BATCH])
    recovered = 0
    for step_id, run_id in rows:
        with transaction.atomic():
            run = engine.lock_run(run_id)
            row = StepExecution.objects.filter(pk=step_id, status=StepStatus.RUNNING, lease_until__lt=t).first()
            if row is None:
                continue
            fx = engine.Effects()
            dispatch = run.status in _LIVE_RUNS and can_publish()
            StepExecution.objects.filter(pk=row.pk, status=StepStatus.RUNNING, lease_owner=row.lease_owner,
                                         attempt=row.attempt).update(
                status=StepStatus.READY, lease_owner="", lease_until=None, not_before=None,
                recovery_count=row.recovery_count + 1, dispatched_at=t if dispatch else None,
            )
            fx.event(run.pk, "step_recovered", row.key,
                     message=f"lease of {row.lease_owner} expired during attempt {row.attempt}",
                     data={"attempt": row.attempt, "worker": row.lease_owner,
                           "recovery_count": row.recovery_count + 1})
            if dispatch:
                fx.dispatch.append(row.pk)
            fx.flush()
            recovered += 1
    if recovered:
        logger.info("recovered %d step(s) whose lease expired", recovered)
    return recovered


def redispatch_ready() -> int:
    if not can_publish():
        return 0
    t = timezone.now()
    overdue = t - timedelta(seconds=settings.STEVORA["REDISPATCH_SECONDS"])
    rows = list(
        StepExecution.objects.filter(status=StepStatus.READY, run__status__in=_LIVE_RUNS)
        .filter(Q(not_before__isnull=True) | Q(not_before__lte=t))
        .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=overdue))
        .order_by("id").values_list("id", "run_id", "key", "dispatched_at")[:_BATCH]
    )
    if not rows:
        return 0
    ids = [r[0] for r in rows]
    lost = [r for r in rows if r[3] is not None]
    with transaction.atomic():
        StepExecution.objects.filter(pk__in=ids, status=StepStatus.READY).update(dispatched_at=t)
        fx = engine.Effects()
        for _, run_id, key, _ in lost:
            fx.event(run_id, "step_redispatched", key, message="doorbell overdue; published again")
        fx.flush()
    dispatch_steps(ids)
    return len(ids)


def wake_due() -> int:
    t = timezone.now()
    ids = list(StepExecution.objects.filter(status=StepStatus.WAITING, wake_at__lte=t,
                                            run__status__in=_LIVE_RUNS)
               .values_list("id", flat=True)[:_BATCH])
    return sum(1 for step_id in ids if wake_step(step_id))


def wake_step(step_id: int) -> bool:
    """Wake one waiting step whose ``wake_at`` has passed (no-op otherwise)."""
    t = timezone.now()
    with transaction.atomic():
        run_id = StepExecution.objects.filter(pk=step_id).values_list("run_id", flat=True).first()
        if run_id is None:
            return False
        run = engine.lock_run(run_id)
        row = StepExecution.objects.get(pk=step_id)
        if row.status != StepStatus.WAITING or row.wake_at is None or row.wake_at > t:
            return False
        if run.status not in _LIVE_RUNS:
            return False
        step_type = step_types.get(row.type)
        if step_type is None:
            return False
        wf = engine.workflow_spec(run)
        spec = engine.spec_of(wf, row)
        fx = engine.Effects()
        fx.event(run.pk, "step_woken", row.key)
        engine.apply_outcome(run, wf, spec, row, step_type.wake(run, row, spec), fx,
                             from_status=StepStatus.WAITING)
        engine.refresh_run_status(run, fx)
        fx.flush()
    return True

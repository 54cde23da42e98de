"""The reconciler: rebuilds what a lost message, a dead worker or a due timer left behind.

Run every few seconds by the sweeper (in beat's process, or in ``runengine``), never
from the step queue. Each sweep:

1. running steps whose lease expired go back to ready (counted in ``recovery_count``;
   dead-lettered by the executor past ``STEVORA_MAX_RECOVERIES``);
2. ready steps whose doorbell is overdue (or was never rung) are published again, with
   a growing gap per step, so a backlog is not flooded with copies;
3. waiting steps whose ``wake_at`` passed are woken (timer done, approval or event timeout);
4. child runs are settled: a child whose parent step ended is cancelled, a failed child
   whose parent step was reopened by a retry is retried (``settle_child_runs``);
5. queued runs and steps whose concurrency key has a free slot are admitted
   (``admit_waiting``, runs.engine.flow).

Every change is a guarded update under the run's lock, so two sweeps at once (or a
sweep racing a worker) change each row at most once. On PostgreSQL an advisory lock
also keeps a second concurrent sweep from doing the same work twice. Every time
comparison is made against the database's clock (``Now()``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Now

from runs.models import RUN_TERMINAL, Run, RunStatus
from steps import types as step_types
from steps.models import STEP_TERMINAL, StepExecution, StepStatus

from . import fanout, flow
from . import transitions as t
from .dispatch import can_publish, dispatch_steps
from .effects import Effects

logger = logging.getLogger("stevora.reconciler")

_ADVISORY_KEY = 0x5E7E_0A1A
_BATCH = 500
_LIVE_RUNS = (RunStatus.RUNNING, RunStatus.WAITING)
_OPEN_RUNS = (RunStatus.QUEUED, RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED)

# Retrying a failed child run belongs to the run services (``retry_run``); they register it.
_child_retry: list[Callable[[Any, str], Any]] = []


def on_child_retry(fn: Callable[[Any, str], Any]) -> None:
    """``fn(child_run_id, actor)`` retries a failed child run whose parent step waits again."""
    _child_retry[:] = [fn]


def child_retriers() -> list[Callable[[Any, str], Any]]:
    return list(_child_retry)


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
            "children": settle_child_runs(),
            "admitted": admit_waiting(),
        }


def recover_expired_leases(died: frozenset[str] = frozenset()) -> int:
    """Running steps whose lease ran out go back to ready (``died``: the names of workers the
    registry just found dead, whose leases it cut short)."""
    rows = list(StepExecution.objects.filter(status=StepStatus.RUNNING, lease_until__lt=Now())
                .values_list("id", "run_id")[:_BATCH])
    recovered = 0
    for step_id, run_id in rows:
        with transaction.atomic():
            run = t.lock_run(run_id)
            row = StepExecution.objects.filter(pk=step_id, status=StepStatus.RUNNING, lease_until__lt=Now()).first()
            if row is None:
                continue
            fx = Effects()
            now = t.now()
            dispatch = run.status in _LIVE_RUNS and can_publish()
            StepExecution.objects.filter(pk=row.pk, status=StepStatus.RUNNING, lease_owner=row.lease_owner,
                                         attempt=row.attempt).update(
                status=StepStatus.READY, lease_owner="", lease_until=None, not_before=None,
                recovery_count=row.recovery_count + 1, ready_at=now, dispatched_at=now if dispatch else None,
            )
            process = row.lease_owner.rsplit(":", 1)[0]
            why = (f"worker {process} died during attempt {row.attempt}" if process in died
                   else f"lease of {row.lease_owner} expired during attempt {row.attempt}")
            fx.event(run.pk, "step_recovered", row.key, message=why,
                     data={"attempt": row.attempt, "worker": row.lease_owner,
                           "recovery_count": row.recovery_count + 1})
            if dispatch:
                fx.urgent.append(row.pk)
            fx.flush()
            recovered += 1
    if recovered:
        logger.info("recovered %d step(s) whose lease expired", recovered)
    return recovered


def redispatch_ready() -> int:
    """Ring again for ready steps whose doorbell is overdue (or was never rung).

    A step's next ring waits at least as long as it has already waited since it became
    ready (doubling each time): messages lost to a broker restart are replaced after
    ``STEVORA_REDISPATCH_SECONDS``, while steps that are merely behind a long backlog get a
    copy now and then, not one per sweep. The history says so once per outage: at the
    first ring after the step's own dispatch.
    """
    if not can_publish():
        return 0
    now = t.now()
    gap = timedelta(seconds=settings.STEVORA["REDISPATCH_SECONDS"])
    if _broker_restarted():
        # Redis came back as a new server (its run_id changed): whatever was queued before is
        # gone, unless it persisted. Ring every ready step now rather than a redispatch
        # interval later; a doorbell that survived makes a duplicate, which the claim ignores.
        logger.warning("the broker restarted: ringing every ready step again")
        StepExecution.objects.filter(status=StepStatus.READY, dispatched_at__lt=now).update(dispatched_at=None)
    rows = list(
        StepExecution.objects.filter(status=StepStatus.READY, run__status__in=_LIVE_RUNS)
        .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
        .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=now - gap))
        # The highest priority, then never rung, then the longest waiting: the queue serves them so.
        .order_by("-priority", F("dispatched_at").asc(nulls_first=True), "ready_at", "id")
        .values_list("id", "run_id", "key", "dispatched_at", "ready_at", "not_before", "priority")[:_BATCH]
    )
    due, first_rings = [], []
    priorities = {row[0]: row[-1] for row in rows if row[-1]}
    for step_id, run_id, key, dispatched_at, ready_at, not_before, _ in rows:
        if dispatched_at is None:
            due.append(step_id)
            continue
        became_ready = max((x for x in (ready_at, not_before) if x is not None), default=dispatched_at)
        waited = dispatched_at - became_ready
        if now - dispatched_at < max(gap, waited):
            continue
        due.append(step_id)
        if waited < gap:
            first_rings.append((run_id, key))
    if not due:
        return 0
    with transaction.atomic():
        StepExecution.objects.filter(pk__in=due, status=StepStatus.READY).update(dispatched_at=now)
        fx = Effects()
        for run_id, key in first_rings:
            fx.event(run_id, "step_redispatched", key, message="doorbell overdue; published again")
        fx.flush()
    # At the run's own priority, not urgent: a replacement takes the place the lost doorbell
    # had (after a broker restart, every doorbell was lost alike), and a copy of one merely
    # behind a long backlog must not jump it. Only steps recovered from dead workers go ahead.
    dispatch_steps(due, priorities=priorities)
    return len(due)


_broker_seen: dict[str, Any] = {"run_id": None, "client": None}


def _broker_restarted() -> bool:
    """Has the Redis broker restarted since the last sweep (``INFO server`` ``run_id``)?
    Other brokers: never said (RabbitMQ keeps durable queues across restarts)."""
    if settings.BROKER_SCHEME not in ("redis", "rediss"):
        return False
    import redis  # here, not at the top: importing redis-py costs ~0.3 s, and embedded never needs it

    try:
        if _broker_seen["client"] is None:
            _broker_seen["client"] = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2,
                                                          socket_connect_timeout=2)
        run_id = _broker_seen["client"].info("server").get("run_id")
    except Exception:  # down right now: the publish fails too, and the rows say so
        return False
    previous, _broker_seen["run_id"] = _broker_seen["run_id"], run_id
    return previous is not None and run_id != previous


def admit_waiting() -> int:
    """Re-derive concurrency admissions from the rows (runs.engine.flow): every key with a
    queued run or step admits its next waiters if it has free slots. Each commit that frees
    a slot admits in its own transaction; this sweep is what makes a crash in between, or
    a path that frees a slot without admitting (a retried step's worker lost its handler),
    cost one sweep interval instead of a queue that never moves."""
    run_keys, step_keys = flow.waiting_keys(_BATCH)
    admitted = 0
    for keys, kind in ((run_keys, "runs"), (step_keys, "steps")):
        for key in keys:
            with transaction.atomic():
                fx = Effects()
                (fx.admit_run_keys if kind == "runs" else fx.admit_step_keys).add(key)
                fx.flush()  # admits, under the admission lock (transitions.admit_pending)
                admitted += fx.admitted
    if admitted:
        logger.info("admitted %d queued run(s)/step(s) whose concurrency slot was free", admitted)
    return admitted


def wake_due() -> int:
    ids = list(StepExecution.objects.filter(status=StepStatus.WAITING, wake_at__lte=Now(),
                                            run__status__in=_LIVE_RUNS)
               .values_list("id", flat=True)[:_BATCH])
    return sum(1 for step_id in ids if wake_step(step_id))


def wake_step(step_id: int) -> bool:
    """Wake one waiting step whose ``wake_at`` has passed (no-op otherwise)."""
    with transaction.atomic():
        run_id = StepExecution.objects.filter(pk=step_id).values_list("run_id", flat=True).first()
        if run_id is None:
            return False
        run = t.lock_run(run_id)
        row = StepExecution.objects.get(pk=step_id)
        if row.status != StepStatus.WAITING or row.wake_at is None or row.wake_at > t.now():
            return False
        if run.status not in _LIVE_RUNS:
            return False
        step_type = step_types.get(row.type)
        if step_type is None:
            return False
        wf = t.workflow_spec(run)
        spec = t.spec_of(wf, row)
        fx = Effects()
        fx.event(run.pk, "step_woken", row.key)
        t.apply_outcome(run, wf, spec, row, step_type.wake(run, row, spec), fx, from_status=StepStatus.WAITING)
        t.refresh_run_status(run, fx)
        fx.flush()
    return True


def settle_child_runs() -> int:
    """Finish what a commit promised child runs, from the rows alone.

    - an unfinished child run whose parent step has ended (cancelled with its run, or
      closed because a sibling failed) is cancelled;
    - a failed child run whose parent step waits again (``retry_run`` on the parent
      reopened it) is retried, so the parent does not wait forever.

    Both are also done right after the commit that caused them; this sweep is what
    makes a crash in between harmless.
    """
    settled = 0
    orphans = list(Run.objects.filter(status__in=_OPEN_RUNS, parent_step__status__in=STEP_TERMINAL)
                   .values_list("id", flat=True)[:_BATCH])
    for run_id in orphans:
        if t.cancel_run_now(run_id, actor="parent", reason="its parent step ended"):
            settled += 1
    stalled = list(Run.objects.filter(status=RunStatus.FAILED, parent_step__status=StepStatus.WAITING)
                   .exclude(parent_run__status__in=RUN_TERMINAL)
                   .values_list("id", "parent_run_id")[:_BATCH])
    for run_id, parent_run_id in stalled:
        for retry in _child_retry:
            try:
                retry(run_id, f"run:{parent_run_id}")
                settled += 1
            except Exception as exc:  # it cannot be retried: let the parent step fail again
                logger.warning("child run %s could not be retried (%s); failing its parent step", run_id, exc)
                _fail_parent_step_again(run_id)
    return settled


def _fail_parent_step_again(child_id: Any) -> None:
    with transaction.atomic():
        child = Run.objects.get(pk=child_id)
        if child.status != RunStatus.FAILED or child.parent_step_id is None:
            return
        fx = Effects()
        fanout.notify_parent(child, fx)
        fx.flush()

"""Control actions on a run: cancel, pause, resume (DESIGN §3's state machine).

Each locks the run, checks the move is legal (``IllegalTransition`` otherwise), makes
it with guarded updates and appends a ``control_*`` history row naming the actor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from runs.engine import transitions as t
from runs.engine.dispatch import can_publish
from runs.engine.effects import Effects
from runs.errors import NotFound
from runs.models import RUN_TERMINAL, IllegalTransition, Run, RunStatus
from steps.models import StepExecution, StepStatus


def get_run(run_id: Any) -> Run:
    try:
        return Run.objects.select_related("workflow").get(pk=run_id)
    except (Run.DoesNotExist, ValidationError, ValueError):
        raise NotFound(f"no run with id {run_id!r}") from None


def control(run_id: Any, action: str, actor: str, fn: Callable[[Run, Effects], None]) -> Run:
    get_run(run_id)
    with transaction.atomic():
        run = t.lock_run(run_id)
        fx = Effects()
        fn(run, fx)
        fx.event(run.pk, f"control_{action}", actor=actor)
        fx.flush()
    return run


def cancel_run(run_id: Any, *, actor: str = "", reason: str = "") -> Run:
    def do(run: Run, fx: Effects) -> None:
        if run.status in RUN_TERMINAL:
            raise IllegalTransition(f"run {run.pk} is already {run.status}; only an unfinished run can be cancelled")
        t.finish_run(run, t.workflow_spec(run), fx, RunStatus.CANCELLED, actor=actor,
                     error=t.error_dict("cancelled", reason or f"cancelled by {actor or 'operator'}"))

    return control(run_id, "cancel", actor, do)


def pause_run(run_id: Any, *, actor: str = "") -> Run:
    def do(run: Run, fx: Effects) -> None:
        if run.status not in (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PENDING):
            raise IllegalTransition(f"run {run.pk} is {run.status}; only a running or waiting run can be paused")
        Run.objects.filter(pk=run.pk, status=run.status).update(status=RunStatus.PAUSED)
        run.status = RunStatus.PAUSED
        fx.status_changes.append((run.pk, RunStatus.PAUSED))

    return control(run_id, "pause", actor, do)


def resume_run(run_id: Any, *, actor: str = "") -> Run:
    def do(run: Run, fx: Effects) -> None:
        if run.status != RunStatus.PAUSED:
            raise IllegalTransition(f"run {run.pk} is {run.status}; only a paused run can be resumed")
        Run.objects.filter(pk=run.pk, status=RunStatus.PAUSED).update(status=RunStatus.RUNNING)
        run.status = RunStatus.RUNNING
        fx.status_changes.append((run.pk, RunStatus.RUNNING))
        _redispatch_ready(run, fx)
        # Its queued steps were passed over while it was paused: their keys admit at flush.
        fx.admit_step_keys.update(StepExecution.objects.filter(run_id=run.pk, status=StepStatus.QUEUED)
                                  .values_list("concurrency_key", flat=True))
        t.refresh_run_status(run, fx)

    return control(run_id, "resume", actor, do)


def _redispatch_ready(run: Run, fx: Effects) -> None:
    now = t.now()
    # A process that cannot publish (embedded CLI) leaves dispatched_at empty so that the
    # engine's reconciler rings at its next sweep instead of REDISPATCH_SECONDS later.
    publish = can_publish()
    rows = list(StepExecution.objects.filter(run_id=run.pk, status=StepStatus.READY).values_list("id", "not_before"))
    if run.priority:
        fx.priorities.update((pk, run.priority) for pk, _ in rows)
    due = [pk for pk, not_before in rows if not_before is None or not_before <= now]
    if due:
        StepExecution.objects.filter(pk__in=due).update(ready_at=now, dispatched_at=now if publish else None)
        fx.dispatch.extend(due)
    for pk, not_before in rows:
        delay = (not_before - now).total_seconds() if not_before is not None else 0.0
        if 0 < delay <= 60 and publish:
            # Still backing off from a failure: a message now would find nothing to claim.
            StepExecution.objects.filter(pk=pk).update(dispatched_at=not_before)
            fx.countdowns.append((pk, delay))

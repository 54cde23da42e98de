"""Resuming a waiting step: a decision, an event, a child run's end."""

from __future__ import annotations

from django.db import transaction

from runs.engine import transitions as t
from runs.engine.effects import Effects
from runs.errors import NotFound
from runs.models import RunStatus
from steps import types as step_types
from steps.models import StepExecution, StepStatus


def resume_waiting_step(step_id: int, outcome: step_types.Outcome, *, actor: str = "",
                        expected_type: str | None = None, fx: Effects | None = None) -> bool:
    """Complete or fail a waiting step (a decision, an event, a timer) and move the run on.

    Returns False when the step is no longer waiting (decided already, cancelled).
    Call it inside your own transaction to make your change and the resume one.
    """
    # No savepoint of its own: a refusal returns before anything is written, and an error
    # rolls back the caller's transaction anyway (a bulk decision resumes hundreds per one).
    with transaction.atomic(savepoint=False):
        run_id = StepExecution.objects.filter(pk=step_id).values_list("run_id", flat=True).first()
        if run_id is None:
            raise NotFound(f"no step execution {step_id}")
        run = t.lock_run(run_id)
        row = StepExecution.objects.get(pk=step_id)
        if row.status != StepStatus.WAITING or (expected_type and row.type != expected_type):
            return False
        if run.status not in (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED):
            return False
        own_fx = fx is None
        effects = fx or Effects()
        wf = t.workflow_spec(run)
        if actor:
            effects.event(run.pk, "step_resumed", row.key, actor=actor)
        t.apply_outcome(run, wf, t.spec_of(wf, row), row, outcome, effects, from_status=StepStatus.WAITING)
        t.refresh_run_status(run, effects)
        if own_fx:
            effects.flush()
    return True


def requeue_waiting_step(step_id: int, *, actor: str = "", reason: str = "", expected_type: str | None = None,
                         fx: Effects | None = None) -> bool:
    """Put a parked *work* step (waiting for a decision) back to ``ready``: it runs again.

    The decision itself lives in the caller's rows (the step reads it when it runs).
    Returns False when the step is no longer waiting or its run ended. Call it inside
    your own transaction to make your change and the requeue one.
    """
    with transaction.atomic():
        run_id = StepExecution.objects.filter(pk=step_id).values_list("run_id", flat=True).first()
        if run_id is None:
            raise NotFound(f"no step execution {step_id}")
        run = t.lock_run(run_id)
        row = StepExecution.objects.get(pk=step_id)
        if row.status != StepStatus.WAITING or not step_types.is_work(row.type) or (
                expected_type and row.type != expected_type):
            return False
        if run.status not in (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED):
            return False
        own_fx = fx is None
        effects = fx or Effects()
        # Back to ready, or queued when the step has a concurrency key (parking freed its slot).
        if t.back_to_ready(run, row, effects, (StepStatus.WAITING,), wake_at=None, not_before=None) is None:
            return False
        effects.event(run.pk, "step_resumed", row.key, actor=actor, message=reason, data={"requeued": True})
        t.refresh_run_status(run, effects)
        if own_fx:
            effects.flush()
    return True

"""Retrying a failed run from the step that failed it (``failed -> running``, or
``failed -> queued`` when its workflow's concurrency key has no free slot)."""

from __future__ import annotations

from typing import Any

from runs.engine import recovery, reopening
from runs.engine import transitions as t
from runs.engine.effects import Effects
from runs.models import IllegalTransition, Run, RunEvent, RunStatus
from steps.models import StepExecution, StepStatus

from .control import control


def register() -> None:
    """Let the reconciler retry a failed child run whose parent step waits again."""
    recovery.on_child_retry(lambda child_id, actor: retry_run(child_id, actor=actor))


def retry_run(run_id: Any, *, actor: str = "") -> Run:
    """failed -> running: the step that failed the run gets a fresh set of attempts.

    Fan-out steps that failed because of it are reopened, and the siblings cancelled
    by that failure are put back as they were; completed steps are left alone.

    A run of a workflow with ``concurrency`` goes through admission like a new run: it
    becomes ``queued`` (its error still naming the step to reopen, nothing dispatched) and
    is admitted in order when its key has a free slot — at once, in this transaction, if
    one is free and nobody waits ahead (``transitions.admit_runs`` then reopens the steps).
    """

    def do(run: Run, fx: Effects) -> None:
        if run.status != RunStatus.FAILED:
            raise IllegalTransition(f"run {run.pk} is {run.status}; only a failed run can be retried")
        root_key = (run.error or {}).get("step")
        if not root_key:
            raise IllegalTransition(f"run {run.pk} did not fail in a step (it failed with "
                                    f"{(run.error or {}).get('type')!r}); start a new run instead")
        root = StepExecution.objects.filter(run_id=run.pk, key=root_key).first()
        if root is None or root.status != StepStatus.FAILED:
            # e.g. max_visits refused a visit that never got a row: retrying would loop again.
            raise IllegalTransition(f"run {run.pk} failed with {(run.error or {}).get('type')!r} before step "
                                    f"{root_key!r} could run; fix the cause and start a new run instead")
        if run.concurrency_key:
            if Run.objects.filter(pk=run.pk, status=RunStatus.FAILED).update(
                    status=RunStatus.QUEUED, finished_at=None) != 1:
                raise IllegalTransition(f"run {run.pk} is no longer failed")
            run.status = RunStatus.QUEUED
            fx.queued_here[run.pk] = RunEvent(
                run_id=run.pk, kind="run_queued", actor=actor, message="retry waiting for a concurrency slot",
                data={"concurrency_key": run.concurrency_key, "retry_from": root_key})
            fx.admit_run_keys.add(run.concurrency_key)
            return
        if Run.objects.filter(pk=run.pk, status=RunStatus.FAILED).update(
                status=RunStatus.RUNNING, error=None, finished_at=None) != 1:
            raise IllegalTransition(f"run {run.pk} is no longer failed")
        run.status = RunStatus.RUNNING
        fx.status_changes.append((run.pk, RunStatus.RUNNING))
        reopening.reopen_failed_run(run, t.workflow_spec(run), root_key, fx)

    run = control(run_id, "retry", actor, do)
    run.refresh_from_db()
    return run

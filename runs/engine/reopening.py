"""Reopening a failed run from the step that failed it (``runs.services.retry``).

Lives in the engine because a retried run whose workflow has ``concurrency`` waits
``queued`` for its key like a new run, and its steps are reopened only when it is
admitted (``transitions.admit_runs``), in the admitting transaction. A reopened work step
with a step ``concurrency`` goes back through admission too (``transitions.back_to_ready``).
"""

from __future__ import annotations

from typing import Any

from runs.definitions import WorkflowSpec
from runs.models import Run, RunStatus
from steps import types as step_types
from steps.models import StepExecution, StepStatus

from . import recovery
from . import transitions as t
from .effects import Effects


def retryable(run: Run) -> bool:
    root_key = (run.error or {}).get("step")
    return bool(root_key) and StepExecution.objects.filter(
        run_id=run.pk, key=root_key, status=StepStatus.FAILED).exists()


def reopen_failed_run(run: Run, wf: WorkflowSpec, root_key: str, fx: Effects) -> None:
    """The run (already ``running``, locked) runs again from its failed step ``root_key``.

    Fan-out steps that failed because of it are reopened, and the siblings cancelled by
    that failure are put back as they were; completed steps are left alone.
    """
    root = StepExecution.objects.get(run_id=run.pk, key=root_key)
    _reopen(run, wf, root, fx)
    # Steps cancelled when the run failed (siblings in fan-outs) come back too.
    for row in StepExecution.objects.filter(run_id=run.pk, status=StepStatus.CANCELLED):
        previous = (row.error or {}).get("previous_status")
        if previous and t.parent_open(row):
            _restore(run, row, previous, fx)
    t.refresh_run_status(run, fx)


def _retry_child(child_id: Any, actor: str) -> None:
    from runs.models import IllegalTransition

    for retry in recovery.child_retriers():
        try:
            retry(child_id, actor)
        except IllegalTransition:
            pass  # retried already (by the reconciler's sweep, or a person)


def _reopen(run: Run, wf: WorkflowSpec, row: StepExecution, fx: Effects) -> None:
    if row.parent_id is not None:
        parent = StepExecution.objects.get(pk=row.parent_id)
        if parent.status == StepStatus.FAILED:
            StepExecution.objects.filter(pk=parent.pk).update(status=StepStatus.WAITING, error=None,
                                                               finished_at=None)
            fx.event(run.pk, "step_reopened", parent.key)
            if parent.parent_id is not None:
                _reopen_chain(run, parent, fx)
    if row.type == "workflow" and row.state.get("child_run"):
        child = Run.objects.get(pk=row.state["child_run"])
        if child.status == RunStatus.FAILED and retryable(child):
            # The step waits for its child again; the child's retry is a hurry-up after commit,
            # and ``recovery.settle_child_runs`` does it from the rows if that is lost.
            StepExecution.objects.filter(pk=row.pk).update(status=StepStatus.WAITING, error=None, finished_at=None)
            fx.event(run.pk, "step_reopened", row.key, data={"child_run": str(child.pk)})
            fx.after_commit.append(lambda: _retry_child(child.pk, f"run:{run.pk}"))
            return
    if not step_types.is_work(row.type):
        # An inline or control step (approval, event, timer; a condition, a map whose 'over'
        # failed, a child that could not start) has no worker to retry it: activate it afresh.
        _reactivate_inline(run, wf, row, fx)
        return
    _restore(run, row, StepStatus.READY, fx, reset_failures=True)


def _reactivate_inline(run: Run, wf: WorkflowSpec, row: StepExecution, fx: Effects) -> None:
    now = t.now()
    StepExecution.objects.filter(pk=row.pk, status=StepStatus.FAILED).update(
        status=StepStatus.RUNNING, error=None, output=None, finished_at=None, started_at=now, ready_at=now,
        wake_at=None, failures=0)
    row.refresh_from_db()
    fx.event(run.pk, "step_reopened", row.key, data={"status": StepStatus.RUNNING})
    t.start_inline(run, wf, t.spec_of(wf, row), row, fx)


def _reopen_chain(run: Run, row: StepExecution, fx: Effects) -> None:
    assert row.parent_id is not None
    parent = StepExecution.objects.get(pk=row.parent_id)
    if parent.status == StepStatus.FAILED:
        StepExecution.objects.filter(pk=parent.pk).update(status=StepStatus.WAITING, error=None, finished_at=None)
        fx.event(run.pk, "step_reopened", parent.key)
        if parent.parent_id is not None:
            _reopen_chain(run, parent, fx)


def _restore(run: Run, row: StepExecution, previous: str, fx: Effects, *, reset_failures: bool = False) -> None:
    # A parked work step (waiting for a decision) runs again: it asks for its decision afresh.
    parked_work = previous == StepStatus.WAITING and step_types.is_work(row.type)
    to_ready = previous in (StepStatus.READY, StepStatus.RUNNING, StepStatus.QUEUED) or parked_work
    status = StepStatus.READY if to_ready else previous
    fields: dict[str, Any] = {"finished_at": None, "lease_owner": "", "lease_until": None, "not_before": None}
    if reset_failures:
        # A fresh set of attempts: a dead-lettered step (too many lost workers) runs again too.
        fields.update(failures=0, recovery_count=0, error=None)
    else:
        fields["error"] = None
    reopened_from = (StepStatus.FAILED, StepStatus.CANCELLED)
    if to_ready:
        # Ready, or queued for its step's concurrency key (admitted at flush if a slot is free).
        got = t.back_to_ready(run, row, fx, reopened_from, **fields)
        if got is None:
            return
        status = got
    else:
        if status == StepStatus.WAITING and not step_types.is_work(row.type):
            # A waiting inline step (approval, event, timer) is simply waiting again; its type
            # reopens what the cancellation closed (the approval request, the event wait).
            reopen = getattr(step_types.get(row.type), "reopen", None)
            if reopen is not None:
                reopen(row)
        StepExecution.objects.filter(pk=row.pk, status__in=reopened_from).update(status=status, **fields)
    fx.event(run.pk, "step_reopened", row.key, data={"status": status})

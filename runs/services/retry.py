"""Retrying a failed run from the step that failed it (``failed -> running``)."""

from __future__ import annotations

from typing import Any

from runs.engine import recovery
from runs.engine import transitions as t
from runs.engine.dispatch import can_publish
from runs.engine.effects import Effects
from runs.models import IllegalTransition, Run, RunStatus
from steps import types as step_types
from steps.models import StepExecution, StepStatus

from .control import control


def _retryable(run: Run) -> bool:
    root_key = (run.error or {}).get("step")
    return bool(root_key) and StepExecution.objects.filter(
        run_id=run.pk, key=root_key, status=StepStatus.FAILED).exists()


def _retry_child(child_id: Any, actor: str) -> None:
    try:
        retry_run(child_id, actor=actor)
    except IllegalTransition:
        pass  # retried already (by the reconciler's sweep, or a person)


def register() -> None:
    """Let the reconciler retry a failed child run whose parent step waits again."""
    recovery.on_child_retry(lambda child_id, actor: retry_run(child_id, actor=actor))


def retry_run(run_id: Any, *, actor: str = "") -> Run:
    """failed -> running: the step that failed the run gets a fresh set of attempts.

    Fan-out steps that failed because of it are reopened, and the siblings cancelled
    by that failure are put back as they were; completed steps are left alone.
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
        Run.objects.filter(pk=run.pk, status=RunStatus.FAILED).update(
            status=RunStatus.RUNNING, error=None, finished_at=None)
        run.status = RunStatus.RUNNING
        fx.status_changes.append((run.pk, RunStatus.RUNNING))
        wf = t.workflow_spec(run)
        _reopen(run, wf, root, fx)
        # Steps cancelled when the run failed (siblings in fan-outs) come back too.
        for row in StepExecution.objects.filter(run_id=run.pk, status=StepStatus.CANCELLED):
            previous = (row.error or {}).get("previous_status")
            if previous and t.parent_open(row):
                _restore(run, row, previous, fx)
        t.refresh_run_status(run, fx)

    return control(run_id, "retry", actor, do)


def _reopen(run: Run, wf: Any, row: StepExecution, fx: Effects) -> None:
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
        if child.status == RunStatus.FAILED and _retryable(child):
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


def _reactivate_inline(run: Run, wf: Any, row: StepExecution, fx: Effects) -> None:
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
    now = t.now()
    # A parked work step (waiting for a decision) runs again: it asks for its decision afresh.
    parked_work = previous == StepStatus.WAITING and step_types.is_work(row.type)
    status = StepStatus.READY if previous in (StepStatus.READY, StepStatus.RUNNING) or parked_work else previous
    fields: dict[str, Any] = {"status": status, "finished_at": None, "lease_owner": "", "lease_until": None,
                              "not_before": None}
    if reset_failures:
        # A fresh set of attempts: a dead-lettered step (too many lost workers) runs again too.
        fields.update(failures=0, recovery_count=0, error=None)
    else:
        fields["error"] = None
    if status == StepStatus.WAITING and not step_types.is_work(row.type):
        # A waiting inline step (approval, event, timer) is simply waiting again; its type
        # reopens what the cancellation closed (the approval request, the event wait).
        reopen = getattr(step_types.get(row.type), "reopen", None)
        if reopen is not None:
            reopen(row)
    elif status == StepStatus.READY:
        fields.update(ready_at=now, dispatched_at=now if can_publish() else None)
        fx.dispatch.append(row.pk)
    StepExecution.objects.filter(pk=row.pk, status__in=(StepStatus.FAILED, StepStatus.CANCELLED)).update(**fields)
    fx.event(run.pk, "step_reopened", row.key, data={"status": status})


"""Helpers shared by the approval, event and admin tests."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from approvals.models import Approval
from runs.models import Run, RunStatus
from steps.models import StepExecution, StepStatus
from tests.conftest import queue_length, reserved_tags, wait_for_run
from tests.support.workers import wait_until

EMBEDDED = settings.IS_EMBEDDED_BROKER
# Generous: CI runs two test workers on two cores, and the 1,000-run test keeps one busy.
PATIENCE = 120.0


def finished(run_id: Any, timeout: float = PATIENCE) -> Run:
    return wait_for_run(run_id, timeout=timeout)


def review_workflow(name: str = "review-flow", **approval: Any) -> dict[str, Any]:
    """draft -> review (approval) -> decide: approved -> publish, rejected -> revise -> review again."""
    step: dict[str, Any] = {"name": "review", "type": "approval", "content": "{{ steps.draft.output }}",
                            "instructions": "Check the draft for {{ input.topic }}"}
    step.update(approval)
    return {"name": name, "steps": [
        {"name": "draft", "type": "task", "handler": "test.value", "config": {"value": {"text": "{{ input.topic }}"}}},
        step,
        {"name": "decide", "type": "condition", "if": "steps.review.output.approved", "then": "publish",
         "else": "revise"},
        {"name": "revise", "type": "task", "handler": "test.value",
         "config": {"value": {"text": "revised {{ input.topic }}"}}, "next": "review2"},
        {"name": "review2", "type": "approval", "content": "{{ steps.revise.output }}", "next": "publish"},
        {"name": "publish", "type": "task", "handler": "test.value",
         "config": {"value": {"published": "{{ steps.review.output.content }}",
                              "approved": "{{ steps.review.output.approved }}"}}},
    ]}


def wait_parked(run_id: Any, timeout: float = PATIENCE) -> Run:
    return wait_for_run(run_id, statuses=(RunStatus.WAITING,), timeout=timeout)


def pending_approval(run_id: Any, step_key: str = "review", timeout: float = PATIENCE) -> Approval:
    approval: Approval = wait_until(
        lambda: Approval.objects.filter(run_id=run_id, step_key=step_key, status="pending").first(),
        timeout=timeout, message=f"a pending approval for {step_key} of run {run_id}")
    return approval


def busy_steps(run_ids: Any) -> int:
    """Steps of these runs that hold (or want) a worker: running or ready."""
    return StepExecution.objects.filter(run_id__in=run_ids,
                                        status__in=(StepStatus.RUNNING, StepStatus.READY)).count()


def queued_messages() -> int:
    """Messages waiting in (or reserved from) our Redis queue; 0 when embedded (no external broker)."""
    if EMBEDDED:
        return 0
    import redis

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    return queue_length(client, queue) + len(reserved_tags(client, queue))

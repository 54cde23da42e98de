"""Turn run status changes and approval requests into webhook deliveries.

The signals are sent after the run's transaction commits, so the delivery rows are
written in a transaction of their own right after it. (A process killed in that
instant loses the notice; the run itself is safe.)
"""

from __future__ import annotations

import logging
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import connection, transaction
from django.urls import reverse

from runs.models import Run, RunStatus

from .delivery import enqueue
from .models import EventType, WebhookSubscription

logger = logging.getLogger("stevora.webhooks")

RUN_EVENTS = {RunStatus.COMPLETED: EventType.RUN_COMPLETED, RunStatus.FAILED: EventType.RUN_FAILED,
              RunStatus.WAITING: EventType.RUN_WAITING}


def _subscribers(workspace_id: int, event: str) -> list[WebhookSubscription]:
    rows = WebhookSubscription.objects.filter(workspace_id=workspace_id, active=True)
    return [s for s in rows if event in (s.events or [])]


def _anyone_listens() -> bool:
    """Is there any active subscription? Asked at every run end, so as plain SQL: the ORM
    would spend more time building this query than PostgreSQL spends answering it."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {connection.ops.quote_name(WebhookSubscription._meta.db_table)} "
                       f"WHERE {connection.ops.quote_name('active')} LIMIT 1")
        return cursor.fetchone() is not None


def run_data(run: Run) -> dict[str, Any]:
    return {"run": {"id": str(run.pk), "workflow": run.workflow_name, "version": run.workflow.version,
                    "status": run.status, "output": run.output, "error": run.error,
                    "created_at": run.created_at.isoformat(),
                    "finished_at": run.finished_at.isoformat() if run.finished_at else None},
            "links": {"api": f"{settings.STEVORA['PUBLIC_URL']}/api/v1/runs/{run.pk}/",
                      "admin": f"{settings.STEVORA['PUBLIC_URL']}{reverse('admin:runs_run_change', args=[run.pk])}"}}


def on_run_status_changed(sender: Any, run_id: Any, status: str, **kwargs: Any) -> None:
    event = RUN_EVENTS.get(status)  # type: ignore[call-overload]
    if event is None:
        return
    try:
        if not _anyone_listens():
            return  # the common case: nobody listens
        run = Run.objects.select_related("workflow").get(pk=run_id)
        subscribers = _subscribers(run.workspace_id, event)
        if not subscribers:
            return
        data = run_data(run)
        with transaction.atomic():
            for sub in subscribers:
                enqueue(workspace_id=run.workspace_id, url=sub.url, event=event, data=data,
                        subscription_id=sub.pk)
    except Exception:  # a notice must never break the caller that changed the run
        logger.exception("could not queue %s webhooks for run %s", event, run_id)


def approval_data(approval: Any) -> dict[str, Any]:
    base = settings.STEVORA["PUBLIC_URL"]
    return {"approval": {"id": approval.pk, "run": str(approval.run_id), "workflow": approval.workflow_name,
                         "step": approval.step_key, "status": approval.status, "content": approval.content,
                         "instructions": approval.instructions, "allowed_groups": approval.allowed_groups,
                         "allowed_users": approval.allowed_users, "allow_edit": approval.allow_edit,
                         "requested_at": approval.requested_at.isoformat() if approval.requested_at else None,
                         "expires_at": approval.expires_at.isoformat() if approval.expires_at else None},
            "links": {"decide": f"{base}{reverse('admin:approvals_approval_decide', args=[approval.pk])}",
                      "api": f"{base}/api/v1/approvals/{approval.pk}/decide/"}}


def on_approval_requested(sender: Any, approval_id: Any, webhook_url: str = "", **kwargs: Any) -> None:
    try:
        from approvals.models import Approval

        approval = Approval.objects.get(pk=approval_id)
        data = approval_data(approval)
        event = EventType.APPROVAL_REQUESTED
        urls = [u for u in (webhook_url, settings.STEVORA.get("APPROVAL_WEBHOOK_URL") or "") if u]
        with transaction.atomic():
            # The step's own URL and the global one (deduplicated), signed with STEVORA_WEBHOOK_SECRET.
            for url in dict.fromkeys(urls):
                enqueue(workspace_id=approval.workspace_id, url=url, event=event, data=data)
            for sub in _subscribers(approval.workspace_id, event):
                enqueue(workspace_id=approval.workspace_id, url=sub.url, event=event, data=data,
                        subscription_id=sub.pk)
    except Exception:
        logger.exception("could not queue approval webhooks for approval %s", approval_id)


def connect() -> None:
    from runs.signals import run_status_changed

    run_status_changed.connect(on_run_status_changed, dispatch_uid="webhooks-run-status")
    if apps.is_installed("approvals"):
        try:
            from approvals.signals import approval_requested
        except ImportError:  # approvals without the signal: nothing to hook
            return
        approval_requested.connect(on_approval_requested, dispatch_uid="webhooks-approval-requested")

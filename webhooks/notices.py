"""Run and approval notices, derived from the run history: none lost to a crash.

Every change worth a notice writes a history row (``runs.RunEvent``) in the run's own
transaction: ``run_completed``, ``run_failed``, ``run_waiting``, ``approval_requested``.
Deliveries are made from those rows, by two paths:

- right after the commit, the ``run_status_changed`` / ``approval_requested`` receivers
  ``announce`` the row: the usual, immediate path;
- the notice sweep (``webhooks.sweep`` on beat; ``runengine``'s webhook thread when
  embedded) reads the history past its cursor, once rows are
  ``STEVORA_NOTICE_SETTLE_SECONDS`` old, and announces every row that has no delivery
  yet: the notice of a process killed between its commit and its receiver.

A delivery is unique per (history row, URL), so the two paths never send a notice twice.
A subscription hears of rows written after it was created, never of older ones.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.urls import reverse
from django.utils import timezone

from approvals.models import Approval
from runs.models import Run, RunEvent

from .delivery import new_delivery, ring
from .models import EventType, NoticeCursor, WebhookDelivery, WebhookSubscription

logger = logging.getLogger("stevora.webhooks")

NOTICE_KINDS = {"run_completed": EventType.RUN_COMPLETED, "run_failed": EventType.RUN_FAILED,
                "run_waiting": EventType.RUN_WAITING, "approval_requested": EventType.APPROVAL_REQUESTED}
CURSOR = "run-history"
BATCH = 5000


def anyone_subscribes() -> bool:
    """Is there any active subscription? Asked at every run end, so as plain SQL: the ORM
    would spend more time building this query than PostgreSQL spends answering it."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {connection.ops.quote_name(WebhookSubscription._meta.db_table)} "
                       f"WHERE {connection.ops.quote_name('active')} LIMIT 1")
        return cursor.fetchone() is not None


def subscribers(workspace_id: int, event: str, since: datetime | None = None) -> list[WebhookSubscription]:
    """Active subscriptions of the workspace to ``event`` (created by ``since``, if given)."""
    rows = WebhookSubscription.objects.filter(workspace_id=workspace_id, active=True)
    if since is not None:
        rows = rows.filter(created_at__lte=since)
    return [s for s in rows if event in (s.events or [])]


def run_data(run: Run) -> dict[str, Any]:
    return {"run": {"id": str(run.pk), "workflow": run.workflow_name, "version": run.workflow.version,
                    "status": run.status, "output": run.output, "error": run.error,
                    "created_at": run.created_at.isoformat(),
                    "finished_at": run.finished_at.isoformat() if run.finished_at else None},
            "links": {"api": f"{settings.STEVORA['PUBLIC_URL']}/api/v1/runs/{run.pk}/",
                      "admin": f"{settings.STEVORA['PUBLIC_URL']}{reverse('admin:runs_run_change', args=[run.pk])}"}}


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


def announce(row: RunEvent) -> int:
    """Write the deliveries that the history row calls for and that are not written yet;
    they are sent after commit. Returns how many were asked for."""
    event = NOTICE_KINDS.get(row.kind)
    if event is None:
        return 0
    targets: list[tuple[str, int | None]] = []
    if row.kind == "approval_requested":
        approval_id = (row.data or {}).get("approval_id")
        approval = Approval.objects.filter(pk=approval_id).first() if isinstance(approval_id, int) else None
        if approval is None:
            return 0
        workspace_id, data = approval.workspace_id, approval_data(approval)
        # The step's own URL and the global one (deduplicated), signed with STEVORA_WEBHOOK_SECRET.
        urls = [u for u in (approval.webhook_url, settings.STEVORA.get("APPROVAL_WEBHOOK_URL") or "") if u]
        targets += [(url, None) for url in dict.fromkeys(urls)]
    else:
        run = Run.objects.select_related("workflow").filter(pk=row.run_id).first()
        if run is None:
            return 0
        workspace_id, data = run.workspace_id, run_data(run)
    targets += [(sub.url, sub.pk) for sub in subscribers(workspace_id, event, since=row.created_at)]
    if not targets:
        return 0
    deliveries = [new_delivery(workspace_id=workspace_id, url=url, event=event, data=data, subscription_id=sub,
                               source_event=row.pk) for url, sub in targets]
    ids = [d.pk for d in deliveries]

    def ring_all() -> None:
        for delivery_id in ids:  # one that conflicted was not written: its doorbell claims nothing
            ring(delivery_id)

    # Only the write is a transaction (the reads above are single statements): a sweep never
    # holds locks on several tables while it reads.
    with transaction.atomic():
        # A row that the other path wrote already is left alone (whdelivery_once_per_event_and_url).
        WebhookDelivery.objects.bulk_create(deliveries, ignore_conflicts=True)
        transaction.on_commit(ring_all)
    return len(deliveries)


def _cursor_position() -> int:
    """Where the sweep's cursor stands; made at the history's current end the first time
    (older rows had their chance with the receivers)."""
    position = NoticeCursor.objects.filter(name=CURSOR).values_list("last_event_id", flat=True).first()
    if position is not None:
        return position
    end = RunEvent.objects.aggregate(end=Max("id"))["end"] or 0
    try:
        with transaction.atomic():
            NoticeCursor.objects.create(name=CURSOR, last_event_id=end)
    except IntegrityError:  # another sweep made it first
        return NoticeCursor.objects.values_list("last_event_id", flat=True).get(name=CURSOR)
    return end


def _worth_announcing(pks: list[int], subscribed: bool) -> list[RunEvent]:
    """The history rows among ``pks`` that can call for a delivery: approval requests go to
    subscribers and the global URL, or else only to their step's own webhook."""
    rows = list(RunEvent.objects.filter(pk__in=pks).order_by("pk"))
    if subscribed or settings.STEVORA.get("APPROVAL_WEBHOOK_URL"):
        return rows

    asked = [row.data.get("approval_id") for row in rows if row.kind == "approval_requested"]
    with_url = set(Approval.objects.filter(pk__in=[a for a in asked if isinstance(a, int)])
                   .exclude(webhook_url="").values_list("pk", flat=True))
    return [row for row in rows if row.kind != "approval_requested" or row.data.get("approval_id") in with_url]


def sweep_notices(settle_seconds: float | None = None) -> int:
    """Announce the settled history rows past the cursor that have no delivery yet, then
    move the cursor past them. Returns how many deliveries it wrote.

    No transaction spans the sweep (it would hold locks on several tables for its length):
    reads are single statements, and each row's deliveries are written in a transaction of
    their own. Two sweeps at once may both look at a row; the unique (history row, URL) lets
    one write it, and the cursor only moves forward.
    """
    settle = settings.STEVORA["NOTICE_SETTLE_SECONDS"] if settle_seconds is None else settle_seconds
    horizon = timezone.now() - timedelta(seconds=settle)
    start = last = _cursor_position()
    # Run notices go only to subscriptions: with none active, only approval requests
    # (a step's own webhook, the global URL) can call for a delivery.
    subscribed = anyone_subscribes()
    kinds = set(NOTICE_KINDS) if subscribed else {"approval_requested"}
    written = 0
    while True:
        rows = list(RunEvent.objects.filter(pk__gt=last).order_by("pk").values_list("pk", "kind", "created_at")
                    [:BATCH])
        settled = []
        young = False
        for pk, kind, created_at in rows:
            if created_at > horizon:
                young = True  # this row and the rest are the next sweep's
                break
            last = pk
            if kind in kinds:
                settled.append(pk)
        if settled:
            announced = set(WebhookDelivery.objects.filter(source_event__in=settled)
                            .values_list("source_event", flat=True))
            for row in _worth_announcing([pk for pk in settled if pk not in announced], subscribed):
                count = announce(row)
                if count:
                    logger.warning("notice %s of run %s had no delivery: %d written by the sweep",
                                   row.kind, row.run_id, count)
                written += count
        if young or len(rows) < BATCH:
            break
    if last != start:
        NoticeCursor.objects.filter(name=CURSOR, last_event_id__lt=last).update(
            last_event_id=last, updated_at=timezone.now())
    return written


def announce_latest(run_id: Any, kind: str, **match: Any) -> int:
    """The receivers' path: announce the newest history row of ``kind`` for the run."""
    row = RunEvent.objects.filter(run_id=run_id, kind=kind, **match).order_by("-id").first()
    return 0 if row is None else announce(row)

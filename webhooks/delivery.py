"""Queue, send and retry webhook deliveries.

Rows first: ``enqueue`` writes a ``WebhookDelivery`` and rings the doorbell after
commit; ``deliver`` claims the row with a guarded UPDATE (so the task and the sweep
never send the same attempt twice at once), sends outside any transaction, and
records the outcome. Delivery is at-least-once: receivers deduplicate on
``X-Stevora-Delivery``.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from datetime import timedelta
from typing import Any

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from runs.engine.dispatch import can_publish
from runs.models import RunEvent
from steps import outbound
from steps.outbound import RefusedAddress

from .models import DeliveryStatus, WebhookDelivery
from .signing import signature

logger = logging.getLogger("stevora.webhooks")

MAX_BACKOFF_SECONDS = 3600.0
USER_AGENT = "Stevora-Webhooks/1"


def new_delivery(*, workspace_id: int, url: str, event: str, data: dict[str, Any],
                 subscription_id: int | None = None, source_event: int | None = None) -> WebhookDelivery:
    """A delivery row, not saved yet: due now, its payload carrying its own id."""
    delivery = WebhookDelivery(workspace_id=workspace_id, subscription_id=subscription_id, url=url, event=event,
                               payload={}, max_attempts=settings.STEVORA["WEBHOOK_MAX_ATTEMPTS"],
                               next_attempt_at=timezone.now(), source_event=source_event)
    delivery.payload = {"id": str(delivery.id), "type": event, "created_at": timezone.now().isoformat(),
                        "data": data}
    return delivery


def enqueue(*, workspace_id: int, url: str, event: str, data: dict[str, Any], subscription_id: int | None = None,
            ) -> WebhookDelivery:
    """Record a delivery (call inside or outside a transaction); it is sent after commit."""
    delivery = new_delivery(workspace_id=workspace_id, url=url, event=event, data=data,
                            subscription_id=subscription_id)
    delivery.save(force_insert=True)
    delivery_id = delivery.pk
    transaction.on_commit(lambda: ring(delivery_id))
    return delivery


def ring(delivery_id: Any, countdown: float = 0.0) -> None:
    """Publish the send task; a lost or impossible publish is covered by the sweep."""
    if not can_publish():
        return  # embedded, outside the engine process: the engine's sweep sends it
    from .tasks import deliver_task

    try:
        deliver_task.apply_async((str(delivery_id),), countdown=countdown) if countdown else deliver_task.delay(
            str(delivery_id))
    except Exception:  # broker down: the sweep sends it
        logger.exception("publishing webhook delivery %s failed; the sweep will send it", delivery_id)


def _secret_for(delivery: WebhookDelivery) -> str:
    if delivery.subscription is not None:
        return delivery.subscription.secret
    return str(settings.STEVORA.get("WEBHOOK_SECRET") or "")


def backoff_seconds(attempts: int) -> float:
    base = float(settings.STEVORA["WEBHOOK_BACKOFF_SECONDS"])
    delay = min(base * (2 ** max(attempts - 1, 0)), MAX_BACKOFF_SECONDS)
    return delay * (0.8 + 0.4 * random.random())


def _claim(delivery_id: Any, due_by: Any = None) -> WebhookDelivery | None:
    now = timezone.now()
    lease = timedelta(seconds=settings.STEVORA["WEBHOOK_TIMEOUT_SECONDS"] + 30)
    claimable = (Q(status=DeliveryStatus.PENDING, next_attempt_at__lte=due_by or now)
                 | Q(status=DeliveryStatus.SENDING, claimed_until__lt=now))
    updated = WebhookDelivery.objects.filter(claimable, pk=delivery_id).update(
        status=DeliveryStatus.SENDING, claimed_until=now + lease, attempts=F("attempts") + 1, last_attempt_at=now)
    if updated != 1:
        return None  # not due, already sent, or someone else is sending it
    return WebhookDelivery.objects.select_related("subscription").get(pk=delivery_id)


def deliver(delivery_id: Any, *, due_by: Any = None) -> str | None:
    """Send one due delivery (one attempt) and record the outcome; returns the new status.

    ``due_by`` (default: now) lets a test send a delivery scheduled later, which no
    sweep or worker will touch meanwhile.
    """
    delivery = _claim(delivery_id, due_by)
    if delivery is None:
        return None
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "X-Stevora-Event": delivery.event, "X-Stevora-Delivery": str(delivery.pk),
               "X-Stevora-Timestamp": str(timestamp)}
    secret = _secret_for(delivery)
    if secret:
        headers["X-Stevora-Signature"] = signature(secret, timestamp, body)
    else:
        logger.warning("webhook delivery %s to %s is unsigned: set STEVORA_WEBHOOK_SECRET", delivery.pk,
                       delivery.url)
    code: int | None = None
    text = ""
    error = ""
    permanent = False
    try:
        # Resolved once, checked, and connected to that address only; redirects are not followed.
        response = outbound.request("POST", delivery.url, content=body, headers=headers,
                                    timeout=settings.STEVORA["WEBHOOK_TIMEOUT_SECONDS"])
        code, text = response.status_code, response.text[:2000]
        if not 200 <= code < 300:
            error = f"receiver answered HTTP {code}"
    except RefusedAddress as exc:
        error, permanent = str(exc), True
    except (httpx.HTTPError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return _record(delivery, code, text, error, permanent)


def _record(delivery: WebhookDelivery, code: int | None, text: str, error: str, permanent: bool) -> str:
    now = timezone.now()
    fields: dict[str, Any] = {"response_code": code, "response_body": text, "error": error, "claimed_until": None}
    if not error:
        fields.update(status=DeliveryStatus.SUCCEEDED, delivered_at=now, next_attempt_at=None)
    elif permanent or delivery.attempts >= delivery.max_attempts:
        fields.update(status=DeliveryStatus.FAILED, next_attempt_at=None)
    else:
        delay = backoff_seconds(delivery.attempts)
        fields.update(status=DeliveryStatus.PENDING, next_attempt_at=now + timedelta(seconds=delay))
    # Fenced on this attempt: a sender whose claim expired (and was re-claimed) records nothing.
    WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.SENDING,
                                   attempts=delivery.attempts).update(**fields)
    if fields["status"] == DeliveryStatus.PENDING:
        delay = (fields["next_attempt_at"] - now).total_seconds()
        if delay <= 60:  # short retries ride a countdown; longer ones wait for the sweep (no long ETAs)
            ring(delivery.pk, countdown=delay)
    logger.info("webhook %s %s → %s: %s", delivery.event, delivery.pk, delivery.url, fields["status"])
    return str(fields["status"])


def due_ids(limit: int = 200) -> list[Any]:
    now = timezone.now()
    return list(WebhookDelivery.objects.filter(
        Q(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
        | Q(status=DeliveryStatus.SENDING, claimed_until__lt=now)).order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit])


def sweep_due(*, inline: bool = False) -> int:
    """Send (inline) or publish every due delivery; safe to run twice at once (the claim decides)."""
    ids = due_ids()
    for delivery_id in ids:
        if inline:
            deliver(delivery_id)
        else:
            ring(delivery_id)
    return len(ids)


def retry_now(delivery_ids: list[Any]) -> int:
    """Admin action: failed or pending deliveries get another round of attempts now."""
    now = timezone.now()
    count = WebhookDelivery.objects.filter(
        pk__in=delivery_ids, status__in=(DeliveryStatus.FAILED, DeliveryStatus.PENDING)).update(
        status=DeliveryStatus.PENDING, next_attempt_at=now, max_attempts=F("attempts") + F("max_attempts"))
    for delivery_id in delivery_ids:
        transaction.on_commit(functools.partial(ring, delivery_id))
    return count


def purge_for_runs(run_ids: list[Any], dry_run: bool) -> int:
    """Retention (runs.services.retention): the settled deliveries announcing these runs' history.

    Deliveries still pending or sending are left to finish; afterwards nothing deletes them but
    an operator (they are few, and their ``source_event`` no longer names a row).
    """
    rows = WebhookDelivery.objects.filter(
        source_event__in=RunEvent.objects.filter(run_id__in=run_ids).values("id"),
        status__in=(DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED))
    if dry_run:
        return rows.count()
    return int(rows.delete()[0])

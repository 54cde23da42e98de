"""Webhook delivery metrics for ``/metrics`` (registered with ``runs.metrics`` by webhooks.apps)."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, Q
from prometheus_client.core import GaugeMetricFamily, Metric

from runs.metrics import Window

from .models import DeliveryStatus, WebhookDelivery


def families(w: Window) -> Iterator[Metric]:
    backlog = GaugeMetricFamily(
        "stevora_webhook_deliveries_unsettled", "Webhook deliveries not settled yet, by status (pending: waiting "
        "for its next attempt; sending) and whether an attempt already failed.", labels=["status", "retrying"])
    # whdelivery_due_idx and whdelivery_claim_idx (partial indexes on these two statuses).
    for status in (DeliveryStatus.PENDING, DeliveryStatus.SENDING):
        row = WebhookDelivery.objects.filter(status=status).aggregate(
            n=Count("id"), retrying=Count("id", filter=Q(attempts__gt=0)))
        backlog.add_metric([status, "false"], row["n"] - row["retrying"])
        backlog.add_metric([status, "true"], row["retrying"])
    yield backlog
    failed = GaugeMetricFamily(
        "stevora_recent_webhook_deliveries_failed", f"Webhook deliveries given up (refused address or out of "
        f"attempts) whose last attempt was in the last {w.seconds:g} s (STEVORA_METRICS_WINDOW_SECONDS).",
        labels=["event"])
    # whdelivery_failed_idx.
    for event, n in (WebhookDelivery.objects.filter(status=DeliveryStatus.FAILED, last_attempt_at__gte=w.since)
                     .values_list("event").annotate(n=Count("id")).order_by()):
        failed.add_metric([event], n)
    yield failed

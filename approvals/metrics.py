"""Approval metrics for ``/metrics`` (registered with ``runs.metrics`` by approvals.apps)."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, Min
from prometheus_client.core import GaugeMetricFamily, Metric

from runs.metrics import Window
from steps import clock

from .models import Approval, ApprovalStatus


def families(w: Window) -> Iterator[Metric]:
    # approval_pending_idx (requested_at where status = pending).
    row = Approval.objects.filter(status=ApprovalStatus.PENDING).aggregate(n=Count("id"), oldest=Min("requested_at"))
    pending = GaugeMetricFamily("stevora_approvals_pending", "Approvals waiting for a decision.")
    pending.add_metric([], row["n"])
    yield pending
    age = GaugeMetricFamily("stevora_approval_oldest_pending_seconds",
                            "Age of the oldest approval waiting for a decision (0: none).")
    age.add_metric([], max(0.0, (clock.now() - row["oldest"]).total_seconds()) if row["oldest"] else 0.0)
    yield age

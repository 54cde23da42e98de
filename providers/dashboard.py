"""The admin dashboard's LLM cost panel (registered with ``runs.dashboard`` by providers.apps)."""

from __future__ import annotations

import datetime as dt
from datetime import datetime, timedelta

from django.db.models import Sum
from django.db.models.functions import TruncDate
from django.http import HttpRequest
from django.utils.html import format_html

from runs import svg
from runs.dashboard import Panel
from runs.models import Run, RunStatus

from .models import LLMCall

DAYS = 14


def cost_panel(request: HttpRequest, now: datetime) -> Panel | None:
    if not request.user.has_perm("providers.view_llmcall"):
        return None
    first = (now - timedelta(days=DAYS - 1)).date()
    days = [first + timedelta(days=i) for i in range(DAYS)]
    # Calls of runs started in the window (run_status_created, then llmcall_run_id); a call's
    # day is the day it started.
    runs = Run.objects.filter(status__in=RunStatus.values,
                              created_at__gte=datetime.combine(first, dt.time(), tzinfo=dt.UTC)).values("pk")
    rows = (LLMCall.objects.filter(run__in=runs).annotate(day=TruncDate("started_at", tzinfo=dt.UTC))
            .values("day", "provider_name").annotate(usd=Sum("cost_usd")).order_by("provider_name"))
    index = {day: i for i, day in enumerate(days)}
    series: dict[str, list[float]] = {}
    for row in rows:
        i = index.get(row["day"])
        if i is not None:
            series.setdefault(row["provider_name"], [0.0] * DAYS)[i] += float(row["usd"] or 0)
    total = sum(sum(values) for values in series.values())
    chart = svg.stacked_bars("llm-cost-per-day", f"LLM cost per day (USD, last {DAYS} days, UTC), by provider",
                             [d.strftime("%m-%d") for d in days], series,
                             fmt=lambda v: f"${v:.6f}" if v < 1 else f"${v:,.2f}", label_every=2)
    return Panel("llm-cost", f"LLM cost per day by provider, last {DAYS} days",
                 format_html('<p id="llm-cost-total">Total: <strong>${}</strong></p>{}', f"{total:.6f}", chart))

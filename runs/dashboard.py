"""The admin dashboard (``/admin/runs/run/dashboard/``): the system's health at a glance.

Server-side SVG (``runs.svg``), no JavaScript. The page is a list of panels; ``runs``
draws the run and step panels, and the plug-in apps add theirs (LLM cost by provider,
oldest waiting approvals) with :func:`register_panel` from ``AppConfig.ready``. Every
query is bounded: runs created in the last 24 hours (``run_status_created``), their steps
(at most ``STEP_SAMPLE`` of them for the percentiles), through the indexes that exist.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count
from django.db.models.functions import TruncHour
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from steps import clock
from steps.models import StepExecution, StepStatus

from . import svg
from .cli import _fmt_seconds
from .models import Run, RunStatus

HOURS = 24
STEP_SAMPLE = 20_000
STATUS_COLORS = {"completed": "#59a14f", "failed": "#e15759", "cancelled": "#bab0ac", "running": "#4e79a7",
                 "waiting": "#edc948", "paused": "#f28e2b", "pending": "#76b7b2",
                 "queued": "#9c755f"}


@dataclass
class Panel:
    id: str
    title: str
    html: SafeString


PanelFn = Callable[[HttpRequest, datetime], Panel | None]
_panels: dict[str, tuple[int, PanelFn]] = {}


def register_panel(name: str, fn: PanelFn, order: int = 100) -> None:
    """Add a panel: ``fn(request, now)`` returns a Panel (or None to show nothing)."""
    _panels[name] = (order, fn)


def panels(request: HttpRequest) -> list[Panel]:
    now = clock.now()
    drawn = [fn(request, now) for _, fn in sorted(_panels.values(), key=lambda entry: entry[0])]
    return [panel for panel in drawn if panel is not None]


def _hours(now: datetime) -> list[datetime]:
    last = now.replace(minute=0, second=0, microsecond=0)
    return [last - timedelta(hours=HOURS - 1 - i) for i in range(HOURS)]


def recent_runs(now: datetime) -> tuple[datetime, list[datetime]]:
    hours = _hours(now)
    return hours[0], hours


def runs_panel(request: HttpRequest, now: datetime) -> Panel:
    since, hours = recent_runs(now)
    rows = (Run.objects.filter(status__in=RunStatus.values, created_at__gte=since)
            .annotate(hour=TruncHour("created_at", tzinfo=dt.UTC)).values("hour", "status")
            .annotate(n=Count("id")).order_by())
    index = {hour: i for i, hour in enumerate(hours)}
    series: dict[str, list[float]] = {status: [0.0] * HOURS for status in RunStatus.values}
    for row in rows:
        i = index.get(row["hour"])
        if i is not None:
            series[row["status"]][i] += row["n"]
    series = {status: values for status, values in series.items() if any(values)}
    finished = sum(sum(series.get(s, [])) for s in ("completed", "failed", "cancelled"))
    failed = sum(series.get("failed", []))
    rate = format_html('<p id="failure-rate">Failure rate (runs started in the last {} h that finished): '
                       '<strong>{}</strong> ({} failed of {} finished)</p>', HOURS,
                       f"{100 * failed / finished:.1f}%" if finished else "—", int(failed), int(finished))
    labels = [h.strftime("%H:00") for h in hours]
    chart = svg.stacked_bars("runs-per-hour", f"Runs started per hour (last {HOURS} h, UTC), by status now",
                             labels, series, colors=STATUS_COLORS,
                             fmt=lambda v: f"{v:g}", label_every=3)
    return Panel("runs", f"Runs per hour, last {HOURS} hours", format_html("{}{}", rate, chart))


def _percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def steps_panel(request: HttpRequest, now: datetime) -> Panel:
    since, _ = recent_runs(now)
    rows = (StepExecution.objects.filter(run__status__in=RunStatus.values, run__created_at__gte=since,
                                         status__in=(StepStatus.COMPLETED, StepStatus.FAILED),
                                         started_at__isnull=False, finished_at__isnull=False)
            .order_by("-id").values_list("type", "started_at", "finished_at")[:STEP_SAMPLE])
    by_type: dict[str, list[float]] = {}
    for step_type, started, finished in rows:
        if started is None or finished is None:
            continue
        by_type.setdefault(step_type, []).append(max(0.0, (finished - started).total_seconds()))
    table_rows = []
    for step_type in sorted(by_type):
        values = sorted(by_type[step_type])
        table_rows.append((step_type, len(values), _fmt_seconds(_percentile(values, 50)),
                           _fmt_seconds(_percentile(values, 95)), _percentile(values, 50), _percentile(values, 95)))
    if not table_rows:
        return Panel("steps", "Step duration", format_html('<p id="step-durations">No finished steps in runs '
                                                           'started in the last {} h.</p>', HOURS))
    body = format_html_join("", '<tr data-type="{}"><td>{}</td><td>{}</td><td class="p50" data-seconds="{}">{}</td>'
                            '<td class="p95" data-seconds="{}">{}</td></tr>',
                            ((t, t, n, f"{p50s:.6f}", p50, f"{p95s:.6f}", p95)
                             for t, n, p50, p95, p50s, p95s in table_rows))
    html = format_html('<table id="step-durations"><thead><tr><th>step type</th><th>finished steps</th>'
                       '<th>p50</th><th>p95</th></tr></thead><tbody>{}</tbody></table>'
                       '<p class="help">Claim to finish of the last attempt, steps of runs started in the last '
                       '{} h (the newest {} at most).</p>', body, HOURS, STEP_SAMPLE)
    return Panel("steps", "Step duration (p50 / p95)", html)


register_panel("runs", runs_panel, order=10)
register_panel("steps", steps_panel, order=20)

"""Metrics for ``/metrics`` (Prometheus text format), read from the database at scrape time.

Workers are separate processes, each with its own memory: counters kept in process would
differ per process and vanish with it. The database is the truth (DESIGN §1), so every
number here is a few aggregate queries run when Prometheus scrapes, and any web process
answers the same. To keep a scrape cheap, each query is bounded:

- "recent" metrics look only at runs *created* in the last ``STEVORA_METRICS_WINDOW_SECONDS``
  (default one hour), found through ``run_status_created`` (``status = ANY(all statuses) AND
  created_at >= since``: one index range per status), and at their steps, LLM calls and
  tool calls through the ``(run, …)`` indexes those tables already have;
- current backlogs (open steps) look only at steps of unfinished runs (the same index);
- the plug-in apps count what their partial indexes cover (pending approvals, pending or
  sending webhook deliveries) or small tables (provider breakers).

Because windowed numbers go down as well as up, they are gauges (and gauge histograms),
not counters: use them directly (``stevora_recent_runs{status="failed"}``), not through
``rate()``. Apps add their own families with :func:`register` from ``AppConfig.ready``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, QuerySet, Sum
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from steps import clock
from steps.models import StepExecution, StepStatus

from .models import RUN_TERMINAL, Run, RunStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Step duration buckets (seconds): quick tasks up to hour-long LLM agent loops and waits.
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(frozen=True)
class Window:
    """The scrape's bounds: ``since`` (database time) and its length in seconds."""

    since: datetime
    seconds: float

    def recent_runs(self) -> QuerySet[Run]:
        """Runs created since ``since``, by the ``run_status_created`` index."""
        return Run.objects.filter(status__in=RunStatus.values, created_at__gte=self.since)


Family = Callable[[Window], Iterable[Metric]]
_families: dict[str, Family] = {}


def register(name: str, family: Family) -> None:
    """Add metric families: ``family(window)`` yields prometheus_client metric families."""
    _families[name] = family


def window() -> Window:
    seconds = float(settings.STEVORA["METRICS_WINDOW_SECONDS"])
    return Window(since=clock.now() - timedelta(seconds=seconds), seconds=seconds)


class DatabaseCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        bounds = window()
        for family in list(_families.values()):
            yield from family(bounds)


def render() -> bytes:
    """The Prometheus text exposition of every registered family."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return generate_latest(registry)


def _window_note(w: Window) -> str:
    return f"created in the last {w.seconds:g} s (STEVORA_METRICS_WINDOW_SECONDS)"


def run_families(w: Window) -> Iterator[Metric]:
    recent = GaugeMetricFamily(
        "stevora_recent_runs", f"Runs {_window_note(w)}, by workflow and current status "
        "(their sum: runs started; status completed/failed: of those, finished so).", labels=["workflow", "status"])
    for row in w.recent_runs().values("workflow_name", "status").annotate(n=Count("id")).order_by():
        recent.add_metric([row["workflow_name"], row["status"]], row["n"])
    yield recent

    unfinished = GaugeMetricFamily("stevora_runs_unfinished", "Runs not finished now, by status.",
                                   labels=["status"])
    counts = dict(Run.objects.filter(status__in=[s for s in RunStatus.values if s not in RUN_TERMINAL])
                  .values_list("status").annotate(n=Count("id")).order_by())
    for status in RunStatus.values:
        if status not in RUN_TERMINAL:
            unfinished.add_metric([status], counts.get(status, 0))
    yield unfinished

    open_steps = GaugeMetricFamily(
        "stevora_steps_open", "Steps of unfinished runs that are not finished, by status (ready: waiting "
        "for a worker; running; waiting: for an approval, event, timer or child run; pending: held back "
        "by a map's max_concurrency; queued: waiting for a concurrency slot) and step type.",
        labels=["status", "type"])
    active = [s for s in RunStatus.values if s not in RUN_TERMINAL]
    for row in (StepExecution.objects.filter(run__status__in=active, status__in=(
            StepStatus.READY, StepStatus.RUNNING, StepStatus.WAITING, StepStatus.PENDING, StepStatus.QUEUED))
            .values("status", "type").annotate(n=Count("id")).order_by()):
        open_steps.add_metric([row["status"], row["type"]], row["n"])
    yield open_steps

    yield from _step_families(w)


def _step_families(w: Window) -> Iterator[Metric]:
    runs_in_window = Q(run__status__in=RunStatus.values, run__created_at__gte=w.since)
    finished = (StepExecution.objects.filter(runs_in_window, status__in=(StepStatus.COMPLETED, StepStatus.FAILED),
                                             started_at__isnull=False, finished_at__isnull=False)
                .annotate(duration=ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())))
    buckets: dict[str, Any] = {f"le{i}": Count("id", filter=Q(duration__lte=timedelta(seconds=b)))
                               for i, b in enumerate(STEP_BUCKETS)}
    histogram = GaugeHistogramMetricFamily(
        "stevora_recent_step_duration_seconds", "Claim-to-finish time of the last attempt of completed and "
        f"failed steps of runs {_window_note(w)}, by step type and workflow.", labels=["type", "workflow"])
    for row in (finished.values("type", "run__workflow_name")
                .annotate(n=Count("id"), total=Sum("duration"), **buckets).order_by()):
        total = row["total"]
        seconds = total.total_seconds() if isinstance(total, timedelta) else float(total or 0) / 1e6
        pairs = [(_le(b), float(row[f"le{i}"])) for i, b in enumerate(STEP_BUCKETS)] + [("+Inf", float(row["n"]))]
        histogram.add_metric([row["type"], row["run__workflow_name"]], pairs, seconds)
    yield histogram

    recoveries = GaugeMetricFamily(
        "stevora_recent_step_lease_recoveries", f"Lease recoveries (a worker lost mid-step, its step claimed again) of "
        f"steps of runs {_window_note(w)}, by workflow.", labels=["workflow"])
    dead = GaugeMetricFamily(
        "stevora_recent_steps_dead_lettered", f"Steps failed for losing their worker more than STEVORA_MAX_RECOVERIES "
        f"times, of runs {_window_note(w)}, by workflow.", labels=["workflow"])
    rows = (StepExecution.objects.filter(runs_in_window).values("run__workflow_name")
            .annotate(recovered=Sum("recovery_count"),
                      dead=Count("id", filter=Q(status=StepStatus.FAILED, error__type="dead_lettered")))
            .order_by())
    for row in rows:
        recoveries.add_metric([row["run__workflow_name"]], float(row["recovered"] or 0))
        dead.add_metric([row["run__workflow_name"]], float(row["dead"]))
    yield recoveries
    yield dead

    window_gauge = GaugeMetricFamily("stevora_metrics_window_seconds",
                                     "The window of the stevora_recent_* metrics (STEVORA_METRICS_WINDOW_SECONDS).")
    window_gauge.add_metric([], w.seconds)
    yield window_gauge


def _le(bound: float) -> str:
    return repr(float(bound))

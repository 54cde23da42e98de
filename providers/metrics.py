"""LLM metrics for ``/metrics`` (registered with ``runs.metrics`` by providers.apps)."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, Sum
from prometheus_client.core import GaugeMetricFamily, Metric

from runs.metrics import Window

from .models import BreakerState, LLMCall, Provider


def families(w: Window) -> Iterator[Metric]:
    note = f"of runs created in the last {w.seconds:g} s (STEVORA_METRICS_WINDOW_SECONDS)"
    labels = ["provider", "model"]
    calls = GaugeMetricFamily("stevora_recent_llm_calls", f"LLM HTTP attempts {note}, by provider, model and "
                              "status (succeeded, failed, started: in flight or interrupted).",
                              labels=[*labels, "status"])
    tokens = GaugeMetricFamily("stevora_recent_llm_tokens", f"Tokens the providers reported {note}, by "
                               "direction (input, output).", labels=[*labels, "direction"])
    cost = GaugeMetricFamily("stevora_recent_llm_cost_usd", f"Cost in USD at the providers' configured prices "
                             f"{note}.", labels=labels)
    rows = (LLMCall.objects.filter(run__in=w.recent_runs().values("pk"))
            .values("provider_name", "model", "status")
            .annotate(n=Count("id"), inp=Sum("input_tokens"), out=Sum("output_tokens"), usd=Sum("cost_usd"))
            .order_by())
    totals: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        key = (row["provider_name"], row["model"])
        calls.add_metric([*key, row["status"]], row["n"])
        acc = totals.setdefault(key, [0.0, 0.0, 0.0])
        acc[0] += float(row["inp"] or 0)
        acc[1] += float(row["out"] or 0)
        acc[2] += float(row["usd"] or 0)
    for key, (inp, out, usd) in sorted(totals.items()):
        tokens.add_metric([*key, "input"], inp)
        tokens.add_metric([*key, "output"], out)
        cost.add_metric(list(key), usd)
    yield calls
    yield tokens
    yield cost

    breaker = GaugeMetricFamily("stevora_provider_breaker_state", "Circuit breaker of each enabled provider: 1 "
                                "for its current state (closed, open, half_open), 0 for the others.",
                                labels=["provider", "state"])
    for name, state in (Provider.objects.filter(enabled=True).order_by("name")
                        .values_list("name", "health__state")):
        current = state or BreakerState.CLOSED
        for value in BreakerState.values:
            breaker.add_metric([name, value], 1.0 if value == current else 0.0)
    yield breaker

"""Provider rate limits hold across workers: requests_per_minute and tokens_per_minute are counted
in the database, so a real OpenAI-compatible server never sees more than the limit in any window,
every run still completes, and a step held back falls back along its chain or waits (in the
worker when short, handed back holding no worker when long) — each wait or skip on the record."""

from __future__ import annotations

from typing import Any

import pytest

from providers.services import ConfigError, load_config
from runs.definitions import DefinitionError
from runs.models import RunEvent
from runs.services import load_workflow, start_run
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    llm_workflow,
    make_provider,
    output_of,
)

SLACK = 1.0  # a request admitted at t reaches the server a little later (more on a busy machine)


def busiest_window(times: list[float], window: float) -> int:
    """The most requests the server received in any stretch of ``window - SLACK`` seconds."""
    times = sorted(times)
    best = 0
    for i, start in enumerate(times):
        best = max(best, sum(1 for t in times[i:] if t - start < window - SLACK))
    return best


def heaviest_window(arrivals: list[tuple[float, int]], window: float) -> int:
    arrivals = sorted(arrivals)
    return max(sum(n for t, n in arrivals[i:] if t - start < window - SLACK)
               for i, (start, _) in enumerate(arrivals))


def rate_events(run_ids: list[Any]) -> list[dict[str, Any]]:
    return [e.data for e in RunEvent.objects.filter(run_id__in=run_ids, kind="llm_rate_limited")]


def test_twelve_steps_on_two_workers_never_exceed_requests_per_minute(fresh_engine: Any, workflow: Any,
                                                                      llm_server: Any) -> None:
    # Waits past 1 s are handed back (no worker held); shorter ones are slept in the worker.
    for _ in range(2):
        fresh_engine(STEVORA_LLM_RATE_WAIT_SECONDS="1")
    make_provider(llm_server, "limited", requests_per_minute=5, rate_window_seconds=4)
    workflow(llm_workflow("rl-requests", provider="limited"))
    run_ids = [start_run("rl-requests", {"question": f"q{i}"}).run.pk for i in range(12)]
    runs = [wait_for_run(pk, timeout=90) for pk in run_ids]

    assert [r.status for r in runs] == ["completed"] * 12, [r.error for r in runs if r.status != "completed"]
    received = llm_server.requests("limited")
    assert len(received) == 12
    assert busiest_window([r["received_at"] for r in received], 4) <= 5
    actions = {e["action"] for e in rate_events(run_ids)}
    assert "handed_back" in actions, actions  # 12 requests at 5 per 4 s: some waited for a whole window
    assert all(output_of(r)["provider"] == "limited" for r in runs)


def test_tokens_per_minute_reserves_an_estimate_and_settles_the_real_usage(fresh_engine: Any, workflow: Any,
                                                                           llm_server: Any) -> None:
    for _ in range(2):
        fresh_engine()
    # Each answer uses 40 tokens; each request is estimated at max_tokens (40) plus its prompt.
    make_provider(llm_server, "tokens", tokens_per_minute=100, rate_window_seconds=3)
    llm_server.script("tokens", default={"text": "ok", "usage": (30, 10)})
    workflow(llm_workflow("rl-tokens", provider="tokens", max_tokens=40))
    run_ids = [start_run("rl-tokens", {"question": f"q{i}"}).run.pk for i in range(6)]
    runs = [wait_for_run(pk, timeout=90) for pk in run_ids]

    assert [r.status for r in runs] == ["completed"] * 6, [r.error for r in runs if r.status != "completed"]
    received = llm_server.requests("tokens")
    assert len(received) == 6
    # 6 × 40 tokens at once would be 240: the server never sees more than 100 in a window.
    assert heaviest_window([(r["received_at"], 40) for r in received], 3) <= 100
    assert rate_events(run_ids), "the waits are on the runs' history"
    from providers.models import ProviderRateGrant

    # The estimates were replaced by the real usage.
    assert set(ProviderRateGrant.objects.filter(provider__name="tokens").values_list("tokens", flat=True)) <= {40}


def test_a_rate_limited_provider_falls_back_to_the_next_by_default(engine: Any, workflow: Any,
                                                                   llm_server: Any) -> None:
    make_provider(llm_server, "primary", requests_per_minute=1, rate_window_seconds=60)
    make_provider(llm_server, "secondary")
    llm_server.script("secondary", default={"text": "from the fallback"})
    workflow(llm_workflow("rl-fallback", provider="primary", fallback=["secondary"]))
    first = wait_for_run(start_run("rl-fallback", {}).run.pk)
    second = wait_for_run(start_run("rl-fallback", {}).run.pk)

    assert first.status == second.status == "completed", (first.error, second.error)
    assert output_of(first)["provider"] == "primary"
    assert output_of(second)["provider"] == "secondary"
    assert llm_server.count("primary") == 1 and llm_server.count("secondary") == 1
    route = output_of(second)["route"]
    assert route[0]["provider"] == "primary" and route[0]["outcome"] == "rate_limited"
    assert "requests_per_minute=1" in route[0]["reason"]
    assert [e["action"] for e in rate_events([second.pk])] == ["fell_back"]


def test_on_rate_limit_wait_waits_for_its_provider_instead_of_falling_back(engine: Any, workflow: Any,
                                                                           llm_server: Any) -> None:
    make_provider(llm_server, "primary", requests_per_minute=1, rate_window_seconds=1.5)
    make_provider(llm_server, "secondary")
    workflow(llm_workflow("rl-wait", provider="primary", fallback=["secondary"], on_rate_limit="wait"))
    first = wait_for_run(start_run("rl-wait", {}).run.pk)
    second = wait_for_run(start_run("rl-wait", {}).run.pk)

    assert first.status == second.status == "completed", (first.error, second.error)
    assert output_of(second)["provider"] == "primary"
    assert llm_server.count("secondary") == 0
    assert llm_server.count("primary") == 2
    assert [e["action"] for e in rate_events([second.pk])] == ["waited"]


def test_bad_limits_and_options_are_refused_naming_the_field(db: Any) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"providers": [{"name": "x", "kind": "openai", "model": "m", "requests_per_minute": 0}]})
    assert "providers[0].requests_per_minute" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config({"providers": [{"name": "x", "kind": "openai", "model": "m", "rate_window_seconds": 0}]})
    assert "providers[0].rate_window_seconds" in str(err.value)
    load_config({"providers": [{"name": "x", "kind": "openai", "model": "m", "requests_per_minute": 60,
                                "tokens_per_minute": None}]})
    with pytest.raises(DefinitionError) as derr:
        load_workflow(llm_workflow("rl-bad", provider="x", on_rate_limit="sometimes"))
    assert "on_rate_limit" in str(derr.value)

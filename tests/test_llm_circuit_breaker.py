"""A circuit breaker per provider, shared by all workers through the database: once open,
calls skip the failing provider without waiting for its timeout; after the cooling-off
exactly one probe goes through, and a successful probe closes the circuit."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from providers import breaker
from providers.models import BreakerState, ProviderHealth
from runs.services import start_run
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    calls_of,
    llm_server_fixture,
    llm_server_session_fixture,
    llm_workflow,
    make_provider,
    output_of,
)


def test_after_the_circuit_opens_calls_skip_the_provider_without_waiting_for_its_timeout(
        engine: Any, workflow: Any, llm_server: Any) -> None:
    primary = make_provider(llm_server, "primary", timeout_seconds=0.3, max_retries=1, breaker_threshold=2,
                            breaker_cooldown_seconds=600)
    make_provider(llm_server, "secondary")
    llm_server.script("primary", default={"hang": 10})
    workflow(llm_workflow("cb-open", provider="primary", fallback=["secondary"]))

    first = wait_for_run(start_run("cb-open", {}).run.pk)
    assert first.status == "completed", first.error
    assert llm_server.count("primary") == 2
    health = ProviderHealth.objects.get(pk=primary.pk)
    assert health.state == BreakerState.OPEN and health.consecutive_failures == 2

    second = wait_for_run(start_run("cb-open", {}).run.pk)
    assert second.status == "completed", second.error
    assert llm_server.count("primary") == 2  # not asked again: no request, no timeout waited
    assert [c.provider_name for c in calls_of(second)] == ["secondary"]
    skipped = output_of(second)["route"][0]
    assert skipped["provider"] == "primary" and skipped["outcome"] == "skipped"
    assert skipped["reason"].startswith("circuit open")


def test_a_successful_probe_after_the_cooling_off_closes_the_circuit(engine: Any, workflow: Any,
                                                                     llm_server: Any) -> None:
    primary = make_provider(llm_server, "primary", max_retries=0, breaker_threshold=1, breaker_cooldown_seconds=600)
    make_provider(llm_server, "secondary")
    llm_server.script("primary", {"status": 503}, default={"text": "healthy again"})
    workflow(llm_workflow("cb-probe", provider="primary", fallback=["secondary"]))

    assert output_of(wait_for_run(start_run("cb-probe", {}).run.pk))["provider"] == "secondary"
    assert ProviderHealth.objects.get(pk=primary.pk).state == BreakerState.OPEN
    # The cooling-off is over (moved into the past rather than slept through).
    ProviderHealth.objects.filter(pk=primary.pk).update(open_until=timezone.now() - timedelta(seconds=1))

    probed = wait_for_run(start_run("cb-probe", {}).run.pk)
    assert output_of(probed)["provider"] == "primary"
    assert output_of(probed)["text"] == "healthy again"
    health = ProviderHealth.objects.get(pk=primary.pk)
    assert health.state == BreakerState.CLOSED and health.consecutive_failures == 0


def test_a_failed_probe_opens_the_circuit_for_another_cooling_off(engine: Any, workflow: Any,
                                                                  llm_server: Any) -> None:
    primary = make_provider(llm_server, "primary", max_retries=3, breaker_threshold=1, breaker_cooldown_seconds=600)
    make_provider(llm_server, "secondary")
    llm_server.script("primary", default={"status": 502})
    workflow(llm_workflow("cb-reprobe", provider="primary", fallback=["secondary"]))
    wait_for_run(start_run("cb-reprobe", {}).run.pk)
    before = llm_server.count("primary")
    ProviderHealth.objects.filter(pk=primary.pk).update(open_until=timezone.now() - timedelta(seconds=1))

    assert output_of(wait_for_run(start_run("cb-reprobe", {}).run.pk))["provider"] == "secondary"
    assert llm_server.count("primary") == before + 1  # one probe, not 1 + max_retries tries
    health = ProviderHealth.objects.get(pk=primary.pk)
    assert health.state == BreakerState.OPEN and health.open_until is not None
    assert health.open_until > timezone.now()


def test_exactly_one_of_many_concurrent_callers_wins_the_probe(transactional_db: Any, llm_server: Any) -> None:
    primary = make_provider(llm_server, "primary")
    ProviderHealth.objects.create(provider=primary, state=BreakerState.OPEN, consecutive_failures=5,
                                  open_until=timezone.now() - timedelta(seconds=1))
    decisions: list[breaker.Admission] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def caller() -> None:
        try:
            start.wait()
            decision, _, _ = breaker.admit(primary)
            with lock:
                decisions.append(decision)
        finally:
            connection.close()

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(d.value for d in decisions) == ["probe", "skip", "skip", "skip"]
    assert ProviderHealth.objects.get(pk=primary.pk).state == BreakerState.HALF_OPEN
    breaker.succeeded(primary)
    assert breaker.admit(primary)[0] is breaker.Admission.PASS


def test_request_errors_do_not_trip_the_breaker(transactional_db: Any, llm_server: Any) -> None:
    from providers.wire import classify_status

    assert classify_status(400, {}, {}).counts_for_breaker is False
    assert classify_status(401, {}, {}).counts_for_breaker is True
    assert classify_status(503, {}, {}).permanent is False
    assert classify_status(529, {"retry-after": "2"}, {}).retry_after == 2.0


def test_a_caller_stops_retrying_a_provider_once_its_failures_opened_the_circuit(engine: Any, workflow: Any,
                                                                                 llm_server: Any) -> None:
    make_provider(llm_server, "primary", max_retries=5, breaker_threshold=2)
    make_provider(llm_server, "secondary")
    llm_server.script("primary", default={"status": 500})
    workflow(llm_workflow("cb-stop", provider="primary", fallback=["secondary"]))
    run = wait_for_run(start_run("cb-stop", {}).run.pk)
    assert output_of(run)["provider"] == "secondary"
    assert llm_server.count("primary") == 2  # not 1 + max_retries

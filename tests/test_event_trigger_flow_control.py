# mypy: disable-error-code="index"
"""Event triggers with debounce and rate_limit: a burst of events starts one run with its last
event, after the burst (per key), fired exactly once by the sweep, even when sweeps race or no
engine ran meanwhile; a rate limit starts at most N runs per key per period and records each
event it held back, with the reason; duplicates of one event id never start twice."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection

from events.flow import fire_due_debounces
from events.models import EventTriggering, PendingDebounce
from events.services import deliver_event
from runs.definitions import DefinitionError
from runs.models import Run, RunEvent
from runs.services import load_workflow
from steps import clock
from tests.conftest import wait_for_run
from tests.support.workers import wait_until


def on_signup(**trigger: Any) -> dict[str, Any]:
    return {"name": "welcome", "steps": [{"name": "greet", "type": "task", "handler": "test.value",
                                          "config": {"value": "{{ input.n }}"}}],
            "triggers": [{"event": "user.signup", **trigger}]}


def runs_of(name: str = "welcome") -> list[Run]:
    return list(Run.objects.filter(workflow_name=name).order_by("created_at"))


def in_threads(target: Any, count: int) -> list[BaseException]:
    failures: list[BaseException] = []

    def body(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def test_a_burst_starts_one_run_per_key_with_its_last_event_and_a_later_burst_another(
        engine: Any, workflow: Any) -> None:
    workflow(on_signup(debounce={"period_seconds": 1, "key": "{{ event.payload.user }}"}))
    for n in range(5):
        delivery = deliver_event("user.signup", payload={"user": "ann", "n": n}, event_id=f"ann-{n}")
        assert delivery.started_runs == []
    deliver_event("user.signup", payload={"user": "bob", "n": 10}, event_id="bob-0")
    deliver_event("user.signup", payload={"user": "ann", "n": 4}, event_id="ann-4")  # a duplicate: nothing new

    wait_until(lambda: len(runs_of()) == 2 and not PendingDebounce.objects.exists(), timeout=30,
               message="one run per key after the burst")
    by_input = {r.input["user"]: wait_for_run(r.pk) for r in runs_of()}
    assert by_input["ann"].input == {"user": "ann", "n": 4} and by_input["ann"].output == 4
    assert by_input["bob"].input == {"user": "bob", "n": 10}
    triggered = RunEvent.objects.get(run_id=by_input["ann"].pk, kind="run_triggered")
    assert triggered.data["debounced_events"] == 5 and triggered.data["event_id"] == "ann-4"
    outcomes = dict(EventTriggering.objects.filter(flow_key="ann").values_list("event__event_id", "outcome"))
    assert outcomes == {"ann-0": "debounced", "ann-1": "debounced", "ann-2": "debounced", "ann-3": "debounced",
                        "ann-4": "started"}
    assert EventTriggering.objects.get(event__event_id="ann-4").run_id == str(by_input["ann"].pk)

    # A second burst after the first one fired: a second run, with its own last event.
    for n in range(5, 8):
        deliver_event("user.signup", payload={"user": "ann", "n": n}, event_id=f"ann-{n}")
    wait_until(lambda: len(runs_of()) == 3, timeout=30, message="a second run for the second burst")
    assert wait_for_run(runs_of()[-1].pk).input == {"user": "ann", "n": 7}
    time.sleep(2.5)  # two more sweeps: nothing fires twice
    assert len(runs_of()) == 3


def test_a_due_burst_is_started_exactly_once_by_racing_sweeps_and_survives_a_stopped_engine(
        fresh_engine: Any, workflow: Any) -> None:
    # No engine runs (fresh_engine stopped the shared one): the rows wait, as after a crash.
    workflow(on_signup(debounce={"period_seconds": 1, "timeout_seconds": 1.5}))
    deliver_event("user.signup", payload={"n": 1}, event_id="e1")
    time.sleep(0.8)
    deliver_event("user.signup", payload={"n": 2}, event_id="e2")
    time.sleep(0.8)
    deliver_event("user.signup", payload={"n": 3}, event_id="e3")
    pending = PendingDebounce.objects.get()
    # Each event pushed the burst back, but never past its first event + timeout_seconds.
    assert pending.events == 3 and pending.fire_at == pending.first_at + timedelta(seconds=1.5)
    assert pending.event.event_id == "e3"
    time.sleep(max(0.0, (pending.fire_at - clock.now()).total_seconds()) + 0.1)

    started: list[int] = []
    failures = in_threads(lambda i: started.append(fire_due_debounces()), 6)
    assert not failures, failures
    assert sum(started) == 1
    assert fire_due_debounces() == 0
    (run,) = runs_of()
    assert run.input == {"n": 3} and run.idempotency_key == "debounce:0:e3"
    assert not PendingDebounce.objects.exists()
    fresh_engine()
    assert wait_for_run(run.pk).status == "completed"


def test_rate_limit_starts_at_most_n_runs_per_key_and_records_the_events_it_skipped(
        engine: Any, workflow: Any) -> None:
    workflow(on_signup(rate_limit={"limit": 2, "period_seconds": 1.5, "key": "{{ event.key }}"}))
    deliveries = [deliver_event("user.signup", key="eu", payload={"n": n}, event_id=f"eu-{n}") for n in range(4)]
    us = deliver_event("user.signup", key="us", payload={"n": 9}, event_id="us-0")

    assert [len(d.started_runs) for d in deliveries] == [1, 1, 0, 0]
    assert len(us.started_runs) == 1
    assert "rate_limit: 2 run(s) already started for key 'eu'" in deliveries[2].trigger_skipped[0]
    skipped = EventTriggering.objects.get(event__event_id="eu-3")
    assert skipped.outcome == "skipped" and "limit 2" in skipped.reason and skipped.run_id == ""
    # Duplicates of one event id start at most once, started or skipped.
    assert deliver_event("user.signup", key="eu", payload={"n": 0}, event_id="eu-0").started_runs == []
    assert deliver_event("user.signup", key="eu", payload={"n": 3}, event_id="eu-3").started_runs == []
    assert len(runs_of()) == 3
    for run in runs_of():
        assert wait_for_run(run.pk).status == "completed"

    # The period slides on: later events start runs again.
    time.sleep(1.6)
    assert len(deliver_event("user.signup", key="eu", payload={"n": 5}, event_id="eu-5").started_runs) == 1


def test_rate_limit_holds_when_deliveries_race(engine: Any, workflow: Any) -> None:
    workflow(on_signup(rate_limit={"limit": 3, "period_seconds": 60}))
    failures = in_threads(lambda i: deliver_event("user.signup", payload={"n": i}, event_id=f"r-{i}"), 8)
    assert not failures, failures
    assert len(runs_of()) == 3
    assert EventTriggering.objects.filter(outcome="skipped").count() == 5


@pytest.mark.parametrize(("trigger", "path"), [
    ({"cron": "* * * * *", "debounce": {"period_seconds": 5}}, "triggers[0].debounce"),
    ({"every_seconds": 5, "rate_limit": {"limit": 1, "period_seconds": 5}}, "triggers[0].rate_limit"),
    ({"event": "x", "debounce": {"period_seconds": 5}, "rate_limit": {"limit": 1, "period_seconds": 5}},
     "triggers[0].rate_limit"),
    ({"event": "x", "debounce": {"period_seconds": 5, "key": "{{ event.payload."}}, "triggers[0].debounce.key"),
    ({"event": "x", "debounce": {"period_seconds": 5, "timeout_seconds": 1}}, "triggers[0].debounce.timeout_seconds"),
    ({"event": "x", "debounce": {}}, "triggers[0].debounce"),
    ({"event": "x", "rate_limit": {"limit": 0, "period_seconds": 5}}, "triggers[0].rate_limit.limit"),
    ({"event": "x", "rate_limit": {"limit": 1, "period_seconds": 5, "burst": 2}}, "triggers[0].rate_limit"),
])
def test_bad_flow_control_options_are_refused_naming_the_field(db: Any, trigger: dict[str, Any], path: str) -> None:
    document = {"name": "bad-flow", "steps": [{"name": "a", "type": "task", "handler": "test.value"}],
                "triggers": [trigger]}
    with pytest.raises(DefinitionError) as err:
        load_workflow(document)
    assert path in str(err.value)

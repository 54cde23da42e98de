# mypy: disable-error-code="index,type-var"
"""External-event steps with a real engine: key and expression matching, lookback, dedup, timeout."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from events.models import Event, EventMatch, EventWait
from events.services import EventError, deliver_event
from runs.models import RunEvent
from runs.services import start_run
from steps.models import StepExecution
from tests.approval_support import busy_steps, finished, wait_parked


def order_workflow(name: str = "order-flow", **wait: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"name": "paid", "type": "external_event", "event": "payment.received",
                            "key": "{{ input.order }}"}
    step.update(wait)
    return {"name": name, "steps": [
        step,
        {"name": "ship", "type": "task", "handler": "test.value",
         "config": {"value": {
             "amount": "{{ 0 if steps.paid.output.timed_out else steps.paid.output.payload.amount }}"}}},
    ]}


def test_an_event_with_the_waiting_key_completes_the_step(engine: Any, workflow: Any) -> None:
    workflow(order_workflow())
    run = start_run("order-flow", {"order": "A-1"}).run
    other = start_run("order-flow", {"order": "A-2"}).run
    wait_parked(run.pk)
    wait_parked(other.pk)
    assert busy_steps([run.pk, other.pk]) == 0
    delivery = deliver_event("payment.received", key="A-1", payload={"amount": 42})
    step = StepExecution.objects.get(run_id=run.pk, key="paid")
    assert delivery.matched_step_ids == [step.pk] and not delivery.duplicate
    run = finished(run.pk)
    assert run.status == "completed", run.error
    assert run.output == {"amount": 42}
    assert step.__class__.objects.get(pk=step.pk).output["payload"] == {"amount": 42}
    assert not EventWait.objects.filter(step_id=step.pk).exists()
    other_step = StepExecution.objects.get(run_id=other.pk, key="paid")
    assert other_step.status == "waiting"
    assert RunEvent.objects.filter(run_id=run.pk, kind="event_matched").exists()


def test_an_expression_matches_over_the_event_and_the_run(engine: Any, workflow: Any) -> None:
    workflow({"name": "big-order", "input_schema": {"type": "object"}, "steps": [
        {"name": "paid", "type": "external_event", "event": "payment.received",
         "match": "event.payload.amount >= input.minimum and event.payload.currency == 'EUR'"},
    ]})
    run = start_run("big-order", {"minimum": 100}).run
    wait_parked(run.pk)
    assert deliver_event("payment.received", key="x", payload={"amount": 50, "currency": "EUR"}).matched_step_ids == []
    assert deliver_event("payment.received", payload={"amount": 500, "currency": "USD"}).matched_step_ids == []
    assert StepExecution.objects.get(run_id=run.pk, key="paid").status == "waiting"
    matched = deliver_event("payment.received", key="y", payload={"amount": 150, "currency": "EUR"})
    assert len(matched.matched_step_ids) == 1
    run = finished(run.pk)
    assert run.status == "completed" and run.output["payload"]["amount"] == 150


def test_one_event_completes_two_waiting_runs(engine: Any, workflow: Any) -> None:
    workflow(order_workflow())
    runs = [start_run("order-flow", {"order": "shared"}).run for _ in range(2)]
    for run in runs:
        wait_parked(run.pk)
    delivery = deliver_event("payment.received", key="shared", payload={"amount": 7})
    assert len(delivery.matched_step_ids) == 2
    for run in runs:
        assert finished(run.pk).output == {"amount": 7}


def test_an_early_event_within_lookback_is_consumed_when_the_wait_starts(engine: Any, workflow: Any) -> None:
    workflow(order_workflow(lookback_seconds=3600))
    early = deliver_event("payment.received", key="B-7", payload={"amount": 9})
    assert early.matched_step_ids == []
    run = start_run("order-flow", {"order": "B-7"}).run
    run = finished(run.pk)
    assert run.status == "completed" and run.output == {"amount": 9}
    assert EventMatch.objects.get(run_id=run.pk).event_id == early.event.pk
    assert RunEvent.objects.filter(run_id=run.pk, kind="event_matched", data__early=True).exists()


def test_an_early_event_outside_lookback_is_not_consumed(engine: Any, workflow: Any) -> None:
    workflow(order_workflow(lookback_seconds=60))
    old = deliver_event("payment.received", key="C-3", payload={"amount": 1})
    Event.objects.filter(pk=old.event.pk).update(received_at=timezone.now() - timedelta(seconds=120))
    run = start_run("order-flow", {"order": "C-3"}).run
    wait_parked(run.pk)
    assert StepExecution.objects.get(run_id=run.pk, key="paid").status == "waiting"
    assert not EventMatch.objects.filter(run_id=run.pk).exists()
    deliver_event("payment.received", key="C-3", payload={"amount": 2})
    assert finished(run.pk).output == {"amount": 2}


def test_a_duplicate_event_id_is_ignored(engine: Any, workflow: Any) -> None:
    workflow(order_workflow())
    first_run = start_run("order-flow", {"order": "D-1"}).run
    wait_parked(first_run.pk)
    first = deliver_event("payment.received", key="D-1", payload={"amount": 5}, event_id="evt-123")
    assert len(first.matched_step_ids) == 1
    finished(first_run.pk)
    second_run = start_run("order-flow", {"order": "D-1"}).run
    wait_parked(second_run.pk)
    again = deliver_event("payment.received", key="D-1", payload={"amount": 5}, event_id="evt-123")
    assert again.duplicate and again.event.pk == first.event.pk and again.matched_step_ids == []
    assert Event.objects.filter(event_id="evt-123").count() == 1
    assert StepExecution.objects.get(run_id=second_run.pk, key="paid").status == "waiting"


@pytest.mark.parametrize("on_timeout", ["fail", "continue"])
def test_a_wait_times_out(engine: Any, workflow: Any, on_timeout: str) -> None:
    workflow(order_workflow(name=f"order-timeout-{on_timeout}", timeout_seconds=0.5, on_timeout=on_timeout))
    run = start_run(f"order-timeout-{on_timeout}", {"order": "E-1"}).run
    run = finished(run.pk)
    step = StepExecution.objects.get(run_id=run.pk, key="paid")
    if on_timeout == "fail":
        assert run.status == "failed" and run.error["type"] == "event_timeout"
    else:
        assert run.status == "completed" and step.output["timed_out"] is True
    assert not EventWait.objects.filter(step_id=step.pk).exists()
    # A late event matches nothing.
    assert deliver_event("payment.received", key="E-1").matched_step_ids == []


def test_bad_events_are_refused_with_the_field_named(db: Any) -> None:
    with pytest.raises(EventError, match="name"):
        deliver_event("")
    with pytest.raises(EventError, match="key"):
        deliver_event("x", key={"a": 1})
    with pytest.raises(EventError, match="payload"):
        deliver_event("x", payload={"bad": object()})
    assert not Event.objects.exists()


def test_send_event_command_delivers(engine: Any, workflow: Any, capsys: Any) -> None:
    workflow(order_workflow())
    run = start_run("order-flow", {"order": "F-1"}).run
    wait_parked(run.pk)
    call_command("send_event", "payment.received", "--key", "F-1", "--payload", '{"amount": 3}', "--id", "f1")
    assert "1 waiting step(s) completed" in capsys.readouterr().out
    assert finished(run.pk).output == {"amount": 3}
    call_command("send_event", "payment.received", "--key", "F-1", "--payload", '{"amount": 3}', "--id", "f1")
    assert "already delivered" in capsys.readouterr().out


def test_expired_events_are_purged_and_bad_payloads_refused_by_the_command(db: Any, capsys: Any) -> None:
    from django.core.management.base import CommandError

    kept = deliver_event("ping", key="k").event
    old = deliver_event("ping", key="k").event
    Event.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    call_command("purge_events")
    assert "1 expired event row(s) deleted" in capsys.readouterr().out
    assert list(Event.objects.values_list("pk", flat=True)) == [kept.pk]
    with pytest.raises(CommandError, match="--payload is not valid JSON"):
        call_command("send_event", "ping", "--payload", "{nope")


def test_the_engine_purges_expired_events_on_its_own_schedule(fresh_engine: Any) -> None:
    # Beat's events.purge on PostgreSQL + Redis (the worker runs with -B), runengine's own
    # loop on the embedded default; STEVORA_EVENT_PURGE_SECONDS makes "hourly" quick here.
    from tests.support.workers import wait_until

    kept = deliver_event("ping", key="k").event
    old = deliver_event("ping", key="k").event
    Event.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    fresh_engine(STEVORA_EVENT_PURGE_SECONDS="0.5")
    wait_until(lambda: not Event.objects.filter(pk=old.pk).exists(), timeout=20, message="the expired event to go")
    assert list(Event.objects.values_list("pk", flat=True)) == [kept.pk]


def test_a_retried_run_waits_again_for_an_event_its_failure_cancelled(engine: Any, workflow: Any) -> None:
    from runs.services import retry_run

    workflow({"name": "two-branches-event", "steps": [{"name": "both", "type": "parallel", "branches": {
        "outside": [{"name": "paid", "type": "external_event", "event": "payment.received", "key": "{{ input.o }}"}],
        "machine": [{"name": "flaky", "type": "task", "handler": "test.fail_times", "config": {"times": 1}}],
    }}]})
    run = finished(start_run("two-branches-event", {"o": "G-1"}).run.pk)
    assert run.status == "failed"
    assert not EventWait.objects.filter(run_id=run.pk).exists()
    retry_run(run.pk, actor="test")
    wait_parked(run.pk)  # the other branch is done; only the parked one is open
    assert deliver_event("payment.received", key="G-1", payload={"ok": 1}).matched_step_ids
    run = finished(run.pk)
    assert run.status == "completed", run.error
    assert run.output["outside"]["payload"] == {"ok": 1}


def test_a_wait_starting_while_its_event_arrives_never_misses_it(transactional_db: Any, workflow: Any) -> None:
    """Thirty rounds of a run starting its wait (lookback 60s) while the event is delivered at
    the same moment: whichever commits first, the other sees it; no run is left waiting."""
    import threading

    from django.db import connection

    workflow({"name": "race-wait", "steps": [
        {"name": "paid", "type": "external_event", "event": "race.paid", "key": "{{ input.k }}",
         "lookback_seconds": 60}]})
    run_ids: list[Any] = []

    def starter(key: str, barrier: threading.Barrier) -> None:
        try:
            barrier.wait()
            run_ids.append(start_run("race-wait", {"k": key}).run.pk)
        finally:
            connection.close()

    def sender(key: str, barrier: threading.Barrier) -> None:
        try:
            barrier.wait()
            deliver_event("race.paid", key=key)
        finally:
            connection.close()

    for i in range(30):
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=starter, args=(f"r{i}", barrier)),
                   threading.Thread(target=sender, args=(f"r{i}", barrier))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(run_ids) == 30
    statuses = list(StepExecution.objects.filter(run_id__in=run_ids).values_list("status", flat=True))
    assert statuses == ["completed"] * 30


def test_a_claim_left_by_a_crashed_delivery_is_finished_by_the_next_one(transactional_db: Any,
                                                                         workflow: Any) -> None:
    workflow(order_workflow(name="crash-claim"))
    run = start_run("crash-claim", {"order": "H-1"}).run
    step = StepExecution.objects.get(run_id=run.pk, key="paid")
    # What a delivery leaves when it dies between its two transactions: event stored, wait claimed.
    first = Event.objects.create(workspace_id=run.workspace_id, name="payment.received", key="H-1",
                                 payload={"amount": 1})
    EventMatch.objects.create(event=first, step=step, run=run, step_name="paid")
    assert StepExecution.objects.get(pk=step.pk).status == "waiting"
    later = deliver_event("payment.received", key="H-1", payload={"amount": 2})
    assert later.matched_step_ids == [step.pk]
    assert StepExecution.objects.get(pk=step.pk).output["payload"] == {"amount": 1}  # the claimed event

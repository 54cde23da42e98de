# mypy: disable-error-code="index"
"""Event triggers with a real engine: an event starts one run per event id and trigger,
whatever the duplicates, besides resuming the runs that wait for it."""

from __future__ import annotations

import threading
from typing import Any

from django.db import connection

from events.models import Event
from events.services import deliver_event
from runs.models import Run, RunEvent
from runs.services import start_run
from tests.api_support import SERVICE_PERMS, client_for, make_user
from tests.approval_support import wait_parked
from tests.conftest import wait_for_run


def on_paid(**trigger: Any) -> dict[str, Any]:
    return {"name": "fulfil", "input_schema": {"type": "object", "required": ["order"]},
            "steps": [{"name": "ship", "type": "task", "handler": "test.value",
                       "config": {"value": "{{ input.order }}"}}],
            "triggers": [{"event": "order.paid", **trigger}]}


def waiting_for_paid() -> dict[str, Any]:
    return {"name": "await-payment", "steps": [
        {"name": "paid", "type": "external_event", "event": "order.paid", "key": "{{ input.order }}"}]}


def test_an_event_starts_one_run_per_event_id_under_duplicate_deliveries(engine: Any, workflow: Any) -> None:
    workflow(on_paid(input={"order": "{{ event.key }}", "amount": "{{ event.payload.amount }}"}))
    workflow(waiting_for_paid())
    waiting = start_run("await-payment", {"order": "A-1"}).run
    wait_parked(waiting.pk)
    api = client_for(make_user("svc", SERVICE_PERMS))
    failures: list[BaseException] = []

    def deliver() -> None:
        try:
            for _ in range(3):
                deliver_event("order.paid", key="A-1", payload={"amount": 5}, event_id="pay-1")
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    answer = api.post("/api/v1/events/", {"name": "order.paid", "key": "A-1", "payload": {"amount": 5},
                                          "id": "pay-1"}, format="json")
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert answer.status_code in (200, 201)
    assert Event.objects.filter(event_id="pay-1").count() == 1
    runs = list(Run.objects.filter(workflow_name="fulfil"))
    assert len(runs) == 1
    run = wait_for_run(runs[0].pk)
    assert run.status == "completed" and run.input == {"order": "A-1", "amount": 5} and run.output == "A-1"
    assert run.idempotency_key == "event:0:pay-1"
    triggered = RunEvent.objects.get(run_id=run.pk, kind="run_triggered")
    assert triggered.data["event_id"] == "pay-1" and triggered.data["trigger"] == 0
    assert wait_for_run(waiting.pk).status == "completed"  # the wait was resumed as before
    fresh = api.post("/api/v1/events/", {"name": "order.paid", "key": "B-2", "payload": {"amount": 1},
                                         "id": "pay-2"}, format="json")
    assert fresh.status_code == 201 and len(fresh.json()["started_runs"]) == 1
    again = api.post("/api/v1/events/", {"name": "order.paid", "key": "B-2", "id": "pay-2"}, format="json")
    assert again.status_code == 200 and again.json()["started_runs"] == []
    assert Run.objects.filter(workflow_name="fulfil").count() == 2


def test_a_trigger_starts_only_for_its_key_and_if_and_reports_an_input_it_cannot_use(
        engine: Any, workflow: Any) -> None:
    workflow(on_paid(key="eu", **{"if": "event.payload.amount > 10"}))
    assert deliver_event("order.paid", key="us", payload={"order": "1", "amount": 50}).started_runs == []
    assert deliver_event("order.paid", key="eu", payload={"order": "2", "amount": 5}).started_runs == []
    started = deliver_event("order.paid", key="eu", payload={"order": "3", "amount": 50}).started_runs
    assert len(started) == 1
    assert wait_for_run(started[0]).output == "3"  # no input: the payload is the input
    refused = deliver_event("order.paid", key="eu", payload={"amount": 50})  # no "order": the schema refuses
    assert refused.started_runs == [] and "fulfil triggers[0]" in refused.trigger_problems[0]
    assert "order" in refused.trigger_problems[0]
    assert Event.objects.filter(pk=refused.event.pk).exists()  # the event is stored all the same
    assert Run.objects.filter(workflow_name="fulfil").count() == 1


def test_a_run_started_by_an_event_does_not_take_that_event_for_its_own_wait(engine: Any, workflow: Any) -> None:
    workflow({"name": "reopen-watch", "steps": [
        {"name": "again", "type": "external_event", "event": "ticket.opened", "key": "{{ input.ticket }}"}],
        "triggers": [{"event": "ticket.opened", "input": {"ticket": "{{ event.key }}"}}]})
    first = deliver_event("ticket.opened", key="T-1", event_id="open-1")
    assert len(first.started_runs) == 1 and first.matched_step_ids == []
    wait_parked(first.started_runs[0])
    second = deliver_event("ticket.opened", key="T-1", event_id="open-2")
    assert len(second.matched_step_ids) == 1 and len(second.started_runs) == 1
    done = wait_for_run(first.started_runs[0])
    assert done.status == "completed" and done.output["event_id"] == "open-2"

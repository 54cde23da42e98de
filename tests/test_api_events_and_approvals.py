# mypy: disable-error-code="index"
"""Events and approvals over HTTP: the same doors as send_event and the admin's Approve button."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from approvals.models import Approval, ApprovalStatus
from events.models import Event
from runs.models import Run
from runs.services import load_workflow, start_run
from steps.models import StepExecution
from tests.api_support import SERVICE_PERMS, approval_first, client_for, errors_by_field, make_user
from tests.conftest import wait_for_run


def waits_for_payment() -> dict[str, Any]:
    return {"name": "api-pay", "steps": [
        {"name": "paid", "type": "external_event", "event": "payment.received", "key": "{{ input.order }}"},
        {"name": "ship", "type": "task", "handler": "test.value",
         "config": {"value": "{{ steps.paid.output.payload }}"}},
    ]}


@pytest.fixture
def api(db: Any) -> APIClient:
    return client_for(make_user("svc", SERVICE_PERMS))


@pytest.mark.django_db
def test_an_event_completes_the_waiting_step_and_a_repeated_id_is_a_duplicate(api: APIClient) -> None:
    load_workflow(waits_for_payment())
    run = start_run("api-pay", {"order": "A-1"}).run
    assert Run.objects.get(pk=run.pk).status == "waiting"
    body = {"name": "payment.received", "key": "A-1", "payload": {"amount": 12}, "id": "evt-1"}
    first = api.post("/api/v1/events/", body, format="json")
    assert first.status_code == 201, first.json()
    waiting = StepExecution.objects.get(run_id=run.pk, key="paid")
    assert first.json()["matched_steps"] == [waiting.pk] and first.json()["duplicate"] is False
    assert waiting.status == "completed" and waiting.output["payload"] == {"amount": 12}
    again = api.post("/api/v1/events/", body, format="json")
    assert again.status_code == 200 and again.json()["duplicate"] is True and again.json()["matched_steps"] == []
    assert Event.objects.count() == 1


@pytest.mark.django_db
def test_bad_events_name_the_field(api: APIClient) -> None:
    assert "name" in errors_by_field(api.post("/api/v1/events/", {"key": "x"}, format="json"))
    assert "name" in errors_by_field(api.post("/api/v1/events/", {"name": "x" * 300}, format="json"))
    assert "id" in errors_by_field(api.post("/api/v1/events/", {"name": "n", "id": ""}, format="json"))
    assert Event.objects.count() == 0
    assert client_for(make_user("reader")).post("/api/v1/events/", {"name": "n"}, format="json").status_code == 403


@pytest.mark.django_db
def test_events_stay_in_their_workspace(api: APIClient) -> None:
    from tests.api_support import other_workspace

    load_workflow(waits_for_payment())
    run = start_run("api-pay", {"order": "A-1"}).run
    elsewhere = client_for(make_user("svc2", SERVICE_PERMS), workspace=other_workspace())
    response = elsewhere.post("/api/v1/events/", {"name": "payment.received", "key": "A-1"}, format="json")
    assert response.status_code == 201 and response.json()["matched_steps"] == []
    assert StepExecution.objects.get(run_id=run.pk, key="paid").status == "waiting"


def test_a_reviewer_lists_and_decides_and_the_run_finishes(engine: Any, alice: User) -> None:
    load_workflow(approval_first(allow_edit=True))
    run = start_run("api-approval", {"topic": "tides"}).run
    api = client_for(alice)
    pending = api.get("/api/v1/approvals/").json()["results"]
    assert [a["run"] for a in pending] == [str(run.pk)]
    approval_id = pending[0]["id"]
    assert pending[0]["content"] == {"text": "tides"} and pending[0]["status"] == "pending"
    response = api.post(f"/api/v1/approvals/{approval_id}/decide/",
                        {"approve": True, "comment": "fine", "content": {"text": "tides!"}}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["output"]["approved"] is True and response.json()["output"]["content"] == {
        "text": "tides!"}
    assert response.json()["approval"]["decided_by_name"] == "alice"
    assert wait_for_run(run.pk).status == "completed"
    again = api.post(f"/api/v1/approvals/{approval_id}/decide/", {"approve": False}, format="json")
    assert again.status_code == 409 and "already approved" in again.json()["detail"]
    assert api.get("/api/v1/approvals/").json()["results"] == []


@pytest.mark.django_db
def test_bad_decisions_name_the_field_and_change_nothing(alice: User) -> None:
    load_workflow(approval_first())
    run = start_run("api-approval", {"topic": "x"}).run
    approval = Approval.objects.get(run_id=run.pk)
    api = client_for(alice)
    url = f"/api/v1/approvals/{approval.pk}/decide/"
    assert "approve" in errors_by_field(api.post(url, {}, format="json"))
    assert "approve" in errors_by_field(api.post(url, {"approve": "perhaps"}, format="json"))
    no_edit = api.post(url, {"approve": True, "content": {"x": 1}}, format="json")
    assert no_edit.status_code == 400 and "content" in errors_by_field(no_edit)
    assert Approval.objects.get(pk=approval.pk).status == ApprovalStatus.PENDING
    rejected = api.post(url, {"approve": False, "comment": "no"}, format="json")
    assert rejected.status_code == 200 and rejected.json()["approval"]["status"] == "rejected"

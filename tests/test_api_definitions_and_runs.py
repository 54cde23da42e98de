"""Definitions and runs over HTTP: create, list, retrieve, start, filter, control, history, cost."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from runs.models import Run, RunEvent, Workspace
from runs.services import load_workflow, start_run
from tests.api_support import SERVICE_PERMS, client_for, errors_by_field, make_user, three_steps
from tests.conftest import wait_for_run


@pytest.fixture
def api(db: Any) -> APIClient:
    return client_for(make_user("svc", SERVICE_PERMS))


# --- definitions ---------------------------------------------------------------------------


def test_a_definition_is_stored_once_and_a_changed_one_becomes_the_next_version(api: APIClient) -> None:
    doc = three_steps()
    first = api.post("/api/v1/definitions/", {"definition": doc}, format="json")
    assert first.status_code == 201
    assert first.json()["version"] == 1 and first.json()["created"] is True
    again = api.post("/api/v1/definitions/", {"definition": doc}, format="json")
    assert again.status_code == 200 and again.json()["version"] == 1 and again.json()["created"] is False
    changed = api.post("/api/v1/definitions/", {"definition": {**doc, "description": "v2"}}, format="json")
    assert changed.status_code == 201 and changed.json()["version"] == 2
    assert api.get("/api/v1/definitions/api-three/").json()["version"] == 2
    v1 = api.get("/api/v1/definitions/api-three/versions/1/").json()
    assert v1["version"] == 1 and v1["definition"] == doc
    listed = api.get("/api/v1/definitions/", {"name": "api-three"}).json()["results"]
    assert [d["version"] for d in listed] == [2, 1]


def test_a_yaml_definition_is_accepted_as_text(api: APIClient) -> None:
    text = "name: yaml-flow\nsteps:\n  - name: only\n    type: task\n    handler: test.value\n"
    response = api.post("/api/v1/definitions/", {"definition": text}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["name"] == "yaml-flow"


def test_a_bad_definition_is_a_400_listing_each_bad_path(api: APIClient) -> None:
    doc = {"name": "bad flow!", "steps": [
        {"name": "a", "type": "task", "handler": "no.such.handler"},
        {"name": "b", "type": "wait"},
    ]}
    response = api.post("/api/v1/definitions/", {"definition": doc}, format="json")
    assert response.status_code == 400
    assert response.json()["type"] == "invalid_definition"
    fields = errors_by_field(response)
    assert "name" in fields and any(f.startswith("steps[1]") for f in fields), fields
    assert api.post("/api/v1/definitions/", {}, format="json").json()["errors"] == [
        {"field": "definition", "message": "This field is required."}]
    unparsable = errors_by_field(api.post("/api/v1/definitions/", {"definition": "steps: [unclosed"}, format="json"))
    assert list(unparsable) == ["definition"] and "not valid YAML" in unparsable["definition"]


def test_unknown_definitions_and_versions_are_404(api: APIClient) -> None:
    load_workflow(three_steps())
    assert api.get("/api/v1/definitions/nope/").status_code == 404
    assert api.get("/api/v1/definitions/api-three/versions/9/").status_code == 404
    assert api.get("/api/v1/definitions/api-three/versions/0/").status_code == 404


# --- starting runs -----------------------------------------------------------------------------


def test_starting_a_run_returns_201_with_its_steps(api: APIClient) -> None:
    load_workflow(three_steps())
    response = api.post("/api/v1/runs/", {"workflow": "api-three", "input": {"topic": "tides"}}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "running" and body["workflow"] == "api-three" and body["version"] == 1
    assert [s["key"] for s in body["steps"]] == ["a"] and body["steps"][0]["status"] == "ready"
    assert body["created_by"].startswith("svc (api key ")


def test_the_same_idempotency_key_returns_the_same_run_with_200(api: APIClient) -> None:
    load_workflow(three_steps())
    body = {"workflow": "api-three", "input": {"topic": "x"}}
    first = api.post("/api/v1/runs/", body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    second = api.post("/api/v1/runs/", body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    as_field = api.post("/api/v1/runs/", {**body, "idempotency_key": "order-1"}, format="json")
    assert (first.status_code, second.status_code, as_field.status_code) == (201, 200, 200)
    assert first.json()["id"] == second.json()["id"] == as_field.json()["id"]
    assert first.json()["idempotency_key"] == "order-1"
    other = api.post("/api/v1/runs/", body, format="json", HTTP_IDEMPOTENCY_KEY="order-2")
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert Run.objects.count() == 2
    clash = api.post("/api/v1/runs/", {**body, "idempotency_key": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="b")
    assert errors_by_field(clash) == {"idempotency_key": "differs from the Idempotency-Key header"}


def test_bad_starts_name_the_field_and_store_nothing(api: APIClient) -> None:
    load_workflow(three_steps())
    assert "workflow" in errors_by_field(api.post("/api/v1/runs/", {"workflow": "nope"}, format="json"))
    missing = api.post("/api/v1/runs/", {"workflow": "api-three", "input": {}}, format="json")
    assert missing.status_code == 400 and "input" in errors_by_field(missing)
    wrong_type = api.post("/api/v1/runs/", {"workflow": "api-three", "input": {"topic": 5}}, format="json")
    assert "input.topic" in errors_by_field(wrong_type)
    not_object = api.post("/api/v1/runs/", {"workflow": "api-three", "input": [1]}, format="json")
    assert "input" in errors_by_field(not_object)
    assert list(errors_by_field(api.post("/api/v1/runs/", [1], format="json"))) == ["body"]
    assert "version" in errors_by_field(api.post("/api/v1/runs/", {"workflow": "api-three", "version": 0},
                                                 format="json"))
    assert "max_tokens" in errors_by_field(api.post(
        "/api/v1/runs/", {"workflow": "api-three", "input": {"topic": "x"}, "max_tokens": -1}, format="json"))
    not_json = api.generic("POST", "/api/v1/runs/", "{not json", content_type="application/json")
    assert not_json.status_code == 400 and not_json.json()["type"] == "parse_error"
    assert Run.objects.count() == 0


def test_a_budget_is_stored_on_the_run(api: APIClient) -> None:
    load_workflow(three_steps())
    response = api.post("/api/v1/runs/", {"workflow": "api-three", "input": {"topic": "x"}, "max_cost_usd": "0.5",
                                          "max_tokens": 1000}, format="json")
    assert response.status_code == 201, response.json()
    run = Run.objects.get(pk=response.json()["id"])
    assert run.max_cost_usd == Decimal("0.5") and run.max_tokens == 1000


# --- listing -------------------------------------------------------------------------------------


def test_runs_are_listed_newest_first_with_filters_and_cursor_pages(api: APIClient) -> None:
    load_workflow(three_steps())
    load_workflow(three_steps("api-other"))
    ids = [str(start_run("api-three", {"topic": str(i)}).run.pk) for i in range(5)]
    other = start_run("api-other", {"topic": "o"}).run
    Run.objects.filter(pk=ids[0]).update(status="completed")
    old = timezone.now() - timedelta(days=3)
    Run.objects.filter(pk=ids[1]).update(created_at=old)

    seen: list[str] = []
    url: str | None = "/api/v1/runs/?workflow=api-three&page_size=2"
    while url:
        page = api.get(url).json()
        assert len(page["results"]) <= 2
        seen.extend(r["id"] for r in page["results"])
        url = page["next"]
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    assert seen[-1] == ids[1]  # the oldest last
    assert [r["id"] for r in api.get("/api/v1/runs/", {"status": "completed"}).json()["results"]] == [ids[0]]
    assert [r["id"] for r in api.get("/api/v1/runs/", {"workflow": "api-other"}).json()["results"]] == [
        str(other.pk)]
    since = (timezone.now() - timedelta(days=1)).isoformat()
    recent = {r["id"] for r in api.get("/api/v1/runs/", {"created_after": since}).json()["results"]}
    assert ids[1] not in recent and ids[2] in recent
    before = {r["id"] for r in api.get("/api/v1/runs/", {"created_before": since}).json()["results"]}
    assert before == {ids[1]}
    assert "created_after" in errors_by_field(api.get("/api/v1/runs/", {"created_after": "yesterday"}))
    assert api.get("/api/v1/runs/", {"cursor": "garbage"}).status_code == 404


# --- controls ------------------------------------------------------------------------------------


def test_pause_resume_and_cancel_through_the_api(engine: Any, api: APIClient, ledger: Path) -> None:
    doc = three_steps(ledger=str(ledger))
    doc["steps"][0]["config"]["sleep"] = 1.5
    load_workflow(doc)
    run_id = api.post("/api/v1/runs/", {"workflow": "api-three", "input": {"topic": "x"}},
                      format="json").json()["id"]
    paused = api.post(f"/api/v1/runs/{run_id}/pause/", {}, format="json")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert api.post(f"/api/v1/runs/{run_id}/pause/", {}, format="json").status_code == 409
    resumed = api.post(f"/api/v1/runs/{run_id}/resume/", {}, format="json")
    assert resumed.status_code == 200 and resumed.json()["status"] in ("running", "completed")
    assert wait_for_run(run_id).status == "completed"
    refused = api.post(f"/api/v1/runs/{run_id}/cancel/", {"reason": "late"}, format="json")
    assert refused.status_code == 409 and refused.json()["type"] == "conflict"
    assert "already completed" in refused.json()["detail"]

    second = api.post("/api/v1/runs/", {"workflow": "api-three", "input": {"topic": "y"}}, format="json").json()
    cancelled = api.post(f"/api/v1/runs/{second['id']}/cancel/", {"reason": "changed my mind"}, format="json")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"]["message"] == "changed my mind"
    kinds = [e["kind"] for e in api.get(f"/api/v1/runs/{second['id']}/history/").json()["results"]]
    assert kinds[0] == "run_started" and "control_cancel" in kinds


def test_retry_from_the_failed_step_and_the_step_shows_its_attempts(engine: Any, api: APIClient) -> None:
    load_workflow({"name": "api-flaky", "steps": [
        {"name": "flaky", "type": "task", "handler": "test.fail_times", "config": {"times": 2},
         "retry": {"max_attempts": 2, "backoff_seconds": 0.05, "jitter": False}},
    ]})
    run_id = api.post("/api/v1/runs/", {"workflow": "api-flaky"}, format="json").json()["id"]
    assert wait_for_run(run_id).status == "failed"
    assert api.post(f"/api/v1/runs/{run_id}/resume/", {}, format="json").status_code == 409
    step = api.get(f"/api/v1/runs/{run_id}/steps/flaky/").json()
    assert [a["outcome"] for a in step["attempt_history"]] == ["retry_scheduled", "failed"]
    assert step["attempt_history"][0]["attempt"] == 1 and step["llm_calls"] == []
    retried = api.post(f"/api/v1/runs/{run_id}/retry/", {}, format="json")
    # The answer shows the run as it is when read back: a fast worker may have finished it.
    assert retried.status_code == 200 and retried.json()["status"] in ("running", "completed")
    assert wait_for_run(run_id).status == "completed"
    step = api.get(f"/api/v1/runs/{run_id}/steps/flaky/").json()
    assert step["attempt_history"][-1]["outcome"] == "completed" and step["status"] == "completed"
    assert api.get(f"/api/v1/runs/{run_id}/steps/nope/").status_code == 404
    detail = api.get(f"/api/v1/runs/{run_id}/").json()
    assert detail["steps"][0]["attempts"] == 3 and detail["output"] == {"attempt": 3}


def test_a_map_items_step_key_is_reachable_url_encoded(engine: Any, api: APIClient) -> None:
    load_workflow({"name": "api-map", "steps": [
        {"name": "each", "type": "map", "over": [1, 2],
         "step": {"name": "item", "type": "task", "handler": "test.value"}},
    ]})
    run_id = api.post("/api/v1/runs/", {"workflow": "api-map"}, format="json").json()["id"]
    assert wait_for_run(run_id).status == "completed"
    item = api.get(f"/api/v1/runs/{run_id}/steps/each%5B1%5D/").json()
    assert item["key"] == "each[1]" and item["parent"] == "each" and item["output"] == 2


def test_cost_of_a_run_and_of_the_workspace(api: APIClient) -> None:
    from providers.models import LLMCall

    load_workflow(three_steps())
    run = start_run("api-three", {"topic": "x"}).run
    step = run.steps.get()
    for round_, (provider, cost) in enumerate([("openai", "0.01"), ("openai", "0.02"), ("anthropic", "0.5")]):
        LLMCall.objects.create(run=run, step=step, round=round_ + 1, provider_name=provider, kind="chat", model="m",
                               status="succeeded",
                               input_tokens=10, output_tokens=5, cost_usd=Decimal(cost))
    Run.objects.filter(pk=run.pk).update(input_tokens=30, output_tokens=15, cost_usd=Decimal("0.53"))
    calls = api.get(f"/api/v1/runs/{run.pk}/steps/a/").json()["llm_calls"]
    assert [(c["provider"], c["round"], c["cost_usd"]) for c in calls] == [
        ("openai", 1, "0.010000"), ("openai", 2, "0.020000"), ("anthropic", 3, "0.500000")]
    cost = api.get(f"/api/v1/runs/{run.pk}/cost/").json()
    assert cost["cost_usd"] == "0.530000" and cost["input_tokens"] == 30
    assert {r["key"]: r["cost_usd"] for r in cost["by_provider"]} == {"anthropic": "0.500000",
                                                                      "openai": "0.030000"}
    assert cost["by_step"] == [{"key": "a", "calls": 3, "input_tokens": 30, "output_tokens": 15,
                                "cost_usd": "0.530000"}]
    summary = api.get("/api/v1/cost/", {"period": "month"}).json()
    assert summary["total"]["cost_usd"] == "0.530000" and summary["total"]["calls"] == 3
    assert [r["key"] for r in summary["by_workflow"]] == ["api-three"]
    assert len(summary["by_period"]) == 1 and summary["period"] == "month"
    only = api.get("/api/v1/cost/", {"provider": "openai", "workflow": "api-three"}).json()
    assert only["total"]["cost_usd"] == "0.030000"
    other = client_for(make_user("other-ws"), workspace=Workspace.objects.create(slug="w2", name="W2"))
    assert other.get("/api/v1/cost/").json()["total"]["calls"] == 0
    assert "period" in errors_by_field(api.get("/api/v1/cost/", {"period": "decade"}))
    # An inverted or empty window is valid (the schema cannot forbid it, so neither does the API): zero totals.
    inverted = api.get("/api/v1/cost/", {"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"})
    assert inverted.status_code == 200 and inverted.json()["total"]["calls"] == 0


def test_history_pages_oldest_first(api: APIClient) -> None:
    load_workflow(three_steps())
    run = start_run("api-three", {"topic": "x"}).run
    for i in range(5):
        RunEvent.objects.create(run=run, kind="note", message=str(i))
    first = api.get(f"/api/v1/runs/{run.pk}/history/", {"page_size": 3}).json()
    second = api.get(first["next"]).json()
    kinds = [e["kind"] for e in first["results"] + second["results"]]
    assert kinds[:2] == ["run_started", "step_ready"] and kinds.count("note") >= 1
    assert len(first["results"]) == 3



# mypy: disable-error-code="index"
"""The served OpenAPI schema and the API's validation agree, in both directions.

Each case is judged twice: by the schema clients read (/api/schema/, its request
component or query parameter, with a JSON Schema validator) and by the API itself.
A value the schema allows is not refused for its shape; a value the schema refuses
is refused with a 400 naming the field. The cases are the ones schemathesis found
(issue 10) plus their neighbours.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from django.test import Client
from rest_framework.test import APIClient

from runs.services import load_workflow, start_run
from tests.api_support import SERVICE_PERMS, client_for, errors_by_field, make_user, three_steps


@pytest.fixture(scope="module")
def openapi(django_db_blocker: Any) -> dict[str, Any]:
    with django_db_blocker.unblock():
        response = Client().get("/api/schema/?format=json")
    assert response.status_code == 200
    return json.loads(response.content)


def body_ok(openapi: dict[str, Any], component: str, body: dict[str, Any]) -> bool:
    root = {"$ref": f"#/components/schemas/{component}", "components": openapi["components"]}
    return jsonschema.Draft4Validator(root).is_valid(body)


def query_ok(openapi: dict[str, Any], path: str, name: str, value: Any) -> bool:
    parameter = next(p for p in openapi["paths"][path]["get"]["parameters"] if p["name"] == name)
    return jsonschema.Draft4Validator(parameter["schema"]).is_valid(value)


@pytest.fixture
def api(db: Any) -> APIClient:
    load_workflow(three_steps())
    load_workflow({"name": "free", "steps": [{"name": "a", "type": "task", "handler": "test.value"}]})
    return client_for(make_user("svc", SERVICE_PERMS))


BODY_CASES = [
    # (url, request component, body, field named when refused, the schema allows it)
    ("/api/v1/definitions/", "DefinitionCreateRequest", {"definition": None}, "definition", False),
    ("/api/v1/definitions/", "DefinitionCreateRequest", {"definition": [1]}, "definition", False),
    ("/api/v1/runs/", "RunStartRequest", {"workflow": "free", "input": None}, "input", False),
    ("/api/v1/runs/", "RunStartRequest", {"workflow": "free", "input": [1]}, "input", False),
    ("/api/v1/runs/", "RunStartRequest", {"workflow": "free", "max_cost_usd": ""}, "max_cost_usd", False),
    ("/api/v1/runs/", "RunStartRequest", {"workflow": "free", "max_cost_usd": "01.5"}, "max_cost_usd", False),
    ("/api/v1/runs/", "RunStartRequest", {"workflow": "free", "max_cost_usd": 0}, "max_cost_usd", False),
    ("/api/v1/runs/", "RunStartRequest", {"workflow": "free", "max_cost_usd": "12.50"}, None, True),
    ("/api/v1/runs/", "RunStartRequest", {"workflow": "free", "max_cost_usd": 1e-9}, None, True),
    ("/api/v1/runs/", "RunStartRequest", {"workflow": "free", "max_tokens": "7"}, "max_tokens", False),
    ("/api/v1/runs/", "RunStartRequest", {"workflow": "free", "max_tokens": 7.0}, "max_tokens", False),
    ("/api/v1/runs/", "RunStartRequest", {"workflow": "free", "max_tokens": 7}, None, True),
    ("/api/v1/runs/", "RunStartRequest", {"workflow": 5}, "workflow", False),
    ("/api/v1/runs/", "RunStartRequest", {"workflow": "free", "version": True}, "version", False),
    ("/api/v1/events/", "EventInRequest", {"name": 5}, "name", False),
    ("/api/v1/events/", "EventInRequest", {"name": "n", "payload": None}, None, True),
    ("/api/v1/events/", "EventInRequest", {"name": "n", "key": 5}, None, True),
    ("/api/v1/events/", "EventInRequest", {"name": "n", "key": 5.5}, "key", False),
    ("/api/v1/events/", "EventInRequest", {"name": "n", "id": 7}, "id", False),
]


@pytest.mark.parametrize("url, component, body, field, allowed", BODY_CASES,
                         ids=[f"{c[0]}{c[2]}" for c in BODY_CASES])
def test_a_body_is_refused_by_the_api_exactly_when_the_schema_refuses_it(
        api: APIClient, openapi: dict[str, Any], url: str, component: str, body: dict[str, Any],
        field: str | None, allowed: bool) -> None:
    assert body_ok(openapi, component, body) is allowed
    response = api.post(url, body, format="json")
    if allowed:
        assert response.status_code in (200, 201), response.json()
    else:
        assert response.status_code == 400 and field in errors_by_field(response), response.json()


def test_a_decision_must_be_a_json_boolean(api: APIClient, openapi: dict[str, Any]) -> None:
    assert not body_ok(openapi, "DecideRequest", {"approve": "true"})
    response = api.post("/api/v1/approvals/1/decide/", {"approve": "true"}, format="json")
    assert response.status_code in (400, 404)  # no approval 1: the lookup comes first (a 404 is documented too)


QUERY_CASES = [
    # (path in the schema, url, parameter, value, the schema allows it)
    ("/api/v1/runs/", "/api/v1/runs/?workflow=", "workflow", "", False),
    ("/api/v1/runs/", "/api/v1/runs/?status=", "status", "", False),
    ("/api/v1/runs/", "/api/v1/runs/?page_size=null", "page_size", None, False),
    ("/api/v1/runs/", "/api/v1/runs/?page_size=0", "page_size", 0, False),
    ("/api/v1/runs/", "/api/v1/runs/?page_size=501", "page_size", 501, False),
    ("/api/v1/runs/", "/api/v1/runs/?page_size=500", "page_size", 500, True),
    ("/api/v1/definitions/", "/api/v1/definitions/?name=", "name", "", False),
    ("/api/v1/runs/{run_id}/history/", None, "page_size", 1000, True),
    ("/api/v1/cost/", "/api/v1/cost/?workflow=", "workflow", "", False),
    ("/api/v1/cost/", "/api/v1/cost/?since=2026-01-01T00:00:00Z&until=2026-01-01T00:00:00Z", "since",
     "2026-01-01T00:00:00Z", True),
    ("/api/v1/cost/", "/api/v1/cost/?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", "until",
     "2026-01-01T00:00:00Z", True),
]


@pytest.mark.parametrize("path, url, name, value, allowed", QUERY_CASES, ids=[str(c[1] or c[0]) for c in QUERY_CASES])
def test_a_query_parameter_is_refused_by_the_api_exactly_when_the_schema_refuses_it(
        api: APIClient, openapi: dict[str, Any], path: str, url: str | None, name: str, value: Any,
        allowed: bool) -> None:
    assert query_ok(openapi, path, name, value) is allowed
    if url is None:
        run = start_run("free", {}).run
        url = f"/api/v1/runs/{run.pk}/history/?page_size={value}"
    response = api.get(url)
    if allowed:
        assert response.status_code == 200, response.json()
    else:
        assert response.status_code == 400 and name in errors_by_field(response), response.json()


def test_an_event_name_is_stored_as_given_and_an_integer_key_as_its_text(api: APIClient) -> None:
    response = api.post("/api/v1/events/", {"name": "n", "key": 5, "payload": None}, format="json")
    assert response.status_code == 201 and response.json()["key"] == "5" and response.json()["payload"] == {}


def test_every_operation_documents_the_error_body_and_only_its_own_codes(openapi: dict[str, Any]) -> None:
    seen: dict[str, set[str]] = {}
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            seen[f"{method.upper()} {path}"] = codes
            assert "500" not in codes
            for code in codes - {"200", "201"}:
                ref = operation["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/Error"), (path, method, code)
            # Pausing a paused schedule (or resuming an active one) is a no-op, not a conflict.
            conflicts = (path.endswith(("/cancel/", "/pause/", "/resume/", "/retry/", "/fork/", "/decide/"))
                         and not path.startswith("/api/v1/schedules/"))
            assert ("409" in codes) == conflicts, (method, path)
            assert ("403" in codes) == (method == "post"), (method, path)
            assert ("413" in codes) == (method == "post"), (method, path)
    assert "404" not in seen["POST /api/v1/runs/"] and "404" not in seen["GET /api/v1/cost/"]
    assert "404" in seen["GET /api/v1/approvals/"]  # a bad cursor
    assert {"GET /api/v1/schedules/", "POST /api/v1/schedules/{schedule_id}/pause/",
            "POST /api/v1/schedules/{schedule_id}/resume/"} <= set(seen)

# mypy: disable-error-code="index"
"""Hostile input never reaches the database as a 500: each case is a 4xx in the JSON error body naming the field.

Each test is one row of issue 10's "Server errors" table, run against the real
database of the mode (PostgreSQL refuses NUL and lone surrogates; SQLite does not,
and must refuse them all the same so both modes behave alike).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import RequestFactory, override_settings
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from api.errors import server_error
from events.models import Event
from runs.models import Run, Workflow
from runs.services import load_workflow, start_run
from tests.api_support import SERVICE_PERMS, approval_first, client_for, errors_by_field, make_user, three_steps

JSON_ERROR_KEYS = {"type", "detail", "errors"}


@pytest.fixture
def api(db: Any) -> APIClient:
    load_workflow(three_steps())
    load_workflow({"name": "free", "steps": [{"name": "a", "type": "task", "handler": "test.value",
                                              "config": {"value": 1}}]})
    return client_for(make_user("svc", SERVICE_PERMS))


def post_raw(api: APIClient, url: str, text: str) -> Any:
    """A body exactly as written (escapes like \\ud800 survive; the test client would re-encode a dict)."""
    return api.generic("POST", url, text.encode(), content_type="application/json")  # type: ignore[arg-type]


def nested(depth: int, leaf: Any = 1) -> str:
    return '{"a":' * depth + json.dumps(leaf) + "}" * depth


def assert_refused(response: Any, field: str, status: int = 400) -> dict[str, str]:
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    fields = errors_by_field(response)
    assert any(name == field or name.startswith(field + ".") or name.startswith(field + "[") for name in fields), \
        fields
    return fields


# --- NUL ----------------------------------------------------------------------------------


def test_a_nul_character_in_run_input_is_a_400_naming_the_field(api: APIClient) -> None:
    response = post_raw(api, "/api/v1/runs/", '{"workflow": "api-three", "input": {"topic": "a\\u0000b"}}')
    fields = assert_refused(response, "input.topic")
    assert "NUL" in fields["input.topic"]
    assert Run.objects.count() == 0


def test_a_nul_character_in_an_event_payload_is_a_400_naming_the_field(api: APIClient) -> None:
    response = post_raw(api, "/api/v1/events/", '{"name": "paid", "payload": {"note": ["ok", "\\u0000"]}}')
    assert_refused(response, "payload.note[1]")
    response = post_raw(api, "/api/v1/events/", '{"name": "pa\\u0000id"}')
    assert_refused(response, "name")
    assert Event.objects.count() == 0


def test_a_nul_character_in_a_definition_description_is_a_400_naming_the_field(api: APIClient) -> None:
    document = ('{"name": "nul", "description": "a\\u0000b", '
                '"steps": [{"name": "a", "type": "task", "handler": "test.value"}]}')
    assert_refused(post_raw(api, "/api/v1/definitions/", f'{{"definition": {document}}}'), "definition.description")
    # The same document as YAML text reaches the service's own check (the text itself holds no NUL).
    text = 'name: nul\ndescription: "a\\0b"\nsteps: [{name: a, type: task, handler: test.value}]\n'
    response = api.post("/api/v1/definitions/", {"definition": text}, format="json")
    assert response.status_code == 400 and response.json()["type"] == "invalid_definition"
    assert "NUL" in errors_by_field(response)["description"]
    assert not Workflow.objects.filter(name="nul").exists()


def test_a_nul_character_in_a_query_parameter_or_path_is_a_400_naming_it(api: APIClient) -> None:
    assert_refused(api.get("/api/v1/definitions/?name=a%00b"), "name")
    assert_refused(api.get("/api/v1/runs/?workflow=a%00b"), "workflow")
    assert_refused(api.get("/api/v1/cost/?provider=%00"), "provider")
    assert_refused(api.get("/api/v1/definitions/a%00b/"), "path")


# --- lone surrogates -----------------------------------------------------------------------


def test_a_lone_surrogate_in_run_input_is_a_400_naming_the_field(api: APIClient) -> None:
    response = post_raw(api, "/api/v1/runs/", '{"workflow": "free", "input": {"x": "\\ud800"}}')
    assert "surrogate" in assert_refused(response, "input.x")["input.x"]
    response = post_raw(api, "/api/v1/runs/", '{"workflow": "free", "input": {"\\udfff": 1}}')
    assert_refused(response, "input")
    assert Run.objects.count() == 0


def test_a_lone_surrogate_reaching_a_service_directly_is_refused_with_the_path(api: APIClient) -> None:
    from runs.services import StartError

    with pytest.raises(StartError) as refused:
        start_run("free", {"list": ["ok", "\ud800"]})
    assert refused.value.errors[0][0] == "input.list[1]"


# --- deep nesting ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_run_input_is_a_400_not_a_recursion_error(api: APIClient, depth: int) -> None:
    response = post_raw(api, "/api/v1/runs/", f'{{"workflow": "free", "input": {nested(depth)}}}')
    assert response.status_code == 400 and set(response.json()) == JSON_ERROR_KEYS
    assert Run.objects.count() == 0


def test_deeply_nested_event_payload_is_a_400_naming_the_payload(api: APIClient) -> None:
    fields = assert_refused(post_raw(api, "/api/v1/events/", f'{{"name": "n", "payload": {nested(1000)}}}'),
                            "payload")
    assert any("deeper than" in message for message in fields.values())


def test_a_deeply_nested_definition_config_is_a_400_as_json_and_as_yaml(api: APIClient) -> None:
    step = f'{{"name": "a", "type": "task", "handler": "test.value", "config": {nested(1000)}}}'
    response = post_raw(api, "/api/v1/definitions/", f'{{"definition": {{"name": "deep", "steps": [{step}]}}}}')
    assert_refused(response, "definition.steps[0].config")
    text = "name: deep\nsteps: [{name: a, type: task, handler: test.value, config: " + "[" * 1000 + "]" * 1000 + "}]"
    response = api.post("/api/v1/definitions/", {"definition": text}, format="json")
    assert response.status_code == 400 and response.json()["type"] == "invalid_definition", response.json()
    assert not Workflow.objects.filter(name="deep").exists()


def test_the_commands_refuse_what_the_api_refuses(api: APIClient, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="input.topic"):
        call_command("start_run", "api-three", "--input", '{"topic": "\\u0000"}')
    with pytest.raises(CommandError, match="deeper than|nests too deeply"):
        call_command("send_event", "paid", "--payload", nested(1000))
    definition = tmp_path / "nul.yaml"
    definition.write_text('name: nul\ndescription: "\\0"\nsteps: [{name: a, type: task, handler: test.value}]\n')
    with pytest.raises(CommandError, match="description"):
        call_command("load_workflows", str(definition))
    assert Run.objects.count() == 0 and Event.objects.count() == 0


# --- numbers past the columns ----------------------------------------------------------------


@pytest.mark.parametrize("body, field", [
    ('{"workflow": "free", "max_tokens": 1e30}', "max_tokens"),
    ('{"workflow": "free", "max_tokens": 100000000000000000000000000000}', "max_tokens"),
    ('{"workflow": "free", "max_tokens": 9223372036854775808}', "max_tokens"),
    ('{"workflow": "free", "max_cost_usd": 1e30}', "max_cost_usd"),
    ('{"workflow": "free", "max_cost_usd": "100000000"}', "max_cost_usd"),
    ('{"workflow": "free", "version": 100000000000000000000}', "version"),
    ('{"workflow": "free", "version": 2147483648}', "version"),
    ('{"workflow": "free", "input": {"n": 100000000000000000000}}', "input.n"),
])
def test_numbers_past_the_database_columns_are_a_400_naming_the_field(api: APIClient, body: str,
                                                                      field: str) -> None:
    assert_refused(post_raw(api, "/api/v1/runs/", body), field)
    assert Run.objects.count() == 0


def test_the_largest_budget_that_fits_is_stored(api: APIClient) -> None:
    response = post_raw(api, "/api/v1/runs/",
                        '{"workflow": "free", "max_tokens": 9223372036854775807, "max_cost_usd": 99999999.999999}')
    assert response.status_code == 201, response.json()
    run = Run.objects.get()
    assert run.max_tokens == 2**63 - 1 and str(run.max_cost_usd) == "99999999.999999"


def test_a_definition_budget_past_the_columns_is_refused_by_the_schema(api: APIClient) -> None:
    document = {"name": "rich", "budget": {"max_tokens": 2**63, "max_cost_usd": 1e30},
                "steps": [{"name": "a", "type": "task", "handler": "test.value"}]}
    fields = assert_refused(api.post("/api/v1/definitions/", {"definition": document}, format="json"),
                            "definition.budget")
    assert "definition.budget.max_tokens" in fields  # past 64 bits: refused before the schema
    document["budget"]["max_tokens"] = 2**63 - 1
    fields = assert_refused(api.post("/api/v1/definitions/", {"definition": document}, format="json"),
                            "budget")  # the schema's errors name the path inside the document
    assert set(fields) == {"budget.max_cost_usd"}, fields


@pytest.mark.parametrize("url", ["/api/v1/definitions/free/versions/99999999999999999999/",
                                 "/api/v1/approvals/99999999999999999999/decide/"])
def test_ids_past_the_columns_are_not_found(api: APIClient, url: str) -> None:
    response = api.get(url) if "versions" in url else api.post(url, {"approve": True}, format="json")
    assert response.status_code == 404 and set(response.json()) == JSON_ERROR_KEYS


# --- OPTIONS, Django's own pages, the body limit ------------------------------------------------


def _api_urls() -> list[str]:
    """A concrete URL for every route under /api/ (path parameters filled in)."""
    fill = {"<uuid:run_id>": "00000000-0000-0000-0000-000000000000",
            "<uuid:other_id>": "00000000-0000-0000-0000-000000000001", "<str:name>": "free", "<int:version>": "1",
            "<int:approval_id>": "1", "<int:schedule_id>": "1",
            "(?P<run_id>[0-9a-f-]{36})": "00000000-0000-0000-0000-000000000000", "(?P<step_key>[^/]+)": "a"}
    urls: list[str] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            route = str(p.pattern).lstrip("^").rstrip("$")
            if isinstance(p, URLResolver):
                walk(p.url_patterns, prefix + route)
            elif isinstance(p, URLPattern):
                url = prefix + route
                for placeholder, value in fill.items():
                    url = url.replace(placeholder, value)
                urls.append("/" + url)

    walk(get_resolver().url_patterns, "")
    return [u for u in urls if u.startswith("/api/")]


def test_options_on_every_api_endpoint_answers_200_without_a_serializer(api: APIClient) -> None:
    urls = _api_urls()
    assert len(urls) >= 20, urls
    for url in urls:
        response = api.options(url)
        assert response.status_code == 200, (url, response.status_code, response.content[:300])
        if url.startswith("/api/v1/"):
            assert {"name", "renders", "parses"} <= set(response.json()), url


def test_an_unknown_api_url_a_bad_host_and_a_server_error_answer_in_the_json_error_body(api: APIClient) -> None:
    missing = api.get("/api/v1/nowhere/")
    assert missing.status_code == 404 and missing.json()["type"] == "not_found"
    bad_host = api.get("/api/v1/runs/", HTTP_HOST="evil.example")  # DisallowedHost: Django's own 400
    assert bad_host.status_code == 400 and set(bad_host.json()) == JSON_ERROR_KEYS
    crashed = server_error(RequestFactory().get("/api/v1/runs/"))
    assert crashed.status_code == 500 and set(json.loads(crashed.content)) == JSON_ERROR_KEYS
    assert b"<html" not in crashed.content.lower()
    assert b"<html" in server_error(RequestFactory().get("/admin/")).content.lower()  # HTML outside /api/


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=64 * 1024)
def test_a_body_over_the_limit_is_a_413_in_the_json_error_body(api: APIClient) -> None:
    big = json.dumps({"workflow": "free", "input": {"blob": "x" * (100 * 1024)}})
    response = post_raw(api, "/api/v1/runs/", big)
    assert response.status_code == 413, response.content[:300]
    assert response.json()["type"] == "request_too_large" and "65536" in response.json()["detail"]
    assert Run.objects.count() == 0
    small = json.dumps({"workflow": "free", "input": {"blob": "x" * 1024}})
    assert post_raw(api, "/api/v1/runs/", small).status_code == 201


def test_the_default_body_limit_refuses_ten_megabytes(api: APIClient) -> None:
    response = post_raw(api, "/api/v1/events/", json.dumps({"name": "n", "payload": "x" * (10 * 1024 * 1024)}))
    assert response.status_code == 413 and response.json()["type"] == "request_too_large"


# --- page_size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "0", "abc", "1e9", "null", "501", "", "1.5", "99999999999999999999"])
@pytest.mark.parametrize("url", ["/api/v1/runs/", "/api/v1/definitions/", "/api/v1/approvals/"])
def test_a_bad_page_size_is_a_400_naming_page_size(api: APIClient, url: str, value: str) -> None:
    assert_refused(api.get(f"{url}?page_size={value}"), "page_size")


def test_a_good_page_size_pages(api: APIClient) -> None:
    for topic in ("a", "b", "c"):
        start_run("api-three", {"topic": topic})
    first = api.get("/api/v1/runs/?page_size=2").json()
    assert len(first["results"]) == 2 and first["next"]
    assert len(api.get(first["next"]).json()["results"]) == 1


def test_a_forged_cursor_is_a_404(api: APIClient) -> None:
    import base64

    forged = base64.b64encode(b"p=not-a-date&o=0").decode()
    response = api.get(f"/api/v1/runs/?cursor={forged}")
    assert response.status_code == 404 and response.json()["type"] == "not_found"


def test_schema_generation_is_safe_for_concurrent_first_requests_in_one_process(db: Any) -> None:
    """The threaded-gunicorn case runs in test_api_schemathesis (a fresh worker process); here, threads."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections
    from django.test import Client

    from api.schema_view import SchemaView

    SchemaView._schema = None

    def fetch(_: int) -> tuple[int, int]:
        try:
            response = Client().get("/api/schema/?format=json")
            return response.status_code, len(response.content)
        finally:
            connections.close_all()  # this thread's own connection, or the test database outlives the test

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fetch, range(8)))
    assert {status for status, _ in results} == {200} and len({size for _, size in results}) == 1


# --- approvals ----------------------------------------------------------------------------------


def test_a_decision_with_a_nul_in_its_comment_or_content_is_refused_by_the_service_too(api: APIClient) -> None:
    from django.contrib.auth.models import User

    from approvals.models import Approval
    from approvals.services import DecisionError, decide

    load_workflow(approval_first("editable", allow_edit=True))
    start_run("editable", {"topic": "t"})
    approval = Approval.objects.get()
    boss = User.objects.create_superuser("boss", password="boss-pass-123")
    with pytest.raises(DecisionError, match="^comment: "):
        decide(approval.pk, user=boss, approve=True, comment="ok\x00")
    with pytest.raises(DecisionError, match=r"^content\.text: "):
        decide(approval.pk, user=boss, approve=True, content={"text": "\ud800"})
    approval.refresh_from_db()
    assert approval.status == "pending"


def test_pending_approvals_are_cursor_paginated_and_filtered_by_the_same_rules(api: APIClient) -> None:
    from django.contrib.auth.models import Group, Permission

    load_workflow(approval_first("open"))
    load_workflow(approval_first("for-ops", approvers={"groups": ["ops"]}))
    load_workflow(approval_first("for-carol", approvers={"users": ["carol"]}))
    load_workflow(approval_first("for-dave", approvers={"users": ["dave"], "groups": ["legal"]}))
    for name in ("open", "open", "for-ops", "for-carol", "for-dave"):
        start_run(name, {"topic": name})
    decide = Permission.objects.get(codename="decide_approval")
    carol = make_user("carol")
    carol.user_permissions.add(decide)
    carol.groups.add(Group.objects.create(name="ops"))
    nobody = make_user("nobody")
    client = client_for(carol)

    first = client.get("/api/v1/approvals/?page_size=2").json()
    assert set(first) == {"next", "previous", "results"} and len(first["results"]) == 2
    second = client.get(first["next"]).json()
    seen = [row["workflow_name"] for row in first["results"] + second["results"]]
    assert seen == ["open", "open", "for-ops", "for-carol"]  # oldest first, not dave's
    assert client_for(nobody).get("/api/v1/approvals/").json()["results"] == []


@pytest.mark.parametrize("value, expected", [
    ("2MB", "STEVORA_API_MAX_BODY_BYTES must be an integer, got '2MB'"),
    ("100", "STEVORA_API_MAX_BODY_BYTES must be at least 1024, got 100"),
])
def test_a_bad_body_limit_stops_start_up_naming_the_variable(value: str, expected: str) -> None:
    import subprocess
    import sys

    from tests.support.workers import ROOT, subprocess_env

    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            env={**subprocess_env(), "DJANGO_SETTINGS_MODULE": "stevora_project.settings",
                                 "STEVORA_API_MAX_BODY_BYTES": value}, timeout=120)
    assert result.returncode != 0 and expected in result.stderr, result.stderr[-2000:]

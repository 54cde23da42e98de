"""API keys, workspaces, permissions and rate limits."""

from __future__ import annotations

import io
import uuid

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from rest_framework.test import APIClient

from api.models import ApiKey, revoke
from approvals.models import Approval, ApprovalStatus
from runs.models import Run
from runs.services import load_workflow, start_run
from tests.api_support import (
    SERVICE_PERMS,
    approval_first,
    client_for,
    errors_by_field,
    make_user,
    other_workspace,
    three_steps,
)

RUN = "00000000-0000-0000-0000-000000000001"
PROTECTED = [
    ("get", "/api/v1/definitions/"), ("post", "/api/v1/definitions/"), ("get", "/api/v1/definitions/x/"),
    ("get", "/api/v1/definitions/x/versions/1/"), ("get", "/api/v1/runs/"), ("post", "/api/v1/runs/"),
    ("get", f"/api/v1/runs/{RUN}/"), ("post", f"/api/v1/runs/{RUN}/cancel/"),
    ("post", f"/api/v1/runs/{RUN}/pause/"), ("post", f"/api/v1/runs/{RUN}/resume/"),
    ("post", f"/api/v1/runs/{RUN}/retry/"), ("post", f"/api/v1/runs/{RUN}/fork/"),
    ("get", f"/api/v1/runs/{RUN}/history/"), ("get", f"/api/v1/runs/{RUN}/cost/"),
    ("get", f"/api/v1/runs/{RUN}/steps/a/"), ("post", "/api/v1/events/"), ("get", "/api/v1/approvals/"),
    ("post", "/api/v1/approvals/1/decide/"), ("get", "/api/v1/cost/"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("method,url", PROTECTED)
def test_every_endpoint_answers_401_without_a_key(method: str, url: str) -> None:
    response = getattr(APIClient(), method)(url, {}, format="json")
    assert response.status_code == 401, (url, response.content)
    assert response.json()["type"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/schema/", "/api/docs/", "/api/redoc/"])
def test_the_schema_and_docs_pages_are_public(url: str) -> None:
    response = APIClient().get(url)
    assert response.status_code == 200
    if url == "/api/schema/":
        assert b"/api/v1/runs/{run_id}/fork/" in response.content
    else:
        assert b"/static/drf_spectacular_sidecar/" in response.content  # no CDN needed


@pytest.mark.django_db
@pytest.mark.parametrize("header", ["Bearer stv_nope_nope", "Bearer not-a-key", "Bearer stv__x"])
def test_an_unknown_or_malformed_key_is_401(header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/runs/")
    assert response.status_code == 401
    assert response.json()["type"] == "authentication_failed"


@pytest.mark.django_db
def test_a_right_prefix_with_a_wrong_secret_is_401() -> None:
    client = client_for(make_user("svc"))
    prefix = client.key.prefix  # type: ignore[attr-defined]
    client.credentials(HTTP_AUTHORIZATION=f"Bearer stv_{prefix}_{'x' * 43}")
    assert client.get("/api/v1/runs/").status_code == 401


@pytest.mark.django_db
def test_a_revoked_key_is_401_and_the_x_api_key_header_works_too() -> None:
    client = client_for(make_user("svc"))
    assert client.get("/api/v1/runs/").status_code == 200
    other = APIClient()
    other.credentials(HTTP_X_API_KEY=client.plaintext)  # type: ignore[attr-defined]
    assert other.get("/api/v1/runs/").status_code == 200
    assert revoke(client.key) is True  # type: ignore[attr-defined]
    assert revoke(client.key) is False  # type: ignore[attr-defined]
    response = client.get("/api/v1/runs/")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


@pytest.mark.django_db
def test_an_inactive_users_key_is_401() -> None:
    user = make_user("svc")
    client = client_for(user)
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert client.get("/api/v1/runs/").status_code == 401


@pytest.mark.django_db
def test_another_workspaces_run_is_404_everywhere_and_never_listed() -> None:
    load_workflow(three_steps())
    theirs = start_run("api-three", {"topic": "x"}).run
    ours = client_for(make_user("svc", SERVICE_PERMS), workspace=other_workspace())
    base = f"/api/v1/runs/{theirs.pk}/"
    for url in [base, base + "history/", base + "cost/", base + "steps/a/"]:
        response = ours.get(url)
        assert response.status_code == 404, url
        assert response.json()["type"] == "not_found"
    for action in ["cancel", "pause", "resume", "retry"]:
        assert ours.post(base + f"{action}/", {}, format="json").status_code == 404
    assert ours.post(base + "fork/", {"from_step": "a"}, format="json").status_code == 404
    assert ours.get("/api/v1/runs/").json()["results"] == []
    assert ours.get("/api/v1/definitions/api-three/").status_code == 404
    assert Run.objects.get(pk=theirs.pk).status == "running"  # nothing was cancelled or paused


@pytest.mark.django_db
def test_another_workspaces_approval_is_404_and_not_listed(alice: User) -> None:
    load_workflow(approval_first())
    run = start_run("api-approval", {"topic": "x"}).run
    approval = Approval.objects.get(run_id=run.pk)
    client = client_for(alice, workspace=other_workspace())
    assert client.get("/api/v1/approvals/").json()["results"] == []
    response = client.post(f"/api/v1/approvals/{approval.pk}/decide/", {"approve": True}, format="json")
    assert response.status_code == 404
    assert Approval.objects.get(pk=approval.pk).status == ApprovalStatus.PENDING


@pytest.mark.django_db
def test_a_key_without_the_decide_permission_gets_403_and_nothing_changes(bob: User) -> None:
    load_workflow(approval_first())
    run = start_run("api-approval", {"topic": "x"}).run
    approval = Approval.objects.get(run_id=run.pk)
    client = client_for(bob)
    assert client.get("/api/v1/approvals/").json()["results"] == []
    response = client.post(f"/api/v1/approvals/{approval.pk}/decide/", {"approve": True, "comment": "ok"},
                           format="json")
    assert response.status_code == 403
    assert "decide" in response.json()["detail"]
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.PENDING and approval.decided_by_name == ""
    assert Run.objects.get(pk=run.pk).status == "waiting"


@pytest.mark.django_db
def test_writes_need_the_users_permissions_reads_do_not() -> None:
    load_workflow(three_steps())
    reader = client_for(make_user("reader"))
    assert reader.get("/api/v1/runs/").status_code == 200
    response = reader.post("/api/v1/runs/", {"workflow": "api-three", "input": {"topic": "x"}}, format="json")
    assert response.status_code == 403
    assert "runs.add_run" in response.json()["detail"]
    assert Run.objects.count() == 0
    assert reader.post("/api/v1/definitions/", {"definition": three_steps("new")}, format="json").status_code == 403


@pytest.mark.django_db
def test_a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_are_not_affected() -> None:
    user = make_user("svc")
    limited = client_for(user, rate="3/min")
    for _ in range(3):
        assert limited.get("/api/v1/runs/").status_code == 200
    response = limited.get("/api/v1/runs/")
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert response.json()["type"] == "throttled"
    assert client_for(user).get("/api/v1/runs/").status_code == 200


@pytest.mark.django_db
def test_a_stored_key_leaves_no_plaintext_secret_in_the_database() -> None:
    client = client_for(make_user("svc"))
    plaintext: str = client.plaintext  # type: ignore[attr-defined]
    secret = plaintext.split("_", 2)[2]
    assert client.get("/api/v1/runs/").status_code == 200  # used once (last_used_at written)
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')
            for row in cursor.fetchall():
                text = " ".join(str(v) for v in row)
                if secret in text or secret[:16] in text:
                    found.append(table)
    assert found == []
    key = ApiKey.objects.get()
    assert key.secret_hash != secret and len(key.secret_hash) == 64


@pytest.mark.django_db
def test_create_api_key_prints_the_key_once_and_it_works() -> None:
    make_user("svc")
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", "--user", "svc", "--name", "billing", stdout=out, stderr=err)
    plaintext = out.getvalue().strip()
    assert plaintext.startswith("stv_") and "store it now" in err.getvalue()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert client.get("/api/v1/runs/").status_code == 200


@pytest.mark.django_db
def test_create_api_key_names_a_bad_argument() -> None:
    from django.core.management.base import CommandError

    make_user("svc")
    with pytest.raises(CommandError, match="user: no user named 'ghost'"):
        call_command("create_api_key", "--user", "ghost")
    with pytest.raises(CommandError, match="rate:"):
        call_command("create_api_key", "--user", "svc", "--rate", "lots")
    with pytest.raises(CommandError, match="workspace:"):
        call_command("create_api_key", "--user", "svc", "--workspace", "nowhere")


@pytest.mark.django_db
def test_malformed_ids_are_404_not_500() -> None:
    client = client_for(make_user("svc", SERVICE_PERMS))
    assert client.get(f"/api/v1/runs/{uuid.uuid4()}/").status_code == 404
    assert client.post("/api/v1/approvals/999999/decide/", {"approve": True}, format="json").status_code == 404
    assert errors_by_field(client.get("/api/v1/runs/", {"status": "sleeping"})) == {
        "status": '"sleeping" is not a valid choice.'}




@pytest.mark.django_db
def test_an_unreachable_rate_limit_cache_lets_requests_through() -> None:
    from django.core.cache import caches
    from django.test import override_settings

    dead = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                        "LOCATION": "redis://127.0.0.1:1/0"}}
    client = client_for(make_user("svc"), rate="1/min")
    with override_settings(CACHES=dead):
        assert caches["default"].__class__.__name__ == "RedisCache"
        assert client.get("/api/v1/runs/").status_code == 200
        assert client.get("/api/v1/runs/").status_code == 200


@pytest.mark.parametrize("variable, value, expected", [
    ("STEVORA_API_RATE", "lots", "STEVORA_API_RATE must be a rate like 600/min"),
    ("CACHE_URL", "memcached://h", "CACHE_URL must be a redis:// URL"),
    ("STEVORA_WEBHOOK_MAX_ATTEMPTS", "0", "STEVORA_WEBHOOK_MAX_ATTEMPTS must be at least 1"),
])
def test_a_bad_api_setting_stops_start_up_naming_the_variable(variable: str, value: str, expected: str) -> None:
    import subprocess
    import sys

    from tests.support.workers import ROOT, subprocess_env

    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            env={**subprocess_env(), "DJANGO_SETTINGS_MODULE": "stevora_project.settings",
                                 variable: value}, timeout=60)
    assert result.returncode != 0 and expected in result.stderr, result.stderr[-500:]

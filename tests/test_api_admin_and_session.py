"""The admin side of the API: keys shown once, revoked from a list action; the delivery log; session auth."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from api.models import ApiKey
from runs.models import Workspace
from webhooks.delivery import enqueue
from webhooks.models import WebhookDelivery


@pytest.fixture
def admin_client(db: Any) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="root-pass-123"))
    return client


def test_the_admin_creates_a_key_shows_it_once_and_revokes_it(admin_client: Client) -> None:
    svc = User.objects.create_user("svc")
    response = admin_client.post("/admin/api/apikey/add/", {
        "name": "billing", "workspace": Workspace.default().pk, "user": svc.pk, "rate": ""})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    plaintext = response.context["plaintext"]  # rendered once on this page, never put in a message
    key = ApiKey.objects.get()
    assert plaintext.startswith(f"stv_{key.prefix}_") and plaintext.split("_", 2)[2] not in key.secret_hash
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert api.get("/api/v1/runs/").status_code == 200
    page = admin_client.get(f"/admin/api/apikey/{key.pk}/change/").content.decode()
    assert plaintext not in page and f"stv_{key.prefix}_" in page  # only the prefix is ever shown again
    admin_client.post("/admin/api/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk]})
    assert ApiKey.objects.get().revoked_at is not None
    assert api.get("/api/v1/runs/").status_code == 401


def test_the_admin_refuses_a_bad_rate(admin_client: Client) -> None:
    svc = User.objects.create_user("svc")
    response = admin_client.post("/admin/api/apikey/add/", {
        "name": "x", "workspace": Workspace.default().pk, "user": svc.pk, "rate": "fast"})
    assert response.status_code == 200 and "is not a rate like" in response.content.decode()
    assert ApiKey.objects.count() == 0


def test_the_delivery_log_lists_deliveries_and_queues_a_retry(admin_client: Client) -> None:
    delivery = enqueue(workspace_id=Workspace.default().pk, url="http://example.invalid/x", event="run.failed",
                       data={})
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="failed", attempts=8, error="HTTP 500")
    page = admin_client.get("/admin/webhooks/webhookdelivery/").content.decode()
    assert "example.invalid" in page and "HTTP 500" in page
    admin_client.post("/admin/webhooks/webhookdelivery/", {"action": "retry_deliveries",
                                                           "_selected_action": [str(delivery.pk)]})
    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.max_attempts == 16


def test_a_signed_in_browser_session_reads_the_default_workspace(admin_client: Client) -> None:
    assert admin_client.get("/api/v1/runs/").status_code == 200
    assert Client().get("/api/v1/runs/").status_code == 401
